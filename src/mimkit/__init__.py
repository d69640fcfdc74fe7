"""mimkit: masked image modeling (MAE, SimMIM, SiT/GMML) for Vision Transformers."""

from mimkit.methods import create_method, list_methods
from mimkit.models import create_encoder, list_encoders
from mimkit.weights import export_encoder_safetensors, load_weights

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "create_encoder",
    "create_method",
    "export_encoder_safetensors",
    "list_encoders",
    "list_methods",
    "load_weights",
]
