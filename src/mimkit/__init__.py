"""mimkit: masked image modeling (MAE, SimMIM, SiT/GMML) for Vision Transformers."""

from mimkit import hub, pretrain
from mimkit.methods import create_method, list_methods
from mimkit.methods.mae import MAE
from mimkit.methods.simmim import SimMIM
from mimkit.methods.sit import SiT
from mimkit.models import create_encoder, list_encoders
from mimkit.models.swin import SwinTransformer
from mimkit.models.vit import VisionTransformer
from mimkit.weights import export_encoder_safetensors, load_weights

__version__ = "0.1.0"

hub.Pretrained.reader = pretrain.open_model  # from_pretrained's reader, from above (hub.py's docstring)

__all__ = [
    "MAE",
    "SiT",
    "SimMIM",
    "SwinTransformer",
    "VisionTransformer",
    "__version__",
    "create_encoder",
    "create_method",
    "export_encoder_safetensors",
    "list_encoders",
    "list_methods",
    "load_weights",
]
