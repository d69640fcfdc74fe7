"""Images <-> sequences of flattened patches, in MAE's order (channels last within a patch)."""

from __future__ import annotations

import torch


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[N, C, H, W] -> [N, L, p*p*C]``, ``L = (H/p) * (W/p)`` in row-major order."""
    n, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {p}")
    x = images.reshape(n, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(
    patches: torch.Tensor, patch_size: int, grid_size: tuple[int, int], channels: int
) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[N, L, p*p*C] -> [N, C, gh*p, gw*p]``."""
    n, length, dim = patches.shape
    p = patch_size
    gh, gw = grid_size
    if length != gh * gw or dim != p * p * channels:
        raise ValueError(
            f"patches of shape {tuple(patches.shape)} do not fit a {gh}x{gw} grid "
            f"of {p}x{p}x{channels} patches"
        )
    x = patches.reshape(n, gh, gw, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, channels, gh * p, gw * p)


def pixel_mask(token_mask: torch.Tensor, patch_size: int, grid_size: tuple[int, int]) -> torch.Tensor:
    """``[N, L]`` mask on the patch grid -> ``[N, 1, gh*p, gw*p]``: each token's value over its patch."""
    grid = token_mask.reshape(-1, 1, *grid_size)
    return grid.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)
