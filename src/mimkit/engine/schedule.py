"""The learning-rate schedule: per-iteration linear warm-up, then half-cosine to ``min_lr``, as MAE. (The EMA
teachers' momentum schedule is their method's: :func:`mimkit.methods.sit.cosine_momentum`.)"""

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
