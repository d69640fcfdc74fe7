"""How fast a training step could be on this machine: the matrix-product peak and the step's own floor.

Two limits a step's time is compared with (benchmarks/method_cost.py):

- **peak**: the rate of one large square matrix product (2048^3) in the step's precision, the best this
  machine's BLAS / oneDNN reaches. ``model FLOPs x images/s / peak`` is the model-FLOP utilisation (MFU).
  Thin layers (a 192-wide ViT-Tiny) never reach that rate, so MFU alone under-rates a small model.
- **floor**: the step's own matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm`` and convolutions,
  forward and backward, as the step dispatched them: same shapes, strides and dtypes), recorded once with
  a ``TorchDispatchMode`` and replayed alone on fresh tensors. No implementation of the same model and
  precision runs faster than the sum of its products; the rest of the step (norms, activations, softmax,
  the optimizer, copies) is what ``floor / step time`` measures. Fused attention kernels (SDPA's flash
  kernels) are not in the floor: they are softmax and products in one, and replayed on random inputs
  they do not run as in the step; where a step uses them, their time counts as the rest.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mimkit.engine.precision import matmul_gflops

aten = torch.ops.aten
# the ops whose time is matrix-product time: GEMMs and convolutions (patch embedding, pixel heads)
MATMUL_OPS = {
    aten.mm.default,
    aten.addmm.default,
    aten.bmm.default,
    aten.baddbmm.default,
    aten.convolution.default,
    aten.convolution_backward.default,
}


def _meta(value: Any) -> Any:
    """A tensor's (shape, strides, dtype, device) - enough to make a fresh one like it; else the value."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), tuple(value.stride()), value.dtype, str(value.device))
    if isinstance(value, list):  # hashable, and marked so that the replay passes a list again
        return ("list", *(_meta(v) for v in value))
    if isinstance(value, tuple):
        return tuple(_meta(v) for v in value)
    return value


def _fresh(meta: Any) -> Any:
    if isinstance(meta, tuple) and meta and meta[0] == "tensor":
        _, shape, stride, dtype, device = meta
        # storage for the strided view (broadcast dims have stride 0), filled, then viewed as recorded
        size = 1 + sum((n - 1) * s for n, s in zip(shape, stride, strict=True)) if all(shape) else 0
        base = torch.empty(size, dtype=dtype, device=device)
        base = base.normal_() if dtype.is_floating_point else base.zero_()
        return base.as_strided(shape, stride)
    if isinstance(meta, tuple) and meta and meta[0] == "list":
        return [_fresh(v) for v in meta[1:]]
    if isinstance(meta, tuple):
        return tuple(_fresh(v) for v in meta)
    return meta


class MatmulRecorder(TorchDispatchMode):
    """Records every matrix-product op a region dispatches: ``calls`` counts (op, arguments' metadata)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in MATMUL_OPS:
            self.calls[(func, _meta(args), _meta(tuple(sorted(kwargs.items()))))] += 1
        return func(*args, **kwargs)


def replay_seconds(calls: Counter, device: torch.device, reps: int = 5) -> float:
    """Seconds that the recorded products take when run alone: each distinct call timed ``reps`` times
    (best of them, after one warm-up), times how often the step made it."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    total = 0.0
    with torch.no_grad():
        for (func, args_meta, kwargs_meta), count in calls.items():
            args, kwargs = _fresh(args_meta), dict(_fresh(kwargs_meta))
            func(*args, **kwargs)
            sync()
            best = float("inf")
            for _ in range(reps):
                t0 = time.perf_counter()
                func(*args, **kwargs)
                sync()
                best = min(best, time.perf_counter() - t0)
            total += best * count
    return total


def matmul_peak_gflops(dtype: torch.dtype, device: torch.device, size: int = 2048, reps: int = 5) -> float:
    """The best rate of a ``size``^3 matrix product in ``dtype`` on ``device``, in GFLOP/s."""
    return matmul_gflops(dtype, size, device, reps)
