"""Pictures: reconstruction grids."""

from mimkit.viz.reconstruction import save_reconstruction_grid

__all__ = ["save_reconstruction_grid"]
