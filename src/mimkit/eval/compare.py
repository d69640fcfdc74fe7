"""Runs side by side from what their evaluations recorded: one table (markdown, CSV) and plots.

Takes :class:`RunRecords` (a run's pretraining loss and its ``evaluation.json`` records,
:mod:`mimkit.eval.evaluation_record`); reading them from run directories is the caller's
(:func:`mimkit.inspect_runs.compare_runs`). A row is one encoder: a run's pretrained encoder, and its
teacher or random init where those were evaluated too; a column is one score of one protocol variant
(``kNN k=20 (token)``, ``linear (avg)``, ``fine-tune 10%``).

Two scores share a column only when they were measured alike: the same data (image size, channels,
training and held-out images: :func:`~mimkit.eval.evaluation_record.data_fingerprint`)
and the same settings (random-init rows are held to each other's settings, not the pretrained ones': their
fine-tuning recipe differs on purpose). Otherwise :func:`compare` raises a one-line ValueError naming
what differs, unless ``mixed``: then the column is marked and the difference noted under the table.

    comparison = compare([RunRecords("runs/a", evaluations=[...]), RunRecords("runs/b", ...)])
    print(markdown(comparison)); write_comparison(comparison, runs, "compare/")
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mimkit.choices import flatten

RANDOM = "random init"
BASE_COLUMNS = ("run", "method", "encoder", "steps", "final loss")
_INIT_ORDER = {"pretrained": 0, "teacher": 1, RANDOM: 2}


@dataclass
class RunRecords:
    """What one run recorded.

    Attributes:
        name: the run as the user named it (its rows' name).
        method, encoder: the pretraining method's and encoder's names (None: unknown).
        losses: the pretraining loss ``[(step, loss), ...]`` as logged.
        evaluations: its ``evaluation.json`` records, each with ``"where"`` (the file, for messages).
        notes: what reading the run found missing (an evaluation from before records existed, ...).
    """

    name: str
    method: str | None = None
    encoder: str | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    """The table.

    Attributes:
        columns: the score columns, in order (kNN, linear, fine-tuning).
        rows: ``{column: value}`` over ``run``, ``method``, ``encoder``, ``steps``, ``final loss``, then
            ``columns`` (None: not recorded).
        marked: columns compared anyway (``mixed``), with what differs.
        notes: lines for the user: what a run lacks and the command that records it.
        groups: each column's protocol variant in words and its ``variant`` record.
    """

    columns: list[str]
    rows: list[dict[str, Any]]
    marked: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    groups: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)


def _pct(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def group_name(record: dict[str, Any]) -> str:
    """A record's protocol variant in words: ``kNN (token)``, ``linear (avg)``, ``fine-tune 10%``,
    ``fine-tune 100%, last 2 blocks``."""
    protocol, variant = record["protocol"], record["variant"]
    if protocol == "knn":
        return f"kNN ({variant['pool']})"
    if protocol == "linear":
        return f"linear ({variant['pool']})"
    blocks = variant.get("train_blocks")
    return f"fine-tune {_pct(variant['label_fraction'])}" + (
        f", last {blocks} blocks" if blocks is not None else ""
    )


def _columns(record: dict[str, Any]) -> dict[str, float]:
    """``{column: score}`` of one record."""
    if record["protocol"] == "knn":
        pool = record["variant"]["pool"]
        return {f"kNN {k} ({pool})": value for k, value in record["scores"].items()}
    return {group_name(record): record["scores"]["top1"]}


def _column_order(column: str, group: tuple[str, dict[str, Any]]) -> tuple:
    name, variant = group
    protocol = {"kNN": 0, "linear": 1}.get(name.split(" ", 1)[0], 2)
    k = int(column.split("k=", 1)[1].split(" ", 1)[0]) if protocol == 0 else 0
    blocks = variant.get("train_blocks")
    return (
        protocol,
        variant.get("pool", ""),
        k,
        blocks is not None,
        blocks or 0,
        variant.get("label_fraction", 0),
    )


def _row_name(run: str, init: str) -> str:
    return run if init == "pretrained" else f"{run} ({init})"


def _command(group: tuple[str, dict[str, Any]], run: str) -> str:
    """The command that records a run's evaluation of a protocol variant."""
    name, variant = group
    if name.startswith("kNN"):
        return f"mimkit knn {run} --pool {variant['pool']}"
    if name.startswith("linear"):
        return f"mimkit eval linear {run} --pool {variant['pool']}"
    fraction, blocks = variant["label_fraction"], variant.get("train_blocks")
    if blocks is not None:
        return f"mimkit eval finetune {run} --train-blocks {blocks}" + (
            f" --label-fraction {fraction:g}" if fraction < 1 else ""
        )
    return (
        f"mimkit eval finetune {run}"
        if fraction >= 1
        else f"mimkit eval label-efficiency {run} --fractions {fraction:g}"
    )


def _describe_data(key: str, values: list[tuple[str, Any]]) -> str:
    """What differs between the data fingerprints at ``key`` (flat), in words."""
    if key == "img_size":
        return "image size (" + ", ".join(f"{who} {v[0]}x{v[1]}" for who, v in values) + ")"
    part, field_name = key.split(".", 1) if "." in key else (key, "")
    split = {"train": "training images", "test": "held-out images"}.get(part, part)
    if field_name == "sha256":
        first, others = values[0], [who for who, v in values[1:] if v != values[0][1]]
        return f"{split} ({', '.join(others)}: as many, but other images than {first[0]}'s)"
    return f"{split} ({field_name}: " + ", ".join(f"{who} {v}" for who, v in values) + ")"


def _differences(entries: list[tuple[str, dict[str, Any]]], describe) -> list[str]:
    """The keys on which the flat dicts of ``entries`` ``[(who, dict)]`` differ, each described."""
    flat = [(who, flatten(values)) for who, values in entries]
    keys = sorted({key for _, values in flat for key in values})
    found = []
    for key in keys:
        values = [(who, values.get(key)) for who, values in flat]
        if len({json.dumps(v, sort_keys=True) for _, v in values}) > 1:
            found.append(describe(key, values))
    return found


def _describe_setting(key: str, values: list[tuple[str, Any]]) -> str:
    return f"{key} (" + ", ".join(f"{who} {v}" for who, v in values) + ")"


def _by_run(entries: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """``[(row, run, values)]`` -> ``[(who, values)]``: a run named once when its rows agree, else each
    row."""
    named: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for row, run, values in entries:
        named.setdefault(run, []).append((row, values))
    found = []
    for run, rows in named.items():
        alike = len({json.dumps(values, sort_keys=True) for _, values in rows}) == 1
        found += [(run, rows[0][1])] if alike else rows
    return found


def _data_differences(entries: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """As :func:`_differences` on data fingerprints, a split named once (its count if that differs, else
    its images)."""
    found = _differences(entries, _describe_data)
    for split in ("training images", "held-out images"):
        mine = [line for line in found if line.startswith(split)]
        if len(mine) > 1:  # a count differs as well as the hash: the count says more
            keep = next((line for line in mine if "(images:" in line), mine[0])
            found = [line for line in found if line not in mine or line == keep]
    return found


def compare(runs: Sequence[RunRecords], mixed: bool = False) -> Comparison:
    """The table of ``runs`` (see the module docstring).

    Args:
        runs: one per run, in the order of the table's rows.
        mixed: compare columns whose scores were measured on other data or with other settings anyway,
            marking them, instead of refusing.

    Raises:
        ValueError: in one line, scores of one column measured differently (without ``mixed``), or no run.
    """
    if not runs:
        raise ValueError("give at least one run to compare")
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    found: dict[str, list[tuple[str, str, str, dict[str, Any]]]] = {}  # group -> [(row, run, init, record)]
    groups: dict[str, tuple[str, dict[str, Any]]] = {}
    notes: list[str] = []
    for run in runs:
        notes += run.notes
        base = {
            "method": run.method,
            "encoder": run.encoder,
            "steps": run.losses[-1][0] if run.losses else None,
            "final loss": run.losses[-1][1] if run.losses else None,
        }
        rows[(run.name, "pretrained")] = {"run": run.name, **base}
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for record in sorted(run.evaluations, key=lambda r: r.get("written", "")):
            key = (record["encoder"], group_name(record))
            if key in latest:
                notes.append(
                    f"{run.name}: {key[1]} of the {key[0]} encoder was recorded twice "
                    f"({latest[key].get('where')}, {record.get('where')}): the later one is shown"
                )
            latest[key] = record
        for (init, group), record in latest.items():
            name = _row_name(run.name, init)  # a teacher or random init: no pretraining of its own here
            method = None if init == RANDOM else run.method
            row = rows.setdefault((run.name, init), {"run": name, "method": method, "encoder": run.encoder})
            for column, value in _columns(record).items():
                row[column] = value
                groups[column] = (group, record["variant"])
            found.setdefault(group, []).append((name, run.name, init, record))
    marked: dict[str, str] = {}
    refused = []
    for group, entries in found.items():
        differs = _data_differences(_by_run([(row, run, rec["data"]) for row, run, _, rec in entries]))
        for random in (False, True):  # random-init rows against each other, the trained ones likewise
            alike = [
                (row, run, rec["settings"]) for row, run, init, rec in entries if (init == RANDOM) == random
            ]
            differs += _differences(_by_run(alike), _describe_setting)
        if differs:
            what = f"{group}: " + "; ".join(differs)
            refused.append(what)
            for column, (name, _) in groups.items():
                if name == group:
                    marked[column] = what
    if refused and not mixed:
        raise ValueError(
            "the runs were not evaluated alike: " + " | ".join(refused) + ". Evaluate them alike, or give "
            "--mixed to compare them anyway (the differing columns are marked)"
        )
    columns = sorted(groups, key=lambda c: _column_order(c, groups[c]))
    order = [run.name for run in runs]
    keys = sorted(rows, key=lambda key: (order.index(key[0]), _INIT_ORDER.get(key[1], 3)))
    table = [{name: rows[key].get(name) for name in (*BASE_COLUMNS, *columns)} for key in keys]
    trained = {group for group, entries in found.items() if any(e[2] != RANDOM for e in entries)}
    for run in runs:
        if not run.evaluations:
            notes.append(
                f"{run.name} has no recorded evaluation: run `mimkit knn {run.name}` (and "
                f"`mimkit eval linear {run.name}`, `mimkit eval label-efficiency {run.name}`)"
            )
            continue
        recorded = {group_name(r) for r in run.evaluations if r["encoder"] != RANDOM}
        for group in sorted(trained - recorded):
            variant = found[group][0][3]["variant"]
            notes.append(f"{run.name}: no {group} recorded: run `{_command((group, variant), run.name)}`")
    return Comparison(columns, table, marked, notes, groups)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _header(column: str, comparison: Comparison) -> str:
    return f"{column} *" if column in comparison.marked else column


def markdown(comparison: Comparison) -> str:
    """The table in markdown (scores: top-1 %, 2 decimals), then one line per marked column group."""
    names = [*BASE_COLUMNS, *comparison.columns]
    lines = [
        "| " + " | ".join(_header(c, comparison) for c in names) + " |",
        "|" + "---|" * len(BASE_COLUMNS) + "---:|" * len(comparison.columns),
    ]
    for row in comparison.rows:
        cells = [_cell(row[c]) for c in BASE_COLUMNS]
        cells += ["-" if row[c] is None else f"{row[c]:.2f}" for c in comparison.columns]
        lines.append("| " + " | ".join(cells) + " |")
    for what in dict.fromkeys(comparison.marked.values()):
        lines.append(f"\n\\* measured differently, compared anyway: {what}")
    return "\n".join(lines) + "\n"


def write_comparison(
    comparison: Comparison, runs: Sequence[RunRecords], out_dir: str | os.PathLike
) -> dict[str, Path]:
    """``comparison.md``, ``comparison.csv`` (the same rows, full precision; marked headers end in
    `` *``) and the plots there are data for: ``losses.png`` (pretraining loss against steps),
    ``frozen.png`` (kNN and linear-probe bars), ``label_efficiency.png`` (fine-tuning top-1 against the
    label fraction, for two fractions or more). Returns ``{name: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "comparison.md", "csv": out / "comparison.csv"}
    paths["md"].write_text(markdown(comparison) + "".join(f"\n{note}\n" for note in comparison.notes))
    names = [*BASE_COLUMNS, *comparison.columns]
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([_header(c, comparison) for c in names])
        for row in comparison.rows:
            values = [row[c] for c in names]
            writer.writerow(["" if v is None else round(v, 4) if isinstance(v, float) else v for v in values])
    if any(run.losses for run in runs):
        paths["losses"] = _plot_losses(runs, out / "losses.png")
    frozen = [c for c in comparison.columns if not comparison.groups[c][0].startswith("fine-tune")]
    if frozen:
        paths["frozen"] = _plot_bars(comparison, frozen, out / "frozen.png")
    curve = [c for c in comparison.columns if comparison.groups[c][1].get("label_fraction") is not None
             and comparison.groups[c][1].get("train_blocks") is None]  # fmt: skip
    if len(curve) >= 2:
        paths["label_efficiency"] = _plot_curves(comparison, curve, out / "label_efficiency.png")
    return paths


def _figure(width: float = 6.0, height: float = 3.8):
    from matplotlib.figure import Figure  # imported when drawn: the table needs no plotting library

    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot()


def _save(fig, ax, path: Path) -> Path:
    """The legend beside the axes (it covered bars inside them), then the PNG."""
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _plot_losses(runs: Sequence[RunRecords], path: Path) -> Path:
    fig, ax = _figure()
    for run in runs:
        if run.losses:
            steps, losses = zip(*run.losses, strict=True)
            ax.plot(steps, losses, label=f"{run.name} ({run.method or '?'})")
    ax.set_xlabel("step")
    ax.set_ylabel("pretraining loss (each method's own)")
    ax.grid(alpha=0.3)
    return _save(fig, ax, path)


def _plot_bars(comparison: Comparison, columns: list[str], path: Path) -> Path:
    rows = [r for r in comparison.rows if any(r[c] is not None for c in columns)]
    fig, ax = _figure(max(6.0, 1.2 * len(columns) * max(1, len(rows)) / 2), 4.0)
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(columns))]
        ax.bar(xs, [math.nan if row[c] is None else row[c] for c in columns], width, label=row["run"])
    ax.set_xticks(range(len(columns)), [_header(c, comparison) for c in columns], rotation=20, ha="right")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, ax, path)


def _plot_curves(comparison: Comparison, columns: list[str], path: Path) -> Path:
    fig, ax = _figure()
    fractions = {c: comparison.groups[c][1]["label_fraction"] for c in columns}
    for row in comparison.rows:
        points = sorted((100 * fractions[c], row[c]) for c in columns if row[c] is not None)
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=row["run"])
    ticks = sorted(set(fractions.values()))
    ax.set_xscale("log")
    ax.set_xticks([100 * f for f in ticks], [_pct(f) for f in ticks])
    ax.set_xlabel("labels used")
    ax.set_ylabel("fine-tuning test top-1 (%)")
    ax.grid(alpha=0.3)
    return _save(fig, ax, path)
