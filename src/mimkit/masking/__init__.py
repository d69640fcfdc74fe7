"""Mask generators: random tokens (MAE)."""

from mimkit.masking.random_tokens import TokenMask, random_token_mask

__all__ = ["TokenMask", "random_token_mask"]
