"""Mask generators: random tokens (MAE), block cells (SimMIM), pixel groups (GMML); masks a caller gives."""

from mimkit.masking.block import BlockMaskGenerator, block_mask
from mimkit.masking.explicit import check_token_mask, token_mask_from
from mimkit.masking.gmml import gmml_corrupt, gmml_mask
from mimkit.masking.random_tokens import TokenMask, random_token_mask

__all__ = [
    "BlockMaskGenerator",
    "TokenMask",
    "block_mask",
    "check_token_mask",
    "gmml_corrupt",
    "gmml_mask",
    "random_token_mask",
    "token_mask_from",
]
