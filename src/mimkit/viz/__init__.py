"""Pictures: reconstruction grids and class-token attention maps."""

from mimkit.viz.attention import attention_maps, class_token_attention, save_attention_picture
from mimkit.viz.reconstruction import (
    DEFAULT_STRETCH,
    ReconstructionPictures,
    display_bands,
    draw_reconstructions,
    save_reconstruction_grid,
)

__all__ = [
    "DEFAULT_STRETCH",
    "ReconstructionPictures",
    "attention_maps",
    "class_token_attention",
    "display_bands",
    "draw_reconstructions",
    "save_attention_picture",
    "save_reconstruction_grid",
]
