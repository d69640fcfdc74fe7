"""Block masking on a grid of mask cells (SimMIM, Xie et al., 2021, "SimMIM: a Simple Framework for
Masked Image Modeling").

The image is cut into square mask cells of ``mask_patch_size`` pixels (reference: 32 px, a multiple of the
model's patch size); ``ceil(mask_ratio * cells)`` of them are masked per sample, uniformly at random, and
the cell mask is repeated up to the model's token grid, so a masked cell covers
``(mask_patch_size / patch_size) ** 2`` tokens. Sampling is batched on the device (one ``argsort`` over
``[N, cells]`` uniform noise), without a Python loop over images.
"""

from __future__ import annotations

import math

import torch

from mimkit import rng
from mimkit.masking.random_tokens import check_ratio
from mimkit.plain import pair


class BlockMaskGenerator:
    """Draws SimMIM block masks on a token grid.

    Args:
        grid_size: token grid ``(gh, gw)`` of the encoder's patch embedding (or one int for a square grid).
        patch_size: the model's patch size in pixels.
        mask_patch_size: side of a mask cell in pixels; a multiple of ``patch_size`` whose cell (in
            tokens) divides both sides of the grid.
        mask_ratio: fraction of the cells masked, in (0, 1); ``ceil(mask_ratio * cells)`` per sample.

    Raises:
        ValueError: ``mask_patch_size`` not a positive multiple of ``patch_size``, a grid the cells do not
            tile (the message lists the mask sizes that would), a ratio outside (0, 1).
    """

    def __init__(
        self,
        grid_size: int | tuple[int, int],
        patch_size: int,
        mask_patch_size: int,
        mask_ratio: float,
    ):
        gh, gw = pair(grid_size, "grid_size")
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
        if not isinstance(mask_patch_size, int) or mask_patch_size < 1 or mask_patch_size % patch_size:
            raise ValueError(
                f"mask_patch_size {mask_patch_size!r} must be a positive multiple of the model's patch size "
                f"{patch_size} (e.g. {patch_size}, {2 * patch_size}, {4 * patch_size})"
            )
        self.mask_ratio = check_ratio(mask_ratio)
        scale = mask_patch_size // patch_size  # tokens per cell side
        if gh % scale or gw % scale:
            valid = [s * patch_size for s in range(1, min(gh, gw) + 1) if gh % s == 0 and gw % s == 0]
            raise ValueError(
                f"mask_patch_size {mask_patch_size} does not tile the {gh * patch_size}x{gw * patch_size} "
                f"image ({gh}x{gw} patches of {patch_size} px); valid mask_patch_size values: {valid}"
            )
        self.grid_size = (gh, gw)
        self.patch_size = patch_size
        self.mask_patch_size = mask_patch_size
        self.scale = scale
        self.cell_grid = (gh // scale, gw // scale)
        cells = self.cell_grid[0] * self.cell_grid[1]
        # ceil of the exact product: 0.7 * 10 is 7.000000000000001 in floating point, not 8 cells.
        self.num_masked_cells = min(cells, math.ceil(self.mask_ratio * cells - 1e-9))

    @property
    def num_cells(self) -> int:
        return self.cell_grid[0] * self.cell_grid[1]

    def __call__(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw ``batch_size`` independent masks.

        Args:
            batch_size: ``N``.
            device: where the masks are drawn and returned.
            generator: optional random generator (on ``device``) for reproducible masks.

        Returns:
            ``[N, gh, gw]`` float mask on the token grid, 1 = masked; flatten to ``[N, L]`` for the encoder.
        """
        ch, cw = self.cell_grid
        noise = rng.rand(batch_size, ch * cw, device=device, generator=generator)  # [N, cells], per sample
        masked_ids = torch.argsort(noise, dim=1)[:, : self.num_masked_cells]
        cells = torch.zeros(batch_size, ch * cw, device=noise.device)
        cells.scatter_(1, masked_ids, 1.0)
        cells = cells.view(batch_size, ch, cw)
        return cells.repeat_interleave(self.scale, dim=1).repeat_interleave(self.scale, dim=2)  # [N, gh, gw]

    def __repr__(self) -> str:
        return (
            f"BlockMaskGenerator(grid_size={self.grid_size}, patch_size={self.patch_size}, "
            f"mask_patch_size={self.mask_patch_size}, mask_ratio={self.mask_ratio})"
        )


def block_mask(
    batch_size: int,
    grid_size: int | tuple[int, int],
    patch_size: int,
    mask_patch_size: int,
    mask_ratio: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One-call form of :class:`BlockMaskGenerator`: ``[N, gh, gw]`` float mask, 1 = masked."""
    return BlockMaskGenerator(grid_size, patch_size, mask_patch_size, mask_ratio)(
        batch_size, device, generator
    )
