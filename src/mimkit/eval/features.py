"""One feature-extraction pass of a frozen encoder over a labeled dataset."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from mimkit.engine.host_memory import keep_freed_memory
from mimkit.engine.precision import auto_to_native, autocast


@torch.no_grad()
def extract_pooled(
    encoder: nn.Module,
    loader,
    transform: nn.Module,
    device: torch.device | str = "cpu",
    pools: Sequence[str] = ("token",),
    precision: str = "auto",
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Features of every image under several poolings, from one forward pass per batch.

    Args:
        encoder: has ``forward_features(x) -> [N, T, D]`` and ``pool(features, pool) -> [N, D]``.
        loader: yields ``(images uint8 [N, C, H, W], labels [N])`` in a fixed order.
        transform: uint8 batch -> normalised float batch (on ``device``).
        pools: any of ``"token"`` (class token) and ``"avg"`` (mean of patch tokens).
        precision: ``"auto"`` (bf16 where native, else fp32 on the CPU / fp16 on older GPUs), ``"bf16"``,
            ``"fp16"`` or ``"fp32"`` (:mod:`mimkit.engine.precision`).

    Returns:
        ``{pool: features [N, D] float32}`` (not normalised), ``labels`` [N] int64.
    """
    device = torch.device(device)
    precision = auto_to_native(precision, device)
    if device.type == "cpu":
        keep_freed_memory()  # each batch's activations reuse the previous batch's memory
    was_training = encoder.training
    encoder.eval().to(device)
    feats: dict[str, list[torch.Tensor]] = {pool: [] for pool in pools}
    labels = []
    for images, target in loader:
        images = transform(images.to(device, non_blocking=True))
        with autocast(precision, device.type):
            tokens = encoder.forward_features(images)
            for pool, out in feats.items():
                out.append(encoder.pool(tokens, pool).float().cpu())
        labels.append(target.cpu())
    encoder.train(was_training)
    return {pool: torch.cat(out) for pool, out in feats.items()}, torch.cat(labels).long()


def extract_features(
    encoder: nn.Module,
    loader,
    transform: nn.Module,
    device: torch.device | str = "cpu",
    pool: str = "token",
    precision: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features of every image: :func:`extract_pooled` with one pooling.

    Returns:
        ``features`` [N, D] float32 (not normalised), ``labels`` [N] int64.
    """
    feats, labels = extract_pooled(encoder, loader, transform, device, (pool,), precision)
    return feats[pool], labels
