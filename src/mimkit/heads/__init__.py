"""Decoders and heads that turn encoder tokens into pixels."""

from mimkit.heads.mae_decoder import MAEDecoder

__all__ = ["MAEDecoder"]
