"""One trial of a sweep: an ordinary run directory per seed, pretrained, then scored.

Each run directory (``<sweep>/<trial>-<values>[-seed<S>]``) is what ``mimkit pretrain`` makes, so ``mimkit
knn``, ``mimkit eval ...`` and ``mimkit compare`` read it as any other run. Once scored it gets
:data:`RESULT`, written whole (a temporary file renamed): a run that has it is never trained or scored
again, which is what keeps the store and the run directories in agreement after a kill (the store is told
from these files). A run without it resumes from its checkpoint (the trainer's own resume).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mimkit.data.splits import SPLIT_FILE
from mimkit.engine import NonFiniteLossError
from mimkit.eval_protocols import evaluate_finetune, evaluate_knn, evaluate_linear
from mimkit.eval_sources import DataChoice, EncoderChoice, FeatureOptions
from mimkit.pretrain import pretrain
from mimkit.sweep.space import SweepSpec, trial_config

log = logging.getLogger("mimkit")

RESULT = "sweep_result.json"  # in each run directory: its scores, or why it has none (pruned, failed)


class Pruned(Exception):
    """Raised by a trial's reporter when its online kNN says the trial is hopeless."""


def run_name(number: int, params: dict[str, Any], seed: int, several_seeds: bool) -> str:
    """``"003-mask_ratio=0.75-seed1"``: the trial number (its identity), then its values for a reader."""
    short = {k: k.rsplit(".", 1)[-1] for k in params}
    if len(set(short.values())) < len(short):  # two keys end alike: keep them whole
        short = {k: k for k in params}
    values = "-".join(
        f"{short[k]}={v:.4g}" if isinstance(v, float) else f"{short[k]}={v}" for k, v in params.items()
    )
    name = re.sub(r"[^A-Za-z0-9._=+-]+", "_", f"{number:03d}-{values}".rstrip("-"))[:100]
    return f"{name}-seed{seed}" if several_seeds else name


def read_result(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / RESULT
    return json.loads(path.read_text()) if path.is_file() else None


def _write_result(run_dir: Path, result: dict[str, Any]) -> dict[str, Any]:
    aside = run_dir / f".{RESULT}.tmp-{os.getpid()}"
    aside.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(aside, run_dir / RESULT)
    return result


def _last_step(run_dir: Path) -> int | None:
    """The last optimizer step ``metrics.jsonl`` logged (lines a kill cut short are skipped)."""
    step = None
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            step = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return step


def score(spec: SweepSpec, run_dir: Path, seed: int) -> dict[str, Any]:
    """kNN and the linear probe of the frozen encoder, and fine-tuning at each of ``spec.eval.finetune``, on
    the run's own held-out split: ``{"knn", "linear", "finetune": {fraction: top-1 %}}``."""
    ev = spec.eval
    encoder = EncoderChoice(str(run_dir), seed=seed)
    data = DataChoice(train_limit=ev.train_limit, test_limit=ev.test_limit)
    features = FeatureOptions(pool=ev.pool)
    knn = evaluate_knn(encoder, data, features, ks=(ev.k,))["pretrained"]["knn"][ev.k]
    linear = evaluate_linear(encoder, data, features, overrides=ev.linear)["pretrained"]["test_top1"]
    tuned = {}
    for fraction in ev.finetune:
        out = run_dir / "eval" / f"finetune_{100 * fraction:g}pct"
        result = evaluate_finetune(
            encoder, data, overrides=ev.finetune_set, out_dir=str(out), label_fraction=fraction
        )
        tuned[str(fraction)] = result["test_top1"]
    return {"knn": knn, "linear": linear, "finetune": tuned}


def run_trial(
    spec: SweepSpec,
    out: Path,
    number: int,
    params: dict[str, Any],
    report: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Pretrain and score the trial's run of every seed, skipping runs scored before.

    ``report(epoch, knn_top1)`` hears the first seed's online kNN curve and raises :class:`Pruned` to stop.

    Returns:
        ``{"state": "complete" | "pruned" | "failed", "runs": [each run's RESULT], "message"}``.
    """
    runs = []
    for i, seed in enumerate(spec.seeds):
        run_dir = out / run_name(number, params, seed, len(spec.seeds) > 1)
        done = read_result(run_dir)
        if done is None:
            done = _run(spec, out, run_dir, params, seed, report if i == 0 else None)
        runs.append(done)
        if done["state"] != "complete":
            return {"state": done["state"], "runs": runs, "message": done.get("message", "")}
    return {"state": "complete", "runs": runs, "message": ""}


def _run(
    spec: SweepSpec,
    out: Path,
    run_dir: Path,
    params: dict[str, Any],
    seed: int,
    report: Callable[[int, float], None] | None,
) -> dict[str, Any]:
    cfg, records = trial_config(spec, params, seed, run_dir, out / SPLIT_FILE)
    base = {"run": run_dir.name, "seed": seed, "params": params}
    log.info("sweep: %s", run_dir.name)
    t0 = time.perf_counter()
    try:
        pretrain(cfg, records, on_knn=report)
    except Pruned as err:
        log.info("sweep: %s pruned: %s", run_dir.name, err)
        return _write_result(
            run_dir, {**base, "state": "pruned", "message": str(err), "steps": _last_step(run_dir)}
        )
    except NonFiniteLossError as err:  # a setting that diverges is an answer too: the sweep goes on
        return _write_result(
            run_dir, {**base, "state": "failed", "message": str(err), "steps": _last_step(run_dir)}
        )
    t1 = time.perf_counter()
    scores = score(spec, run_dir, seed)
    timing = {"pretrain_s": round(t1 - t0, 1), "eval_s": round(time.perf_counter() - t1, 1)}
    return _write_result(
        run_dir, {**base, "state": "complete", **scores, "steps": _last_step(run_dir), **timing}
    )
