"""Encoders and the layers they are made of."""

from mimkit.models.registry import ENCODERS, create_encoder, encoder_class, list_encoders
from mimkit.models.swin import SwinTransformer  # registers the swin_* sizes
from mimkit.models.vit import VisionTransformer

__all__ = [
    "ENCODERS",
    "SwinTransformer",
    "VisionTransformer",
    "create_encoder",
    "encoder_class",
    "list_encoders",
]
