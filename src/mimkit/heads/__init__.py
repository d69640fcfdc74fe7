"""Decoders and heads that turn encoder tokens into pixels or embeddings."""

from mimkit.heads.mae_decoder import MAEDecoder
from mimkit.heads.pixel_shuffle import PixelShuffleHead
from mimkit.heads.sit import ProjectionHead, SiTReconstructionHead

__all__ = ["MAEDecoder", "PixelShuffleHead", "ProjectionHead", "SiTReconstructionHead"]
