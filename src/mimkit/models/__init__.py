"""Encoders and the layers they are made of."""

from mimkit.models.registry import ENCODERS, create_encoder, list_encoders
from mimkit.models.vit import VisionTransformer

__all__ = ["ENCODERS", "VisionTransformer", "create_encoder", "list_encoders"]
