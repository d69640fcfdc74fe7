"""Reconstruction losses."""

from mimkit.losses.reconstruction import masked_mse, normalize_patches

__all__ = ["masked_mse", "normalize_patches"]
