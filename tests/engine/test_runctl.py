"""A clean stop on SIGTERM / SIGINT / SIGUSR1 that resumes exactly, and one writer per run directory."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

import mimkit
from mimkit.engine.runctl import LOCK_FILE, Preempted, RunLock, RunLockedError, StopSignals

sys.path.insert(0, os.path.dirname(__file__))
from test_trainer import make_trainer  # noqa: E402 - the trainer tests' tiny MAE run


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (40, 1, 8, 8), generator=g, dtype=torch.uint8)


def signal_at(trainer, call: int, sig=signal.SIGTERM):
    """Send ``sig`` to this process during the ``call``-th training_step (1-based), mid-step."""
    real, calls = trainer.model.training_step, {"n": 0}

    def step(batch):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), sig)
        return real(batch)

    trainer.model.training_step = step


@pytest.mark.parametrize("call, accum", [(1, 1), (8, 1), (15, 1), (3, 2), (6, 2)])
def test_a_signal_stops_after_the_step_and_the_resumed_run_is_bit_identical(tmp_path, images, call, accum):
    straight = make_trainer(tmp_path / "a", images, accum_steps=accum)
    straight.fit()
    cut = make_trainer(tmp_path / "b", images, accum_steps=accum)
    signal_at(cut, call)
    with pytest.raises(Preempted, match="stopped by SIGTERM after step") as err:
        cut.fit()
    # the optimizer step in progress was finished (with accumulation: the micro-steps it still needed)
    assert err.value.step == (call + accum - 1) // accum
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == err.value.step
    assert not (tmp_path / "b" / LOCK_FILE).exists()  # the lock went with the process's run
    torch.manual_seed(4321)
    rest = make_trainer(tmp_path / "b", images, accum_steps=accum)
    rest.fit()
    assert rest.step == straight.step
    for a, b in zip(straight.model.parameters(), rest.model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGUSR1])
def test_sigint_and_slurms_sigusr1_stop_the_same_way(tmp_path, images, sig):
    before = signal.getsignal(signal.SIGINT)  # Python's default_int_handler; SIG_IGN in a job started with &
    trainer = make_trainer(tmp_path, images)
    signal_at(trainer, 2, sig)
    with pytest.raises(Preempted, match=f"stopped by {signal.Signals(sig).name} after step 2"):
        trainer.fit()
    assert signal.getsignal(signal.SIGINT) is before  # handlers given back


def test_ctrl_c_twice_interrupts_at_once():
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "since": "x"}))
    with pytest.raises(RunLockedError, match=f"in use by pid 1 on host {socket.gethostname()}") as err:
        RunLock(tmp_path).acquire()
    assert "\n" not in str(err.value)
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": "elsewhere", "since": "x"}))
    with pytest.raises(RunLockedError, match="on host elsewhere"):  # another host: not ours to judge
        RunLock(tmp_path).acquire()


def test_a_stale_lock_is_taken_over_and_the_lock_is_reentrant(tmp_path, caplog):
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(gone.stdout)
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname()}))
    with caplog.at_level("INFO", logger="mimkit"), RunLock(tmp_path) as outer:
        assert outer.owned and json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        with RunLock(tmp_path) as inner:  # the trainer inside pretraining's lock
            assert not inner.owned
        assert (tmp_path / LOCK_FILE).exists()  # the inner scope did not release the outer's lock
    assert not (tmp_path / LOCK_FILE).exists()
    assert any(f"its process {dead_pid} is gone" in r.getMessage() for r in caplog.records)


HANGS_WHILE_SAVING = """
import sys, time
from mimkit.engine.checkpoint import save_atomic

class Hang:
    def __reduce__(self):  # the temporary file is open and half written
        print("writing", flush=True)
        time.sleep(60)

save_atomic({"model": Hang()}, sys.argv[1])
"""


def test_a_checkpoint_killed_mid_write_leaves_a_temporary_file_the_next_start_removes(tmp_path):
    src = os.path.dirname(os.path.dirname(mimkit.__file__))
    env = {**os.environ, "PYTHONPATH": src}
    writer = subprocess.Popen(
        [sys.executable, "-c", HANGS_WHILE_SAVING, str(tmp_path / "last.pt")], stdout=subprocess.PIPE, env=env
    )
    try:
        assert writer.stdout.readline().strip() == b"writing"
        writer.send_signal(signal.SIGKILL)  # kill -9: no finally block runs
    finally:
        writer.kill()
        writer.wait()
    stale = tmp_path / f".last.pt.tmp-{writer.pid}"
    assert stale.exists() and not (tmp_path / "last.pt").exists()
    live = tmp_path / f".features.pt.tmp-{os.getpid()}"  # a live process's is not touched
    live.write_bytes(b"")
    with RunLock(tmp_path):
        assert not stale.exists() and live.exists()
