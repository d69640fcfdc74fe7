"""Fixed 2-D sine-cosine position embeddings and their resampling.

The layout follows MAE (He et al., 2021) exactly, because published checkpoints were trained with it:
for a ``gh x gw`` grid, the first half of the channels encodes the column index and the second half the
row index; each half is ``[sin(pos * w), cos(pos * w)]`` with ``w_i = 1 / 10000 ** (i / (D / 4))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sine-cosine embedding of 1-D positions.

    Args:
        dim: output width, even.
        positions: any shape, flattened to ``[M]``.

    Returns:
        ``[M, dim]``: ``[sin(pos * w), cos(pos * w)]``, ``w_i = 10000 ** (-i / (dim / 2))``.
    """
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # [dim/2]
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]  # [M, dim/2]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid_size: tuple[int, int], cls_token: bool = False) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding of a ``gh x gw`` patch grid.

    Args:
        dim: embedding width, a multiple of 4.
        grid_size: ``(gh, gw)``: rows and columns of patches.
        cls_token: prepend an all-zero row for the class token.

    Returns:
        ``[gh * gw (+1), dim]`` float32, patches in row-major order.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding width must be a multiple of 4, got {dim}")
    gh, gw = grid_size
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")  # [gh, gw] each
    emb = torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)  # [gh*gw, dim]
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """Bicubically resample a ``[1, prefix + gh * gw, D]`` position embedding to another grid.

    Prefix (class) tokens are kept as they are. ``old_grid`` defaults to a square grid.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n, dim = grid.shape[1], grid.shape[2]
    if old_grid is None:
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(f"cannot infer the grid of a position embedding with {n} patch tokens")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
