"""Pretraining methods: each an nn.Module that composes an encoder, a head and a loss.

Importing a method's module registers it (``create_method("mae" | "simmim" | "sit" | "gmml", ...)``).
"""

from mimkit.methods.mae import MAE
from mimkit.methods.registry import METHODS, create_method, list_methods
from mimkit.methods.simmim import SimMIM
from mimkit.methods.sit import SiT

__all__ = ["MAE", "METHODS", "SiT", "SimMIM", "create_method", "list_methods"]
