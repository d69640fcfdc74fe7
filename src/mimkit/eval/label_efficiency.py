"""Label efficiency: fine-tune on 1%, 10% and 100% of the labels, pretrained against random init.

The subsets are drawn per class with a fixed seed (``round(fraction * n_c)`` images of each class ``c``,
at least one), nested (the 1% subset is inside the 10% one), and written to a JSON file so that other
runs (another method, another budget) fine-tune on exactly the same images. One call runs
``{pretrained, random init} x fractions`` through :func:`mimkit.eval.finetune.finetune` and writes a
markdown table, a CSV and a PNG plot.

Each fraction's recipe can follow its own subset (``plan_overrides``: planned by
:func:`~mimkit.eval.planner.choose_finetune` from the images the fraction leaves, the user's settings on
top), as ``mimkit eval label-efficiency`` does: 1% of a small set is a few images per class, and a recipe
made for the whole set starves it. A fraction that leaves a class under a few images says so in the
report, as does one that rounds a class to no image (it gets one, and the run has more labels than the
fraction says).

The random-init rows train with a from-scratch recipe (:func:`scratch_recipe`): the pretrained recipe
without layer-wise lr decay. The decay exists to keep pretrained lower layers close to what they learned;
on a random encoder it only leaves those layers nearly untrained (``0.75 ** 13``, about 2% of the lr, for
the patch embedding of a 12-block ViT), which would make training from scratch look worse than it is.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mimkit.data.datasets import ImageDataset
from mimkit.data.subsets import DEFAULT_FRACTIONS, check_fraction, label_subsets, subset_dataset
from mimkit.engine.config import parse_overrides
from mimkit.engine.dist import is_main_process, resolve_device
from mimkit.eval.classifier import build_classifier
from mimkit.eval.finetune import finetune
from mimkit.eval.planner import EncoderShape, LabeledSet, choose_finetune, few_images_note, write_plan
from mimkit.eval.recipe import FinetuneConfig
from mimkit.eval.records import (
    at_chance,
    final_train_loss,
    recipe_changes,
    recipe_record,
    within_chance,
)

log = logging.getLogger("mimkit")

INITS = ("pretrained", "random init")
CHANCE_MARK = "(at chance)"  # a cell whose run's training loss ended at ln(classes): see at_chance
CHANCE_WHY = (
    "the training loss ended at chance level (ln of the class count, the loss of a uniform prediction): "
    "the classifier collapsed, so its accuracy says nothing of the encoder; its lr was likely too high for "
    "this init."
)
WITHIN_MARK = "(within chance)"  # a cell whose test top-1 a constant guess could reach: see within_chance
WITHIN_WHY = (
    "the test top-1 is within 2 standard errors of what always naming the largest class scores "
    "(mimkit.eval.records.within_chance)."
)


def pct(fraction: float) -> str:
    """A label fraction in percent, without the sign: ``0.01`` -> ``"1"``."""
    return f"{100 * fraction:g}"


def run_name(init: str, fraction: float) -> str:
    """The run directory of one label-efficiency run: ``pretrained_1pct``, ``random_100pct``, ..."""
    return f"{init.split()[0]}_{pct(fraction)}pct"


def finished_runs(
    out_dir: str | os.PathLike, fractions: Sequence[float], num_classes: int | None = None
) -> dict[tuple[str, float], dict[str, Any]]:
    """The finished runs (with a ``finetune.json``) under ``out_dir``, by (init, fraction).

    Each is a report row: ``{"init", "fraction", "labels", "test_top1", "steps", "epochs", "at_chance"}``.
    A ``finetune.json`` written before runs recorded their final training loss gets it from the run's
    ``metrics.jsonl``, and its chance level from ``num_classes`` when given, so that old runs are checked
    for :func:`~mimkit.eval.records.at_chance` too.
    """
    found = {}
    for init in INITS:
        for fraction in fractions:
            run_dir = Path(out_dir, run_name(init, fraction))
            if not (run_dir / "finetune.json").is_file():
                continue
            result = json.loads((run_dir / "finetune.json").read_text())
            if "final_train_loss" not in result:
                result["final_train_loss"] = final_train_loss(run_dir)
            if "chance_loss" not in result and num_classes:
                result["chance_loss"] = math.log(num_classes)
            found[(init, fraction)] = _report_row(init, fraction, result)
    return found


def _report_row(init: str, fraction: float, result: Mapping[str, Any]) -> dict[str, Any]:
    """One run's row of the label-efficiency report, from :func:`finetune`'s result (= ``finetune.json``)."""
    return {
        "init": init,
        "fraction": fraction,
        "labels": result["train_images"],
        "test_top1": result["test_top1"],
        "steps": result["steps"],
        "epochs": result["epochs"],
        "at_chance": at_chance(result),
        "within_chance": within_chance(result["test_top1"], result.get("chance")),
    }


def fraction_note(labels: torch.Tensor, fraction: float, taken: int) -> str | None:
    """A line when ``fraction`` rounds some class to no image (each such class got one), else None."""
    counts = torch.bincount(labels[labels >= 0])
    empty = int(((counts > 0) & (torch.floor(fraction * counts + 0.5) == 0)).sum())
    if not empty:
        return None
    return (
        f"{pct(fraction)}% of the labels would leave {empty} class(es) without an image: each got 1, so the "
        f"run has {taken} labels, {100 * taken / int(counts.sum()):.2g}% of the set"
    )


def scratch_recipe(cfg: FinetuneConfig) -> FinetuneConfig:
    """The recipe for a randomly initialised encoder: ``cfg`` without layer-wise lr decay."""
    return replace(cfg, layer_decay=1.0)


@dataclass(frozen=True)
class LabelEfficiencyOptions:
    """What a label-efficiency call runs, besides the encoder and the data.

    Attributes:
        fractions: label fractions in (0, 1], run in this order.
        recipe: the fine-tuning recipe (its ``train.epochs`` unless ``epochs`` gives one per fraction).
        epochs: optional epochs per fraction (smaller subsets usually want more epochs); the warm-up keeps
            the share of the schedule it has in ``recipe``.
        seed: subsets and fresh parameters.
        include_random: also run the random-init row.
        scratch: the random-init rows' recipe; default :func:`scratch_recipe` of ``recipe``.
        pretrained_label: the ``init`` that the pretrained rows get in the returned rows and the report
            (e.g. ``"teacher"``); their run folders keep ``pretrained_<fraction>``.
        plan_overrides: plan each fraction's recipe from its own subset
            (:func:`~mimkit.eval.planner.choose_finetune`, recorded in the run's ``plan.json``) with these
            ``key=value`` settings on top, instead of ``recipe``; None: ``recipe`` for every fraction.
    """

    fractions: Sequence[float] = DEFAULT_FRACTIONS
    recipe: FinetuneConfig = field(default_factory=FinetuneConfig)
    epochs: Mapping[float, int] | None = None
    seed: int = 0
    include_random: bool = True
    scratch: FinetuneConfig | None = None
    pretrained_label: str = "pretrained"
    plan_overrides: Sequence[str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "fractions", tuple(check_fraction(f) for f in self.fractions))


def run_label_efficiency(
    encoder_cfg: dict[str, Any],
    pretrained: nn.Module | None,
    train_set: ImageDataset,
    test_set: ImageDataset,
    out_dir: str | os.PathLike,
    *,
    options: LabelEfficiencyOptions | None = None,
    config: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Fine-tune ``{pretrained, random init} x fractions`` and write the table, CSV and plot.

    Runs go fraction by fraction in the order given, pretrained then random init, so that each comparison
    is complete as early as possible. Each run lives in ``out_dir/<init>_<fraction>`` and resumes like any
    training run. Writes
    ``label_subsets.json``, ``label_efficiency.md``, ``label_efficiency.csv`` and ``label_efficiency.png``.

    Args:
        encoder_cfg: the encoder config (name + options).
        pretrained: the loaded pretrained encoder; None runs the random-init row only.
        train_set, test_set: labeled splits.
        options: fractions, recipes, schedules, seed and rows (:class:`LabelEfficiencyOptions`).
        config: extra entries for the runs' stored config (e.g. the checkpoint it came from).

    Returns:
        One row per run: ``{"init", "fraction", "labels", "test_top1", "steps", "epochs", "at_chance",
        "within_chance"}`` (``at_chance``: the run's training loss ended at chance level, see
        :func:`~mimkit.eval.records.at_chance`; ``within_chance``: its test top-1 is, see
        :func:`~mimkit.eval.records.within_chance`).
    """
    o = options or LabelEfficiencyOptions()
    fractions, cfg, seed, include_random = o.fractions, o.recipe, o.seed, o.include_random
    if train_set.num_classes == 0 or test_set.num_classes == 0:
        raise ValueError(f"label efficiency needs labeled data; {train_set.root!r} has no class labels")
    out_dir = Path(out_dir)
    subsets = label_subsets(train_set.labels, fractions, seed, out_dir / "label_subsets.json")
    inits = ([] if pretrained is None else ["pretrained"]) + (["random init"] if include_random else [])
    if not inits:
        raise ValueError("nothing to run: no pretrained encoder and include_random=False")
    recipes = {"pretrained": cfg, "random init": o.scratch or scratch_recipe(cfg)}
    shape = EncoderShape.of(encoder_cfg, pretrained) if o.plan_overrides is not None else None
    rows, notes = [], []
    for fraction in fractions:
        train = subset_dataset(train_set, subsets[fraction]) if fraction < 1 else train_set
        said = [fraction_note(train_set.labels, fraction, len(train)), few_images_note(LabeledSet.of(train))]
        for line in filter(None, said):
            log.warning("label efficiency, %s%% of the labels: %s", pct(fraction), line)
            notes.append(f"{pct(fraction)}% of the labels: {line}.")
        planned = None
        if shape is not None:
            device = resolve_device(cfg.train.device).type
            planned, plan = choose_finetune(train, shape, o.plan_overrides, device)
        for init in inits:
            recipe = recipes[init]
            if planned is not None:
                own_decay = init == "pretrained" or "layer_decay" in parse_overrides(list(o.plan_overrides))
                recipe = planned if own_decay else scratch_recipe(planned)
                if is_main_process():
                    write_plan(out_dir / run_name(init, fraction), plan)
            run_epochs = int((o.epochs or {}).get(fraction, recipe.train.epochs))
            # the same share of the schedule as in the recipe
            warmup = recipe.train.warmup_epochs * run_epochs / recipe.train.epochs
            run_cfg = replace(
                recipe, train=replace(recipe.train, epochs=run_epochs, warmup_epochs=warmup, seed=seed)
            )
            classifier = build_classifier(
                encoder_cfg,
                train_set.num_classes,
                pretrained if init == "pretrained" else None,
                run_cfg,
                seed=seed,
            )
            name = run_name(init, fraction)
            run_config = {
                "encoder": dict(encoder_cfg, init=init),
                **(config or {}),
                "label_fraction": fraction,
                # the row its evaluation.json names: "teacher" for a SiT teacher's runs
                "evaluated": o.pretrained_label if init == "pretrained" else init,
            }
            log.info(
                "label efficiency: %s, %s of the labels (%d images), %d epochs",
                init,
                f"{pct(fraction)}%",
                len(train),
                run_epochs,
            )
            result = finetune(classifier, train, test_set, run_cfg, out_dir / name, config=run_config)
            rows.append(_report_row(init, fraction, result))
    # runs of other fractions that an earlier call finished in this folder (its subsets file lists them)
    drawn = json.loads((out_dir / "label_subsets.json").read_text())["counts"]
    earlier = [
        row
        for (init, _), row in finished_runs(
            out_dir, sorted(float(k) for k in drawn), train_set.num_classes
        ).items()
        if row["fraction"] not in fractions and init in inits
    ]
    if o.pretrained_label != "pretrained":
        rows, earlier = (
            [dict(r, init=o.pretrained_label) if r["init"] == "pretrained" else r for r in group]
            for group in (rows, earlier)
        )
    note = "".join(f"{line}\n" for line in notes)
    if earlier:
        note = (
            "Read back from runs an earlier call finished in this folder: "
            + ", ".join(f"{r['init']} {pct(r['fraction'])}%" for r in earlier)
            + ".\n"
        )
    if include_random:
        mine, theirs = recipe_record(cfg), recipe_record(recipes["random init"])
        changes = ", ".join(
            f"{k} {theirs.get(k)} (pretrained: {mine.get(k)})" for k in recipe_changes(mine, theirs)
        )
        note += (
            f"Random init trains with {changes}; the rest of the recipe is the same."
            if changes
            else "Random init trains with the same recipe."
        )
    write_label_efficiency_report(rows + earlier, out_dir, note)
    return rows


def write_label_efficiency_report(
    rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, note: str = ""
) -> dict[str, Path]:
    """``label_efficiency.md`` (inits x fractions, then ``note``), ``.csv`` (one row per run) and ``.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fractions = sorted({r["fraction"] for r in rows})
    inits = list(dict.fromkeys(r["init"] for r in rows))
    table = {(r["init"], r["fraction"]): r for r in rows}

    csv_path = out_dir / "label_efficiency.csv"
    with open(csv_path, "w", newline="") as f:
        fields = ["init", "fraction", "labels", "test_top1", "steps", "epochs", "at_chance", "within_chance"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, False) for k in writer.fieldnames})

    lines = [
        "| init | " + " | ".join(f"{pct(f)}% labels" for f in fractions) + " |",
        "|---|" + "---:|" * len(fractions),
    ]
    for init in inits:
        cells = []
        for f in fractions:
            r = table.get((init, f))
            mark = " " + CHANCE_MARK if r and r.get("at_chance") else ""
            mark += " " + WITHIN_MARK if r and r.get("within_chance") else ""
            cells.append(f"{r['test_top1']:.2f}{mark} ({r['labels']} img)" if r else "-")
        lines.append(f"| {init} | " + " | ".join(cells) + " |")
    if any(r.get("within_chance") for r in rows):
        note = f"{WITHIN_MARK}: {WITHIN_WHY}" + (f"\n{note}" if note else "")
    if any(r.get("at_chance") for r in rows):
        note = f"{CHANCE_MARK}: {CHANCE_WHY}" + (f"\n{note}" if note else "")
    md_path = out_dir / "label_efficiency.md"
    md_path.write_text(
        "Fine-tuning top-1 accuracy (%) on the test set against the labels used.\n\n"
        + "\n".join(lines)
        + "\n"
        + (f"\n{note}\n" if note else "")
    )

    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    for init in inits:
        points = [(f * 100, table[(init, f)]["test_top1"]) for f in fractions if (init, f) in table]
        ax.plot(*zip(*points, strict=True), marker="o", label=init)
    ax.set_xscale("log")
    ax.set_xticks([f * 100 for f in fractions], [f"{pct(f)}%" for f in fractions])
    ax.set_xlabel("labels used")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = out_dir / "label_efficiency.png"
    fig.savefig(png_path, dpi=100)
    return {"md": md_path, "csv": csv_path, "png": png_path}
