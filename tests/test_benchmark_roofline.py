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
