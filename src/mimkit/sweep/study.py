"""The sweep's loop on an Optuna study kept in ``<sweep>/optuna.db`` (SQLite): ask, run, tell; resume.

One sweep process writes a sweep directory at a time (:class:`~mimkit.engine.runctl.RunLock`, as a run
directory), so a trial the store still marks RUNNING when the sweep starts was interrupted: it is run again
under its own number, which names its run directories, so its runs resume from their checkpoints and its
scored runs are read back (:data:`~mimkit.sweep.trial.RESULT`), and the same trial is told its value. Grid
points and search trials are counted from the store, never from a log.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mimkit.engine.runctl import Preempted, RunLock
from mimkit.sweep.space import Axis, SweepSpec
from mimkit.sweep.table import write_tables
from mimkit.sweep.trial import Pruned, run_trial

log = logging.getLogger("mimkit")

STORE = "optuna.db"
STUDY = "sweep"
PRUNE_STARTUP = 3  # trials whose whole kNN curve is known before the pruner compares against their median


class _Grid(optuna.samplers.GridSampler):
    """GridSampler without its ``study.stop()`` after the last point, which only ``study.optimize`` allows:
    the loop here stops when every point has a trial."""

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        return None


def _suggest(trial: optuna.Trial, axes: tuple[Axis, ...]) -> dict[str, Any]:
    """The trial's values (the stored ones when it was interrupted: Optuna returns what it suggested)."""
    params = {}
    for a in axes:
        if not a.is_range:
            params[a.key] = trial.suggest_categorical(a.key, list(a.choices))
        elif isinstance(a.low, int) and isinstance(a.high, int):
            params[a.key] = trial.suggest_int(a.key, a.low, a.high, log=a.log)
        else:
            params[a.key] = trial.suggest_float(a.key, float(a.low), float(a.high), log=a.log)
    return params


def _reporter(trial: optuna.Trial, prune: bool) -> Callable[[int, float], None]:
    """``(epoch, knn) -> None``: the online kNN curve into the store; raises Pruned when the pruner says."""

    def report(epoch: int, knn: float) -> None:
        trial.report(knn, epoch)
        if prune and trial.should_prune():
            raise Pruned(f"online kNN {knn:.2f}% at epoch {epoch}, below the median of earlier trials there")

    return report


def _pruner(prune: bool) -> optuna.pruners.BasePruner:
    if not prune:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP, n_warmup_steps=0)


def open_study(spec: SweepSpec, out: Path, trials: int | None, prune: bool) -> optuna.Study:
    """The sweep's study: created on the first run, checked against ``spec`` on the others."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if spec.is_grid:
        space = {a.key: list(a.choices) for a in spec.axes}
        sampler: optuna.samplers.BaseSampler = _Grid(space, seed=0)
    else:
        sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=max(2, min(10, (trials or 0) // 3)))
    storage = f"sqlite:///{out / STORE}"
    study = optuna.create_study(
        storage=storage, study_name=STUDY, direction="maximize", sampler=sampler, pruner=_pruner(prune),
        load_if_exists=True,
    )  # fmt: skip
    identity = spec.identity()
    before = study.user_attrs.get("spec")
    if before is None:
        study.set_user_attr("spec", identity)
    elif before != identity:
        differ = ", ".join(k for k in identity if identity[k] != before.get(k))
        raise ValueError(
            f"{out} holds a sweep with other settings (they differ in: {differ}); run the same command to "
            "continue it, or give another --out"
        )
    return study


def _objective(spec: SweepSpec, runs: list[dict[str, Any]]) -> float:
    what = spec.eval.objective
    values = [r["finetune"][str(spec.eval.finetune[0])] if what == "finetune" else r[what] for r in runs]
    return sum(values) / len(values)


def _scores(spec: SweepSpec, outcome: dict[str, Any]) -> str:
    """A trial's scores, each the mean over its seeds (``kNN 76.55, linear 80.41, fine-tune 10% 66.91``),
    or its state and why."""
    if outcome["state"] != "complete":
        return f"{outcome['state']} ({outcome.get('message', '')})"
    runs = outcome["runs"]
    scores = [("kNN", [r["knn"] for r in runs]), ("linear", [r["linear"] for r in runs])]
    scores += [(f"fine-tune {100 * f:g}%", [r["finetune"][str(f)] for r in runs]) for f in spec.eval.finetune]
    return ", ".join(f"{name} {sum(v) / len(v):.2f}" for name, v in scores)


def _tell(study: optuna.Study, trial: optuna.Trial, spec: SweepSpec, outcome: dict[str, Any]) -> None:
    """The store learns a trial's end: its value (the mean over seeds), or pruned / failed and why."""
    trial.set_user_attr("runs", outcome["runs"])
    if outcome["state"] == "complete":
        study.tell(trial, _objective(spec, outcome["runs"]))
        return
    trial.set_user_attr("message", outcome["message"])
    study.tell(trial, state=TrialState.PRUNED if outcome["state"] == "pruned" else TrialState.FAIL)


def _in_worker(
    spec: SweepSpec, out: Path, number: int, params: dict[str, Any], trial_id: int, prune: bool
) -> dict[str, Any]:
    """:func:`run_trial` in a worker process (one per GPU): it reports to the store itself; an interruption
    or a user error comes back as an outcome (``Preempted`` does not survive pickling)."""
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{out / STORE}", pruner=_pruner(prune))
    try:
        return run_trial(spec, out, number, params, _reporter(optuna.Trial(study, trial_id), prune))
    except (Preempted, KeyboardInterrupt) as err:
        return {"state": "interrupted", "message": str(err) or "interrupted"}
    except (ValueError, FileNotFoundError, ImportError) as err:
        return {"state": "error", "message": str(err)}


def _pin_gpu(queue: Any) -> None:
    """A worker's start: it sees one GPU, and dies with the sweep (Linux: PR_SET_PDEATHSIG)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = str(queue.get())
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except OSError:  # not Linux: a worker outlives a killed sweep; the run lock then names it
        pass


def run_sweep(
    spec: SweepSpec, out: str | os.PathLike, trials: int | None = None, prune: bool | None = None,
    gpus: list[int] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run (or continue) the sweep ``spec`` in ``out``: every grid point, or ``trials`` search trials in all.

    Args:
        trials: a search's trial count, earlier invocations' included (a grid: None, or its size).
        prune: stop trials whose online kNN falls below the median of earlier trials at the same epoch
            (None: for searches, not for grids, whose table is the point); needs ``online_knn.every``.
        gpus: run one trial per GPU listed at a time, each in a process of its own (None: one after another
            in this process).

    Returns:
        ``{"table": markdown path, "csv": path, "best": the best trial's row or None, "ran": trials run now,
        "rows": every row}``.
    """
    out = Path(out)
    size = len(spec.grid()) if spec.is_grid else None
    if size is None and trials is None:
        raise ValueError("a range (low:high) is searched, not gridded: give the number of trials, --trials N")
    if size is not None and trials not in (None, size):
        raise ValueError(f"the grid has {size} points: leave --trials out (or give {size})")
    total = size if size is not None else trials
    prune = (not spec.is_grid) if prune is None else prune
    with RunLock(out):
        study = open_study(spec, out, trials, prune)
        stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))  # the lock says: interrupted
        for t in stale:
            log.info("sweep: trial %d was interrupted; it resumes", t.number)
        # (a trial's storage id is what Optuna's Trial is built from; FrozenTrial keeps it as _trial_id)
        resumes = [optuna.Trial(study, t._trial_id) for t in stale]
        ran = _loop(study, spec, out, resumes, total, prune, gpus)
        rows, paths = write_tables(study.get_trials(deepcopy=False), spec, out)
    best = next((r for r in rows if r.get("best")), None)
    return {"table": paths[0], "csv": paths[1], "best": best, "ran": ran, "rows": rows}


def _next(study: optuna.Study, resumes: list[optuna.Trial], total: int) -> optuna.Trial | None:
    if resumes:
        return resumes.pop(0)
    return study.ask() if len(study.get_trials(deepcopy=False)) < total else None


def _loop(
    study: optuna.Study, spec: SweepSpec, out: Path, resumes: list[optuna.Trial], total: int, prune: bool,
    gpus: list[int] | None,
) -> int:  # fmt: skip
    """Ask, run and tell until every trial has ended; returns how many ran in this invocation."""
    ran = 0
    if not gpus:
        while (trial := _next(study, resumes, total)) is not None:
            params = _suggest(trial, spec.axes)  # stored before its run directories exist
            t0 = time.perf_counter()
            outcome = run_trial(spec, out, trial.number, params, _reporter(trial, prune))
            _tell(study, trial, spec, outcome)
            minutes = (time.perf_counter() - t0) / 60
            log.info("sweep: trial %d ended in %.1f min: %s", trial.number, minutes, _scores(spec, outcome))
            ran += 1
        return ran
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    for gpu in gpus:
        queue.put(gpu)
    failure: dict[str, Any] | None = None
    with ProcessPoolExecutor(len(gpus), mp_context=context, initializer=_pin_gpu, initargs=(queue,)) as pool:
        running = {}
        while True:
            while failure is None and len(running) < len(gpus):
                trial = _next(study, resumes, total)
                if trial is None:
                    break
                params = _suggest(trial, spec.axes)
                job = pool.submit(_in_worker, spec, out, trial.number, params, trial._trial_id, prune)
                running[job] = trial
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for job in done:
                trial, outcome = running.pop(job), job.result()
                if outcome["state"] in (
                    "interrupted",
                    "error",
                ):  # left RUNNING: the next invocation resumes it
                    failure = failure or outcome
                else:
                    _tell(study, trial, spec, outcome)
                    log.info("sweep: trial %d ended: %s", trial.number, _scores(spec, outcome))
                    ran += 1
    if failure is not None and failure["state"] == "error":
        raise ValueError(failure["message"])
    if failure is not None:
        raise KeyboardInterrupt(failure["message"])
    return ran
