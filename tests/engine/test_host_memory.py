"""Freed host memory kept for reuse on the CPU (mimkit.engine.host_memory): a process that frees and
allocates the same large tensors again page-faults them in again under glibc's defaults, not once kept."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mimkit.engine import host_memory

# 8 tensors of 12 MiB and 2 of 48 MiB (over glibc's largest mmap threshold, 32 MiB), written, freed,
# allocated again: the shape of a training step's activations
CYCLES = textwrap.dedent(
    """
    import resource, torch
    from mimkit.engine.host_memory import keep_freed_memory
    kept = keep_freed_memory()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    def cycle():
        tensors = [torch.empty(n * 2**20).fill_(1.0) for n in [3] * 8 + [12] * 2]
        del tensors
    cycle()
    before = faults()
    for _ in range(10):
        cycle()
    print(kept, (faults() - before) / 10)
    """
)


def _faults_per_cycle(keep: str) -> tuple[bool, float]:
    env = {**os.environ, "MIMKIT_KEEP_FREED_MEMORY": keep}
    done = subprocess.run(
        [sys.executable, "-c", CYCLES], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    kept, faults = done.stdout.split()
    return kept == "True", float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux")
def test_kept_memory_is_not_faulted_in_again():
    kept, faults_kept = _faults_per_cycle("1")
    default, faults_default = _faults_per_cycle("0")
    assert kept and not default  # MIMKIT_KEEP_FREED_MEMORY=0 leaves glibc's defaults
    pages = (8 * 12 + 2 * 48) * 2**20 / 4096  # 49,152 pages of 4 KiB written per cycle
    if faults_default < pages / 2:
        pytest.skip(
            f"this kernel faulted {faults_default:.0f} pages per cycle under glibc's defaults (huge pages?)"
        )
    assert faults_kept < 0.05 * pages, (faults_kept, faults_default)


def test_the_trainer_keeps_freed_memory_on_the_cpu_and_says_so(tmp_path, caplog, monkeypatch):
    from mimkit.engine.config import TrainConfig
    from mimkit.engine.dist import DistEnv
    from mimkit.engine.trainer import Trainer

    class Loader:
        def __iter__(self):
            return iter(())

        def __len__(self):
            return 1

    model = torch.nn.Linear(2, 2)
    model.training_step = lambda batch: {"loss": model(batch[0]).sum()}
    cfg = TrainConfig(precision="fp32", progress=False, tensorboard=False, epochs=1, warmup_epochs=0)
    monkeypatch.setattr(host_memory, "_state", None)  # as in a new process
    monkeypatch.setenv("MIMKIT_KEEP_FREED_MEMORY", "0")
    off = Trainer(model, Loader(), cfg, tmp_path / "off", env=DistEnv(device=torch.device("cpu")))
    assert off.keeps_freed_memory is False
    monkeypatch.setattr(host_memory, "_state", None)
    monkeypatch.delenv("MIMKIT_KEEP_FREED_MEMORY")
    on = Trainer(model, Loader(), cfg, tmp_path / "on", env=DistEnv(device=torch.device("cpu")))
    assert on.keeps_freed_memory is sys.platform.startswith("linux")
    with caplog.at_level("INFO", logger="mimkit"):
        on._announce()
        off._announce()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training on")]
    assert len(lines) == 2 and ("freed host memory kept" in lines[0]) == on.keeps_freed_memory
    assert "freed host memory kept" not in lines[1]
