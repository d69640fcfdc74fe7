"""Pictures: reconstruction grids."""

from mimkit.viz.reconstruction import DEFAULT_STRETCH, display_bands, save_reconstruction_grid

__all__ = ["DEFAULT_STRETCH", "display_bands", "save_reconstruction_grid"]
