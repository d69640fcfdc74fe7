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


def patch_mean_mse(target: torch.Tensor) -> torch.Tensor:
    """The loss :func:`masked_mse` gives to predicting each target patch's own mean: the mean over patches
    of the (biased) variance of a patch's ``P`` values.

    A trivial baseline: it needs no context beyond one number per patch. With ``norm_pix_loss`` the
    targets have mean 0, so this is also the loss of predicting zeros: ``(P - 1) / P * var / (var + eps)``
    per patch (``var`` unbiased, as :func:`normalize_patches` divides by it), so just under 1 for patches
    with contrast and 0 for flat ones. Random masks do not depend on the pixels, so the mean over every
    patch is what the mean over the masked ones is on average.

    Args:
        target: ``[N, L, P]`` patches, as the loss sees them.

    Returns:
        Scalar (float32).
    """
    target = target.float()
    return (target - target.mean(dim=-1, keepdim=True)).pow(2).mean()
