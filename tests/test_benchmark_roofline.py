"""benchmarks/_roofline.py: what the floor records and replays, checked on hand-built products."""

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("_roofline", ROOT / "benchmarks/_roofline.py")
roofline = importlib.util.module_from_spec(_spec)
sys.modules["_roofline"] = roofline
_spec.loader.exec_module(roofline)


def test_records_each_product_with_its_layout_and_count():
    a, b = torch.randn(8, 4), torch.randn(6, 4)
    w, bias = torch.randn(5, 4), torch.randn(5)
    recorder = roofline.MatmulRecorder()
    with recorder:
        for _ in range(3):
            a @ b.t()  # mm with a transposed right operand
        torch.nn.functional.linear(a, w, bias)  # addmm
        torch.relu(a)  # not a product: not recorded
    calls = {(func.__name__, args[1][1:3]): n for (func, args, _), n in recorder.calls.items()}
    # mm's right operand is b.t(): shape (4, 6), strides (1, 4); addmm's weight is w.t(): (4, 5), (1, 4)
    assert calls == {("mm.default", ((4, 6), (1, 4))): 3, ("addmm.default", ((8, 4), (4, 1))): 1}


def test_fresh_operands_have_the_recorded_layout_even_when_broadcast():
    expanded = torch.randn(5).expand(8, 5)  # stride 0 along dim 0, as a broadcast bias
    meta = roofline._meta([expanded, torch.randn(3, 4).t(), 2])
    fresh = roofline._fresh(meta)
    assert isinstance(fresh, list) and fresh[2] == 2
    assert fresh[0].shape == (8, 5) and fresh[0].stride() == (0, 1)
    assert fresh[1].shape == (4, 3) and fresh[1].stride() == (1, 4)


def test_replay_is_each_distinct_products_best_time_times_its_count(monkeypatch):
    recorder = roofline.MatmulRecorder()
    x, y = torch.randn(16, 16), torch.randn(16, 8)
    with recorder:
        for _ in range(4):
            x @ x
        x @ y
    ticks = iter(range(10_000))  # a fake clock: every reading is 1 s after the previous one
    monkeypatch.setattr(roofline.time, "perf_counter", lambda: float(next(ticks)))
    # each timed call reads the clock twice (1 s apart): 1 s per call, times 4 for x @ x, 1 for x @ y
    assert roofline.replay_seconds(recorder.calls, torch.device("cpu"), reps=3) == 5.0


def _flops(calls) -> int:
    """Total FLOPs of recorded bmm calls: 2 * batch * m * k * n each, times its count."""
    total = 0
    for (func, args, _), n in calls.items():
        assert func is torch.ops.aten.bmm.default
        (_, (b, m, k), *_), (_, (_, _, cols), *_) = args
        total += 2 * b * m * k * cols * n
    return total


def test_fused_attention_counts_as_the_plain_paths_products_and_softmax():
    # q [2, 3, 5, 4], k and v [2, 3, 7, 4]: the CPU flash kernel (one op forward, one backward)
    q, k, v = (torch.randn(2, 3, n, 4, requires_grad=True) for n in (5, 7, 7))
    recorder = roofline.MatmulRecorder()
    with recorder:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        out.backward(torch.randn_like(out))
    # plain path: q k^T and p v forward, dv, dp, dq, dk backward: six products of 2 * 6 * 5 * 7 * 4 FLOPs
    assert sum(recorder.calls.values()) == 6
    assert _flops(recorder.calls) == 6 * 2 * (2 * 3) * 5 * 7 * 4
    softmax = {func.__name__: args[0][1] for (func, args, _) in recorder.essential}
    assert softmax == {"_softmax.default": (2, 3, 5, 7), "_softmax_backward_data.default": (2, 3, 5, 7)}


def test_essential_work_is_activations_norms_softmax_and_the_update_not_copies():
    x = torch.randn(4, 8, requires_grad=True)
    norm = torch.nn.LayerNorm(8)
    opt = torch.optim.AdamW(norm.parameters(), fused=True)
    recorder = roofline.MatmulRecorder()
    with recorder:
        y = torch.nn.functional.gelu(norm(x)).softmax(-1)
        (y.double() + 1).sum().backward()  # a cast and an add: not essential
        opt.step()
    names = sorted(func.__name__ for (func, _, _) in recorder.essential)
    assert names == [
        "_fused_adamw_.default",
        "_softmax.default",
        "_softmax_backward_data.default",
        "gelu.default",
        "gelu_backward.default",
        "native_layer_norm.default",
        "native_layer_norm_backward.default",
    ]
    assert not recorder.calls  # no matrix product in this region
    # and they replay (the optimizer's update on fresh tensors included)
    assert roofline.replay_seconds(recorder.essential, torch.device("cpu"), reps=1) > 0
