"""Pictures: reconstruction grids and class-token attention maps."""

from mimkit.viz.attention import attention_maps, class_token_attention, save_attention_picture
from mimkit.viz.reconstruction import (
    DEFAULT_STRETCH,
    ReconstructionPictures,
    display_bands,
    draw_reconstructions,
    reconstruct,
    save_reconstruction_grid,
    stretch_range,
)

__all__ = [
    "DEFAULT_STRETCH",
    "ReconstructionPictures",
    "attention_maps",
    "class_token_attention",
    "display_bands",
    "draw_reconstructions",
    "reconstruct",
    "save_attention_picture",
    "save_reconstruction_grid",
    "stretch_range",
]
