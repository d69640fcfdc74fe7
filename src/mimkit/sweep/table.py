"""The sweep's own table: one row per trial, its scores as the mean over seeds with their spread, the best
setting named (``sweep.md``, ``sweep.csv`` in the sweep directory).

Small on purpose: ``mimkit compare`` is the general table of any runs; this one only reads the store.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from mimkit.sweep.space import SweepSpec

STATES = {TrialState.COMPLETE: "done", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


def _scores(spec: SweepSpec) -> list[tuple[str, str]]:
    """``(column, name in a run's result)``: kNN, linear, then each fine-tuning fraction."""
    cols = [(f"kNN k={spec.eval.k}", "knn"), ("linear", "linear")]
    return cols + [(f"fine-tune {100 * f:g}%", f"finetune:{f}") for f in spec.eval.finetune]


def _get(run: dict[str, Any], name: str) -> float | None:
    if name.startswith("finetune:"):
        return (run.get("finetune") or {}).get(name.split(":", 1)[1])
    return run.get(name)


def _spread(values: list[float]) -> tuple[float | None, float | None]:
    """Mean, and the sample standard deviation over seeds (None with one)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def rows(trials: list[FrozenTrial], spec: SweepSpec) -> list[dict[str, Any]]:
    """One dict per trial that has ended: its values, state, seeds, ``<score>`` / ``<score> sd`` and
    ``best`` (the complete trial with the highest objective)."""
    table = []
    for t in sorted(trials, key=lambda t: t.number):
        if t.state not in STATES:
            continue
        runs = [r for r in t.user_attrs.get("runs", []) if r.get("state") == "complete"]
        row: dict[str, Any] = {"trial": t.number, **t.params, "state": STATES[t.state], "seeds": len(runs)}
        for column, name in _scores(spec):
            row[column], row[f"{column} sd"] = _spread([v for r in runs if (v := _get(r, name)) is not None])
        steps = [r["steps"] for r in runs if r.get("steps") is not None]
        row["steps"] = round(statistics.fmean(steps)) if steps else None
        row["objective"] = t.value
        row["message"] = t.user_attrs.get("message", "")
        table.append(row)
    done = [r for r in table if r["objective"] is not None]
    if done:
        max(done, key=lambda r: r["objective"])["best"] = True
    return table


def _cell(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")


def markdown(table: list[dict[str, Any]], spec: SweepSpec) -> str:
    """The table as markdown, then a line naming the best setting."""
    keys = [a.key for a in spec.axes]
    scores = [c for c, _ in _scores(spec)]
    head = ["trial", *keys, "state", "seeds", *scores, "steps"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    for r in table:
        values = [_fmt(r.get(k)) for k in keys]
        cells = [_cell(r[c], r[f"{c} sd"]) for c in scores]
        mark = "**best**" if r.get("best") else r["state"]
        lines.append(
            "| "
            + " | ".join([str(r["trial"]), *values, mark, str(r["seeds"]), *cells, _fmt(r["steps"])])
            + " |"
        )
    best = next((r for r in table if r.get("best")), None)
    if best is None:
        return "\n".join(lines + ["", "no trial has finished yet"]) + "\n"
    column = {"knn": scores[0], "linear": scores[1], "finetune": scores[-1]}[spec.eval.objective]
    setting = " ".join(f"{k}={_fmt(best.get(k))}" for k in keys) or "the recipe"
    seeds = f"over {best['seeds']} seeds" if best["seeds"] > 1 else "one seed"
    lines += ["", f"best: {setting}: {column} {_cell(best[column], best[f'{column} sd'])} ({seeds})"]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def write_tables(
    trials: list[FrozenTrial], spec: SweepSpec, out: Path
) -> tuple[list[dict[str, Any]], tuple[Path, Path]]:
    """Write ``sweep.md`` and ``sweep.csv`` (one row per ended trial) into ``out``."""
    table = rows(trials, spec)
    md, sheet = out / "sweep.md", out / "sweep.csv"
    md.write_text(markdown(table, spec))
    fields = list(dict.fromkeys(k for r in table for k in r)) or ["trial"]
    with open(sheet, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table)
    return table, (md, sheet)
