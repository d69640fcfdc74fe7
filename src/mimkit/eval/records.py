"""The record a fine-tuning run keeps of itself: the recipe it started with, and whether it learned; and
whether any top-1 is distinguishable from chance.

``recipe.json`` keeps a run directory to one recipe (a later call with other settings is an error, not a
silent mix); the final training loss next to ln(classes) tells a run that collapsed to chance;
:func:`chance_level` and :func:`chance_note` mark a test score that a constant guess could have reached
(kNN, linear probe, fine-tuning: wherever a top-1 is printed).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from mimkit.choices import flatten
from mimkit.engine import checkpoint as ckpt
from mimkit.eval.recipe import FinetuneConfig

AT_CHANCE = 0.99  # a final training loss above this share of ln(classes) is a run that did not learn
CHANCE_Z = 2.0  # a top-1 within this many standard errors above the chance level is "within chance"


def logged_losses(run_dir: str | os.PathLike) -> list[tuple[int, float]]:
    """``[(step, loss)]`` that ``run_dir/metrics.jsonl`` logged, in the order logged; lines that are not JSON
    (a run killed while writing) or that log no loss are skipped."""
    path = Path(run_dir, "metrics.jsonl")
    logged: list[tuple[int, float]] = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "loss" in record and "step" in record:
                logged.append((int(record["step"]), float(record["loss"])))
    return logged


def final_train_loss(run_dir: str | os.PathLike, tail: float = 0.1) -> float | None:
    """Mean training loss that ``run_dir/metrics.jsonl`` logged over the last ``tail`` of the run's steps.

    Each logged loss is already the mean over its log interval; at least the last one is taken. None when
    no loss was logged (:func:`logged_losses`).
    """
    logged = logged_losses(run_dir)
    if not logged:
        return None
    last_step = max(step for step, _ in logged)
    tail_losses = [loss for step, loss in logged if step > (1 - tail) * last_step] or [logged[-1][1]]
    return sum(tail_losses) / len(tail_losses)


def at_chance(result: dict[str, Any]) -> bool:
    """Whether a fine-tuning run ended with its training loss at chance level.

    ``result`` is :func:`~mimkit.eval.finetune.finetune`'s.

    Cross-entropy against a uniform prediction is ``ln(classes)`` whatever the targets (one-hot, smoothed
    or mixed), so a final training loss at ``AT_CHANCE`` of that or above means the classifier collapsed to
    (nearly) uniform outputs: its test accuracy says nothing of the encoder, and the run's lr was likely too
    high for it. A result without these fields is never flagged (``finished_runs`` of
    :mod:`mimkit.eval.label_efficiency` fills them in for runs written before they existed).
    """
    loss, chance = result.get("final_train_loss"), result.get("chance_loss")
    return loss is not None and chance is not None and loss >= AT_CHANCE * chance


def chance_level(labels: torch.Tensor) -> dict[str, float]:
    """The top-1 of the best constant guess on a test set: ``{"top1": % of its largest class, "images"}``."""
    labels = labels[labels >= 0]
    if labels.numel() == 0:
        return {"top1": 0.0, "images": 0}
    largest = int(torch.bincount(labels).max())
    return {"top1": 100.0 * largest / labels.numel(), "images": int(labels.numel())}


def chance_se(chance: dict[str, float]) -> float:
    """The binomial standard error (percentage points) of a top-1 at the chance level on its test images:
    ``100 sqrt(p (1 - p) / n)``."""
    p, n = chance["top1"] / 100, max(int(chance["images"]), 1)
    return 100.0 * math.sqrt(p * (1 - p) / n)


def within_chance(top1: float, chance: dict[str, float] | None) -> bool:
    """Whether ``top1`` (%) is at most ``CHANCE_Z`` (2) standard errors above ``chance`` (a guess that
    always names the largest class would score that well about 98% of the time)."""
    if not chance or not chance.get("images"):
        return False
    return top1 <= chance["top1"] + CHANCE_Z * chance_se(chance)


def chance_note(top1: float, chance: dict[str, float] | None) -> str:
    """``" (within chance: ...)"`` to follow a printed top-1 that :func:`within_chance` flags, else ``""``."""
    return f" (within chance: {chance_reason(chance)})" if within_chance(top1, chance) else ""


def chance_reason(chance: dict[str, float]) -> str:
    """What the chance level of a test set is, in words."""
    return (
        f"the largest class is {chance['top1']:.1f}% of the {int(chance['images'])} test images, "
        f"+/- {CHANCE_Z:g} x {chance_se(chance):.1f} points"
    )


# What may change between the calls of one run: where and how it runs, and its length (a longer schedule
# goes on from the checkpoint). Every other recipe setting must stay that of the run's first call.
RESUMABLE_CHANGES = frozenset(
    ["eval_batch_size", "compare_probe"]
    + [
        f"train.{key}"
        for key in ("device", "compile", "progress", "log_every", "save_every_steps", "tensorboard", "resume")
        + ("epochs", "max_steps", "warmup_epochs")
    ]
)
RECIPE_FILE = "recipe.json"


def check_recipe(run_dir: str | os.PathLike, cfg: FinetuneConfig, write: bool = True) -> None:
    """Keep a run directory to one recipe: ``run_dir/recipe.json`` records the first call's; a later call
    (resuming the run, or re-evaluating a finished one) with other settings raises a ValueError naming them.

    Settings in :data:`RESUMABLE_CHANGES` are not compared; ``train.resume=false`` (start over) replaces the
    record. A run directory with a checkpoint but no record (from before the record existed) is neither
    checked nor given one.
    """
    recipe = recipe_record(cfg)
    path = Path(run_dir, RECIPE_FILE)
    if cfg.train.resume and path.is_file():
        saved = json.loads(path.read_text())
        changed = recipe_changes(saved, recipe)
        if changed:
            diff = ", ".join(f"{k}: {saved.get(k)!r} -> {recipe.get(k)!r}" for k in changed)
            raise ValueError(
                f"{run_dir} holds a fine-tuning run with another recipe ({diff}); "
                "use another output directory, or train.resume=false to start it over"
            )
        return
    starts_afresh = not cfg.train.resume or not Path(run_dir, ckpt.LAST).is_file()
    if write and starts_afresh:  # a run from before the record keeps none: its recipe is not known
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(RECIPE_FILE + ".tmp")  # other processes of the run may be reading it
        partial.write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n")
        os.replace(partial, path)


def recipe_record(cfg: FinetuneConfig) -> dict[str, Any]:
    """The settings of ``cfg`` that make a recipe, flat (``"train.blr"``) and as JSON reads them back:
    everything but :data:`RESUMABLE_CHANGES`."""
    flat = flatten(json.loads(json.dumps(asdict(cfg))))
    return {key: value for key, value in flat.items() if key not in RESUMABLE_CHANGES}


def recipe_changes(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The sorted keys on which two :func:`recipe_record` records differ."""
    return sorted(key for key in set(a) | set(b) if a.get(key) != b.get(key))
