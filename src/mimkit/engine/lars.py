"""LARS (You et al., 2017, "Large Batch Training of Convolutional Networks"), as MAE's linear probe uses it.

SGD with momentum where the update of each weight matrix is rescaled by a *trust ratio*:

    d = grad + weight_decay * w                      (matrices only: ndim > 1)
    d = d * trust_coefficient * ||w|| / ||d||        (matrices only; 1 when either norm is 0)
    mu = momentum * mu + d
    w = w - lr * mu

Biases and other 1-D parameters get neither weight decay nor the trust ratio (plain SGD with momentum).
Written by hand: torch has no LARS, and the rule above is six lines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling on top of SGD with momentum.

    Args:
        params: parameters or parameter groups (groups may carry ``weight_decay`` and ``lr_scale``; the
            trainer sets each group's ``lr``).
        lr: learning rate.
        weight_decay: L2 decay added to the gradient of matrices (``ndim > 1``) before the trust ratio.
        momentum: momentum of the update buffer.
        trust_coefficient: ``eta`` in ``eta * ||w|| / ||d||``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ):
        if lr < 0:
            raise ValueError(f"LARS lr must be >= 0, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"LARS weight_decay must be >= 0, got {weight_decay}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"LARS momentum must be in [0, 1), got {momentum}")
        if trust_coefficient <= 0:
            raise ValueError(f"LARS trust_coefficient must be > 0, got {trust_coefficient}")
        defaults = dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    d = d.add(p, alpha=group["weight_decay"])
                    w_norm = torch.linalg.vector_norm(p)
                    d_norm = torch.linalg.vector_norm(d)
                    ratio = torch.where(
                        (w_norm > 0) & (d_norm > 0),
                        group["trust_coefficient"] * w_norm / d_norm.clamp_min(torch.finfo(d.dtype).tiny),
                        torch.ones_like(w_norm),
                    )
                    d = d.mul(ratio)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(d)
                p.add_(mu, alpha=-group["lr"])
        return loss
