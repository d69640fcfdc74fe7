"""Pictures: reconstruction grids."""

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
    "display_bands",
    "draw_reconstructions",
    "reconstruct",
    "save_reconstruction_grid",
    "stretch_range",
]
