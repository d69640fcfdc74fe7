"""Pretraining methods: each an nn.Module that composes an encoder, a head and a loss."""

from mimkit.methods import mae as _mae  # noqa: F401  (registers "mae")
from mimkit.methods.mae import MAE
from mimkit.methods.registry import METHODS, create_method, list_methods

__all__ = ["MAE", "METHODS", "create_method", "list_methods"]
