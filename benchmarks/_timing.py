"""Timing helpers shared by the benchmarks: timed steps in worker processes, run in interleaved rounds.

Each configuration to time (a side, a method, a precision ...) lives in its own worker process, so its
allocator state and peak RSS are its own. The parent asks the workers for a few timed steps one at a time,
in a rotating order, round after round, so that load from other processes on a shared machine hits every
configuration alike. Also: how busy the whole machine is (``/proc/stat``), waiting for it to be quiet, and
the host allocator setting every worker gets.

Worker side::

    def worker(key, args, conn):
        ...build the model; on failure: conn.send({"error": "..."}); return
        conn.send({...anything the parent should know...})
        serve_steps(conn, step)            # answers the parent's requests until it says stop

Parent side: ``run_rounds(keys, worker, args, rounds=5, steps=3, warmup=3)``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any


def set_allocator(glibc_defaults: bool) -> str:
    """In a worker, before anything is built: the host allocator setting every side of a comparison gets.

    By default glibc keeps freed memory for reuse (:mod:`mimkit.engine.host_memory`, which mimkit's trainer
    and feature passes apply by themselves on the CPU) for mimkit and the peer alike: it is a setting of
    the process that the peer's users can make too (mallopt, or preloading jemalloc / tcmalloc).
    ``glibc_defaults`` leaves glibc as it is on every side (``MIMKIT_KEEP_FREED_MEMORY=0`` turns mimkit's
    own setting off). Returns the setting in words, for the report.
    """
    if glibc_defaults:
        os.environ["MIMKIT_KEEP_FREED_MEMORY"] = "0"
        return "glibc's allocator defaults"
    from mimkit.engine.host_memory import keep_freed_memory

    return "freed memory kept for reuse" if keep_freed_memory() else "glibc's allocator defaults (not glibc)"


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def cpu_seconds() -> float:
    """User + system CPU time of this process, in seconds."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def machine_busy() -> tuple[float, float] | None:
    """(busy, total) CPU time of the whole machine from /proc/stat, in clock ticks; None if unreadable."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:9]]  # user .. steal (guest is in user)
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def wait_until_quiet(max_s: float, threshold: float = 0.1) -> bool:
    """Wait (up to ``max_s`` seconds) until the machine is less than ``threshold`` busy over 2 s."""
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        a = machine_busy()
        time.sleep(2.0)
        b = machine_busy()
        if a is None or b is None or (b[0] - a[0]) / max(b[1] - a[1], 1.0) < threshold:
            return True
    return False


def serve_steps(
    conn,
    step: Callable[[], None],
    sync: Callable[[], None] | None = None,
    peak_device_mb: Callable[[], float] | None = None,
    calls: dict[str, Callable[[], Any]] | None = None,
) -> None:
    """Worker side: answer ``{"warmup": W, "steps": S}`` requests until the parent sends ``None``.

    ``{"call": name}`` runs ``calls[name]()`` and sends back ``{name: result}``: a measurement that must
    not overlap the other workers' (the parent asks for it while they wait).

    Each request runs ``W`` untimed then ``S`` timed calls of ``step`` and sends back ``times`` (seconds
    per step), ``cpu_s`` (this process's CPU time over the request) and ``peak_rss_mb``. ``sync`` (e.g.
    ``torch.cuda.synchronize``) is called after each step so that the time covers the device's work;
    ``peak_device_mb`` (e.g. from ``torch.cuda.max_memory_allocated``) adds ``peak_device_mb``.
    """
    sync = sync or (lambda: None)
    while (msg := conn.recv()) is not None:
        if "call" in msg:
            conn.send({msg["call"]: (calls or {})[msg["call"]]()})
            continue
        cpu0 = cpu_seconds()
        for _ in range(msg["warmup"]):
            step()
        sync()
        times = []
        for _ in range(msg["steps"]):
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        reply = {"times": times, "cpu_s": cpu_seconds() - cpu0, "peak_rss_mb": peak_rss_mb()}
        if peak_device_mb is not None:
            reply["peak_device_mb"] = peak_device_mb()
        conn.send(reply)


def run_rounds(
    keys: Sequence[Hashable],
    worker: Callable[..., None],
    worker_args: Any,
    rounds: int,
    steps: int,
    warmup: int,
    quiet_wait: float = 0.0,
    skip_failed: bool = False,
    progress: Callable[[int, Hashable, list[float]], None] | None = None,
    calls: Sequence[str] = (),
    round_calls: Sequence[str] = (),
) -> dict[str, Any]:
    """Start ``worker(key, worker_args, conn)`` for every key (spawned processes), time them in rounds.

    Round ``r`` visits the keys starting from ``r % len(keys)``; each visit runs ``warmup`` untimed
    steps in the first round (1 in later ones, since the other workers ran in between) and ``steps``
    timed steps.

    Args:
        keys: one per worker; picklable, passed to ``worker``.
        worker: a module-level function (it is pickled by name) that sends one info dict (or
            ``{"error": message}``) then calls :func:`serve_steps`.
        worker_args: picklable, passed to every worker.
        quiet_wait: before each round, wait up to this many seconds for the machine to be idle.
        skip_failed: drop the keys whose worker reported an error (default: raise ``RuntimeError``).
        progress: called after each visit with ``(round index, key, times)``.
        calls: after the rounds, each worker in turn is asked for each of these (see :func:`serve_steps`);
            the answers are in its results under the same names.
        round_calls: like ``calls``, but asked in every round, right after the worker's timed steps (while
            the others wait): a measurement to set against those steps on a machine whose speed drifts
            (shared VMs); its results hold a list of the answers, one per round.

    Returns:
        ``info`` (key -> the worker's info dict; failed ones hold ``"error"``), ``results`` (key ->
        ``times`` (all timed steps, seconds), ``round_medians`` (seconds), ``other_load`` (per visit, the
        share of the machine's CPU time used by other processes), ``peak_rss_mb``, and ``peak_device_mb``
        where the worker reports it), ``quiet_rounds``
        (rounds that started on an idle machine, or None without ``quiet_wait``).
    """
    ctx = mp.get_context("spawn")
    workers: dict[Hashable, tuple[Any, Any]] = {}
    info: dict[Hashable, dict[str, Any]] = {}
    try:
        for key in keys:
            parent_conn, child_conn = ctx.Pipe()
            proc = ctx.Process(target=worker, args=(key, worker_args, child_conn), daemon=True)
            proc.start()
            workers[key] = (proc, parent_conn)
        for key, (_, conn) in list(workers.items()):
            try:
                info[key] = conn.recv()
            except EOFError:  # it died before reporting; its traceback is on stderr
                info[key] = {"error": "the worker process exited before reporting"}
            if "error" in info[key]:
                if not skip_failed:
                    raise RuntimeError(f"building {key} failed: {info[key]['error']}")
                workers.pop(key)[0].join(timeout=30)
        live = [k for k in keys if k in workers]
        results = {
            k: {"times": [], "round_medians": [], "other_load": [], "peak_rss_mb": 0.0}
            | {name: [] for name in round_calls}
            for k in live
        }
        ncpu = os.cpu_count() or 1
        quiet_rounds = 0
        for r in range(rounds if live else 0):
            if quiet_wait > 0:
                quiet_rounds += wait_until_quiet(quiet_wait)
            shift = r % len(live)
            for key in live[shift:] + live[:shift]:
                _, conn = workers[key]
                s0, t0 = machine_busy(), time.perf_counter()
                conn.send({"warmup": warmup if r == 0 else 1, "steps": steps})
                msg = conn.recv()
                s1, wall = machine_busy(), time.perf_counter() - t0
                res = results[key]
                res["times"] += msg["times"]
                res["round_medians"].append(statistics.median(msg["times"]))
                res["peak_rss_mb"] = max(res["peak_rss_mb"], msg["peak_rss_mb"])
                if "peak_device_mb" in msg:
                    res["peak_device_mb"] = max(res.get("peak_device_mb", 0.0), msg["peak_device_mb"])
                if s0 and s1 and s1[1] > s0[1]:  # the machine's CPU time not spent by this worker
                    busy = (s1[0] - s0[0]) / (s1[1] - s0[1]) * wall * ncpu
                    res["other_load"].append(max(0.0, busy - msg["cpu_s"]) / (wall * ncpu))
                for name in round_calls:
                    conn.send({"call": name})
                    res[name].append(conn.recv()[name])
                if progress is not None:
                    progress(r, key, msg["times"])
        for key in live:  # one worker at a time, the others idle
            for name in calls:
                workers[key][1].send({"call": name})
                results[key].update(workers[key][1].recv())
    finally:
        for proc, conn in workers.values():
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            proc.join(timeout=30)
    return {"info": info, "results": results, "quiet_rounds": quiet_rounds if quiet_wait > 0 else None}


# bf16 matrix instructions, fastest first, as /proc/cpuinfo names them: they decide how fast a bf16 step is
# (the 2-core machines of this project have been AMD Zen 4, with AVX-512 bf16 dot products, and Intel Xeons
# with AMX tiles, on which the MAE recipe's bf16 training step ran 1.6x faster: benchmarks/README.md).
BF16_ISAS = (("amx_bf16", "AMX bf16"), ("avx512_bf16", "AVX-512 bf16"))


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name and its fastest bf16 matrix instructions, for a results file's machine line.

    E.g. ``"Intel(R) Xeon(R) Processor (AMX bf16)"``; an AMD Zen 4 gets ``"<its model name> (AVX-512 bf16)"``.
    ``cpuinfo`` is the text of ``/proc/cpuinfo`` (read when None); where there is none (not Linux), the
    answer is :func:`platform.processor` or the architecture.
    """
    import platform

    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:  # the first processor's entry is enough
            fields[key.strip()] = value.strip()
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    isa = next((label for flag, label in BF16_ISAS if flag in flags), None)
    return f"{name} ({isa})" if isa else name


def machine_info() -> dict[str, Any]:
    """Platform, CPU model, CPU count, Python and (if importable) torch versions, for a results file."""
    import platform

    machine: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    try:
        import torch

        machine["torch"] = torch.__version__
        if torch.cuda.is_available():
            machine["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return machine


def write_report(folder: str | os.PathLike, name: str, record: dict[str, Any], text: str) -> list[Path]:
    """``folder/name.json`` (``record`` with the date and :func:`machine_info` first) and ``folder/name.md``
    (``text``); returns the two paths."""
    import datetime

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    stamped = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(),
        **record,
    }
    paths = [out / f"{name}.json", out / f"{name}.md"]
    paths[0].write_text(json.dumps(stamped, indent=2) + "\n")
    paths[1].write_text(text)
    return paths


def cli_images_per_s(cmd: list[str], cwd: str | os.PathLike, env: dict[str, str] | None = None) -> float:
    """Run a ``mimkit pretrain`` command line and return the images/s of its closing "trained steps" line."""
    import re
    import subprocess

    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=True)
    rate = re.search(r"trained steps .* ([0-9.]+) images/s", done.stderr)
    if rate is None:
        raise RuntimeError(done.stderr[-2000:])
    return float(rate.group(1))


def write_json(path: str | os.PathLike | None, result: dict[str, Any]) -> None:
    """Write a benchmark's result (no-op without a path)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=1) + "\n")
