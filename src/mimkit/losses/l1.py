"""SimMIM's masked L1 loss on pixels (Xie et al., 2021)."""

from __future__ import annotations

import torch


def masked_l1(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Mean absolute error per masked pixel and channel: ``sum(|x - x_rec| * m) / (sum(m) + eps) / C``.

    ``m`` has one channel, so ``sum(m)`` counts masked pixel positions and dividing by ``C`` turns the sum
    over channels into a mean (the reference's normalisation). Computed in float32 under autocast.

    Args:
        pred, target: ``[N, C, H, W]``.
        mask: ``[N, 1, H, W]`` (or ``[N, H, W]``), 1 for the pixels that count, 0 for the others.
        eps: keeps an all-zero mask from dividing by zero.

    Returns:
        Scalar loss.
    """
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(
            f"pred and target must both be [N, C, H, W], got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    n, c, h, w = pred.shape
    if tuple(mask.shape) != (n, 1, h, w):
        raise ValueError(f"mask must be [N, 1, H, W] = {(n, 1, h, w)}, got {tuple(mask.shape)}")
    mask = mask.float()
    error = (pred.float() - target.float()).abs()  # [N, C, H, W]
    return (error * mask).sum() / (mask.sum() + eps) / c
