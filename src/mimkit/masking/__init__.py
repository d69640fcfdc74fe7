"""Mask generators: random tokens (MAE), block cells (SimMIM), pixel groups (GMML)."""

from mimkit.masking.block import BlockMaskGenerator, block_mask
from mimkit.masking.gmml import gmml_corrupt, gmml_mask
from mimkit.masking.random_tokens import TokenMask, random_token_mask

__all__ = ["BlockMaskGenerator", "TokenMask", "block_mask", "gmml_corrupt", "gmml_mask", "random_token_mask"]
