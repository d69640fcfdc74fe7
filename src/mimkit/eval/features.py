"""The one batched pass of the evaluation, in a settled precision: a frozen encoder's pooled features, or
anything else a module computes batch by batch (a classifier's predictions)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mimkit.engine.host_memory import keep_freed_memory
from mimkit.engine.precision import DTYPES, autocast


@dataclass(frozen=True)
class FeaturePass:
    """How features are computed, settled once by the caller: nothing in it is ``"auto"``.

    Attributes:
        device: where the encoder runs (under torchrun: this process's device, the group already started).
        precision: ``"bf16"``, ``"fp16"`` or ``"fp32"`` (resolve ``"auto"`` with
            :func:`mimkit.engine.precision.resolve_precision` first).
        batch_size: images per forward pass (per process).
        cache_dir: where features are cached (:mod:`mimkit.eval.cache`); None: never.
        rank, world_size: this process's share under torchrun (every ``world_size``-th image, gathered).
    """

    device: torch.device
    precision: str
    batch_size: int = 512
    cache_dir: Path | None = None
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.precision not in DTYPES:
            raise ValueError(f"a feature pass runs in one of {', '.join(DTYPES)}, got {self.precision!r}")


@torch.no_grad()
def forward_batches(
    module: nn.Module,
    batches: Iterable[tuple[torch.Tensor, Any]],
    transform: nn.Module,
    run: FeaturePass,
    forward: Callable[[torch.Tensor], Any],
) -> Iterator[tuple[Any, Any]]:
    """``forward(images)`` of each batch, ``module`` in eval mode on ``run.device``, in ``run.precision``.

    The one batched pass of the evaluation: the frozen features (:func:`pooled_batches`) and a classifier's
    predictions (:mod:`mimkit.eval.predict`) both go through it.

    Args:
        module: what ``forward`` runs (set to eval mode for the pass, then back).
        batches: ``(images uint8 [N, C, H, W], anything)``; the second item is passed through.
        transform: uint8 batch -> normalised float batch (on ``run.device``).
        run: the device and precision (batch size and cache are the caller's).
        forward: normalised images ``[N, C, H, W]`` -> what to yield (moved off the device by it).

    Yields:
        ``(forward's result, the batch's second item)``.
    """
    if run.device.type == "cpu":
        keep_freed_memory()  # each batch's activations reuse the previous batch's memory
    was_training = module.training
    module.eval().to(run.device)
    try:
        for images, extra in batches:
            images = transform(images.to(run.device, non_blocking=True))
            with autocast(run.precision, run.device.type):
                out = forward(images)
            yield out, extra  # outside autocast: the caller's code runs between batches
    finally:
        module.train(was_training)


def pooled_batches(
    encoder: nn.Module,
    batches: Iterable[tuple[torch.Tensor, Any]],
    transform: nn.Module,
    run: FeaturePass,
    pools: Sequence[str] = ("token",),
) -> Iterator[tuple[dict[str, torch.Tensor], Any]]:
    """Pooled features of each batch, one forward pass per batch for every pooling.

    Args:
        encoder: has ``forward_features(x) -> [N, T, D]`` and ``pool(tokens, pool) -> [N, D]``.
        batches: ``(images uint8 [N, C, H, W], anything)``; the second item is passed through.
        transform: uint8 batch -> normalised float batch (on ``run.device``).
        run: the device and precision (batch size and cache are the caller's).
        pools: any of ``"token"`` (class token) and ``"avg"`` (mean of patch tokens).

    Yields:
        ``({pool: features [N, D] float32 on the CPU, not normalised}, the batch's second item)``.
    """

    def pooled(images: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = encoder.forward_features(images)
        return {pool: encoder.pool(tokens, pool).float().cpu() for pool in pools}

    yield from forward_batches(encoder, batches, transform, run, pooled)
