"""One feature-extraction pass of a frozen encoder over a labeled dataset."""

from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    loader,
    transform: nn.Module,
    device: torch.device | str = "cpu",
    pool: str = "token",
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features of every image.

    Args:
        encoder: has ``forward_features(x) -> [N, T, D]`` and ``pool(features, pool) -> [N, D]``.
        loader: yields ``(images uint8 [N, C, H, W], labels [N])`` in a fixed order.
        transform: uint8 batch -> normalised float batch (on ``device``).
        pool: ``"token"`` (class token) or ``"avg"`` (mean of patch tokens).
        precision: ``"bf16"`` autocast or ``"fp32"``.

    Returns:
        ``features`` [N, D] float32 (not normalised), ``labels`` [N] int64.
    """
    device = torch.device(device)
    was_training = encoder.training
    encoder.eval().to(device)
    feats, labels = [], []
    for images, target in loader:
        images = transform(images.to(device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = encoder.pool(encoder.forward_features(images), pool)
        feats.append(out.float().cpu())
        labels.append(target.cpu())
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels).long()
