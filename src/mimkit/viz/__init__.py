"""Pictures: reconstruction grids."""

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
    "display_bands",
    "draw_reconstructions",
    "save_reconstruction_grid",
]
