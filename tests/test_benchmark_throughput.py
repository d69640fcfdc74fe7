"""benchmarks/mae_throughput.py: its data path rows (the GPU measurement's loader), checked on the CPU."""

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # its own imports: _timing, _roofline
_spec = importlib.util.spec_from_file_location("mae_throughput", ROOT / "benchmarks/mae_throughput.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_data_path_gives_augmented_device_batches_across_epochs():
    shape = {"in_chans": 3, "img_size": 16}
    next_batch = bench.data_path(shape, {"images": 8, "batch": 4}, torch.device("cpu"))
    batches = [next_batch() for _ in range(5)]  # 2 batches per epoch: three epochs begun
    for x in batches:
        assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
        # uint8 values 0..255 in unit scale, normalised with mean 0.5 and std 0.29
        assert x.min() >= (0 - 0.5) / 0.29 - 1e-5 and x.max() <= (1 - 0.5) / 0.29 + 1e-5
    assert not torch.equal(batches[0], batches[2])  # a new epoch draws new crops


def test_data_path_lines_compare_fed_steps_with_fixed_batches_and_the_loader():
    rows = [
        {"side": "mimkit", "precision": "bf16", "img_per_s": 400.0},
        {"side": "mimkit" + bench.LOADER, "precision": "bf16", "img_per_s": 380.0},
        {"side": "mimkit compiled", "precision": "bf16", "img_per_s": 500.0},
        {"side": "mimkit compiled" + bench.LOADER, "precision": "bf16", "img_per_s": 450.0},
        {"side": bench.ALONE, "precision": "uint8", "img_per_s": 9000.0},
    ]
    lines = bench.data_path_lines(rows)
    assert lines[1] == "mimkit + loader bf16: 380.0 img/s, 0.950 of the same step on a fixed batch"
    assert lines[2] == "mimkit compiled + loader bf16: 450.0 img/s, 0.900 of the same step on a fixed batch"
    assert lines[3] == "data path alone: 9000 img/s, 20.0x the fastest fed step"
    assert bench.data_path_lines(rows[:1]) == []  # without --data-path: nothing
