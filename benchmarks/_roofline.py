"""How fast a training step could be on this machine: the matrix-product peak and the step's own floor.

Two limits a step's time is compared with (benchmarks/method_cost.py):

- **peak**: the rate of one large square matrix product (2048^3) in the step's precision, the best this
  machine's BLAS / oneDNN reaches. ``model FLOPs x images/s / peak`` is the model-FLOP utilisation (MFU).
  Thin layers (a 192-wide ViT-Tiny) never reach that rate, so MFU alone under-rates a small model.
- **floor**: the step's own matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm`` and convolutions,
  forward and backward, as the step dispatched them: same shapes, strides and dtypes), recorded once with
  a ``TorchDispatchMode`` and replayed alone on fresh tensors. No implementation of the same model and
  precision runs faster than the sum of its products; the rest of the step (norms, activations, softmax,
  the optimizer, copies) is what ``floor / step time`` measures. A fused attention kernel (SDPA) is
  softmax and products in one: it is recorded as the products the plain path would run for it
  (``q k^T`` and ``p v`` forward, four ``bmm`` backward, in its operands' dtype), and its softmax goes
  to the essential work below.
- **essential work**: the step's element-wise work that no fusion removes, because its arithmetic is the
  model's own: activations (GELU), softmax, LayerNorm (forward and backward) and the optimizer's update,
  recorded and replayed alone the same way. Casts, layout copies, residual adds and bias sums are not in
  it: a fused implementation folds them into the products or into these ops. ``floor / (floor +
  essential)`` is the **ceiling** of the floor share: what the step would reach if it ran nothing but
  its products and this work, each at the speed it runs alone.
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


# the ops whose arithmetic is the model's own, not removable by fusing: activations, softmax, norms, update
ESSENTIAL_OPS = {
    aten.gelu.default,
    aten.gelu_backward.default,
    aten._softmax.default,
    aten._softmax_backward_data.default,
    aten.native_layer_norm.default,
    aten.native_layer_norm_backward.default,
    aten._fused_adamw_.default,
}
if hasattr(aten, "_safe_softmax"):  # SDPA's math path (torch >= 2.5)
    ESSENTIAL_OPS.add(aten._safe_softmax.default)
# fused attention (SDPA), recorded as the plain path's work: forward ops take (q, k, v, ...), backward ops
# (grad_out, q, k, v, ...)
_FUSED_FORWARD = {
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
}
_FUSED_BACKWARD = {name + "_backward" for name in _FUSED_FORWARD}


def _tensor_meta(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> tuple:
    """The metadata of a fresh contiguous tensor (what :func:`_fresh` builds)."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.insert(0, step)
        step *= n
    return ("tensor", tuple(shape), tuple(strides), dtype, str(device))


def plain_attention_work(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backward: bool) -> tuple:
    """What the plain path (``softmax(q k^T) v``) runs for one fused attention call with operands
    ``q`` [..., L, d], ``k`` [..., S, d], ``v`` [..., S, e]: ``(products, softmax)``, lists of
    ``(op, args metadata)``. Forward: ``q k^T`` and ``p v`` as ``bmm`` over the flattened batch and heads,
    and one softmax of the [..., L, S] scores. Backward: ``dv = p^T do``, ``dp = do v^T``, ``dq = ds k``,
    ``dk = ds^T q``, and the softmax's backward. Products in the operands' dtype, softmax in fp32 (as under
    autocast)."""
    *lead, length, d = q.shape
    s, e = k.shape[-2], v.shape[-1]
    b = 1
    for n in lead:
        b *= n
    dtype, device = q.dtype, q.device

    def bmm(m: int, kk: int, n: int) -> tuple:
        return (
            aten.bmm.default,
            (_tensor_meta((b, m, kk), dtype, device), _tensor_meta((b, kk, n), dtype, device)),
        )

    scores = _tensor_meta((*lead, length, s), torch.float32, device)
    if not backward:
        products = [bmm(length, d, s), bmm(length, s, e)]
        softmax = [(aten._softmax.default, (scores, -1, False))]
    else:
        products = [bmm(s, length, e), bmm(length, e, s), bmm(length, s, d), bmm(s, length, d)]
        softmax = [(aten._softmax_backward_data.default, (scores, scores, -1, torch.float32))]
    return products, softmax


class MatmulRecorder(TorchDispatchMode):
    """Records what a region dispatches: ``calls`` counts its matrix-product ops and ``essential`` its
    essential element-wise ops, each as (op, arguments' metadata, keyword arguments' metadata); a fused
    attention call counts as the plain path's products and softmax (:func:`plain_attention_work`)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter = Counter()
        self.essential: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in MATMUL_OPS:
            self.calls[(func, _meta(args), _meta(tuple(sorted(kwargs.items()))))] += 1
        elif func in ESSENTIAL_OPS:
            self.essential[(func, _meta(args), _meta(tuple(sorted(kwargs.items()))))] += 1
        elif (name := func.__name__.split(".")[0]) in _FUSED_FORWARD | _FUSED_BACKWARD:
            backward = name in _FUSED_BACKWARD
            q, k, v = args[1:4] if backward else args[:3]
            products, softmax = plain_attention_work(q, k, v, backward)
            for op, meta in products:
                self.calls[(op, meta, ())] += 1
            for op, meta in softmax:
                self.essential[(op, meta, ())] += 1
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
