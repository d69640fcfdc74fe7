"""Optimizer construction: AdamW with no weight decay on biases, norms and embeddings."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "relative_position_bias_table")


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_scale: Callable[[str], float] | None = None,
) -> list[dict]:
    """Split trainable parameters into decay / no-decay groups (and per-layer lr scales).

    No decay for 1-D parameters (biases, norm weights) and embeddings/tokens. ``layer_scale(name)``
    gives an lr multiplier per parameter (layer-wise lr decay in fine-tuning); it is stored as
    ``lr_scale`` in each group and applied by the trainer's schedule.
    """
    groups: dict[tuple[bool, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(NO_DECAY_NAMES)
        scale = layer_scale(name) if layer_scale else 1.0
        key = (no_decay, scale)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale}
        groups[key]["params"].append(param)
    return list(groups.values())


def build_adamw(groups: list[dict], lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    """AdamW, using the fused kernel where this torch has one for the parameters' device."""
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
