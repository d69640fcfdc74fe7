"""Schedules: the learning rate (per-iteration linear warm-up, then half-cosine to ``min_lr``, as MAE) and
the EMA teachers' momentum."""

from __future__ import annotations

import math


def cosine_lr(
    step: float, base_lr: float, total_steps: int, warmup_steps: float, min_lr: float = 0.0
) -> float:
    """lr at optimizer step ``step`` (0-based): ``base * step / warmup`` during warm-up, then
    ``min + (base - min) * (1 + cos(pi * t)) / 2`` with ``t`` going 0 -> 1 over the remaining steps."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    if total_steps <= warmup_steps:
        return base_lr
    t = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def cosine_momentum(step: int, total_steps: int, start: float = 0.996, end: float = 1.0) -> float:
    """EMA momentum rising from ``start`` (step 0) to ``end`` (step ``total_steps``) on a half-cosine
    (BYOL / DINO / SiT teachers): ``end - (end - start) * (cos(pi * step / total_steps) + 1) / 2``; steps
    outside ``[0, total_steps]`` are clamped."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps!r}")
    t = min(max(step, 0), total_steps) / total_steps
    return end - (end - start) * (math.cos(math.pi * t) + 1) / 2
