"""Pixel reconstruction losses."""

from __future__ import annotations

import torch


def normalize_patches(
    target: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's ``norm_pix`` target: each patch ``(t - mean) / sqrt(var + eps)``, unbiased variance.

    Args:
        target: ``[N, L, P]`` patches.

    Returns:
        ``(normalized, mean, std)`` with ``mean``/``std`` ``[N, L, 1]``, so ``normalized * std + mean``
        gives the patches back (used to show reconstructions in pixel space).
    """
    mean = target.mean(dim=-1, keepdim=True)
    std = (target.var(dim=-1, keepdim=True, unbiased=True) + eps).sqrt()
    return (target - mean) / std, mean, std


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-patch MSE (mean over ``P``), averaged over the patches where ``mask == 1``.

    Args:
        pred, target: ``[N, L, P]``.
        mask: ``[N, L]``, 1 for the patches that count.
    """
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # [N, L]
    return (per_patch * mask).sum() / mask.sum()
