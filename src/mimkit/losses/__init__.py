"""Reconstruction and contrastive losses."""

from mimkit.losses.contrastive import nt_xent
from mimkit.losses.l1 import masked_l1
from mimkit.losses.reconstruction import masked_mse, normalize_patches

__all__ = ["masked_l1", "masked_mse", "normalize_patches", "nt_xent"]
