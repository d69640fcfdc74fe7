"""Control of a run's life: one writer per run directory, and a clean stop on a signal.

- :class:`RunLock`: ``<run_dir>/.lock`` holds the pid and host of the process writing the run. A second run
  on the same directory fails with one line naming the holder; a lock left by a process that is gone
  (same host, pid not alive) is taken over, with a log line, as are temporary checkpoints whose writer is gone
  (``.last.pt.tmp-PID`` after a kill -9). A directory the lock made is removed with it if still empty.
- :class:`StopSignals`: SIGTERM, SIGINT and SIGUSR1 (SLURM's warning before preemption) set a flag instead
  of killing the process; the trainer finishes the optimizer step it is in, writes its checkpoint and
  raises :class:`Preempted`, and the command line exits with :data:`EXIT_PREEMPTED` so that a job script can
  requeue the same command, which resumes exactly. A second SIGINT (Ctrl-C twice) interrupts at once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from mimkit.engine.checkpoint import TEMP

log = logging.getLogger("mimkit")

LOCK_FILE = ".lock"
EXIT_PREEMPTED = 75  # sysexits' EX_TEMPFAIL: "a temporary failure; try again"
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


class RunLockedError(ValueError):
    """Another live process is writing this run directory."""


class Preempted(RuntimeError):
    """Training stopped on a signal after writing its checkpoint; the same command resumes it."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path | None):
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        super().__init__(
            f"stopped by {signal_name} after step {step}; checkpoint {checkpoint} written; "
            "run the same command to resume"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def remove_stale_temps(folder: Path) -> None:
    """Delete what :func:`~mimkit.engine.checkpoint.save_atomic` left in ``folder`` when killed mid-write
    (``.NAME.tmp-PID`` whose PID is not alive here)."""
    for path in folder.glob(f".*{TEMP}*"):
        if (pid := path.name.rpartition(TEMP)[2]).isdigit() and not _pid_alive(int(pid)):
            path.unlink(missing_ok=True)
            log.info("removed %s: the process writing it is gone", path)


class RunLock:
    """Exclusive use of a run directory by this process (re-entrant within it).

    Args:
        run_dir: the directory; created if missing.
        enabled: False on the non-writing ranks of a distributed run (they take no lock).
    """

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True):
        self.path = Path(run_dir) / LOCK_FILE
        self.enabled = enabled
        self.owned = False
        self.created = False  # acquire made the directory

    def __enter__(self) -> RunLock:
        if self.enabled:
            self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        """Take the lock, take over a stale one, or raise :class:`RunLockedError` naming the holder."""
        self.created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                    return  # this process holds it already (an outer scope releases it)
                if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int):
                    if not _pid_alive(holder["pid"]):
                        log.info("taking over %s: its process %d is gone", self.path, holder["pid"])
                        self.path.unlink(missing_ok=True)
                        continue
                who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
                raise RunLockedError(
                    f"run directory {str(self.path.parent)!r} is in use by {who} (since "
                    f"{holder.get('since', '?')}); wait for it, use another output_dir, or delete "
                    f"{self.path} if that process is gone"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.owned = True
            remove_stale_temps(self.path.parent)  # no other writer now: a temporary file's writer is gone
            return
        raise RunLockedError(f"could not take {self.path}: another process took it at the same moment")

    def release(self) -> None:
        if self.owned:
            self.path.unlink(missing_ok=True)
            self.owned = False
            if self.created and not any(self.path.parent.iterdir()):  # made for a run that wrote nothing
                self.path.parent.rmdir()


class StopSignals:
    """While active, the stop signals set :attr:`received` (the first one's name) instead of killing.

    Installed only in the main thread (Python's rule for signal handlers); elsewhere it is inert. The
    previous handlers come back on exit.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now
        if self.received is None:
            log.warning("%s received: finishing this step, writing the checkpoint, then stopping", name)
        self.received = self.received or name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
