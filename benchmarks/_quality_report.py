"""The quality benchmark's targets and report: results.md, results.csv, curve.csv and curve.png.

Used by benchmarks/quality_fashion_mnist.py, which runs the pretraining and the evaluations and hands this
module the rows (one per encoder: frozen kNN / linear probe per pooling, fine-tuning per label fraction),
the run's metadata and the online-kNN curves.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from mimkit.eval.label_efficiency import CHANCE_MARK, pct
from mimkit.eval.linear import holdout_summary

FRACTIONS = (0.01, 0.1, 1.0)
METHOD_NAMES = {"mae": "MAE", "simmim": "SimMIM", "sit": "SiT", "gmml": "GMML"}
# Targets from the issues, per method (top-1 %, the gain in points); a method without an entry has none and
# its report shows the same lines as information. MAE is also checked against the peer, when it runs.
TARGETS: dict[str, dict[str, float]] = {
    "mae": {"knn": 75.0, "linear": 82.0, "ft_100": 92.0, "ft_1_gain": 5.0},
    "sit": {"knn": 85.0, "linear": 87.0},
}


def _ft_cell(row: dict[str, Any], fraction: float) -> str:
    """A fine-tuning cell of the table: the top-1, marked when the run ended at chance level."""
    mark = f" {CHANCE_MARK}" if fraction in row.get("ft_at_chance", []) else ""
    return _fmt(row["finetune"].get(fraction)) + mark


# ----------------------------------------------------------------------------- report


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def target_lines(
    method: str, rows: list[dict[str, Any]], pool: str, subset: dict[str, Any] | None = None
) -> list[str]:
    """The report's target lines: ``TARGETS[method]`` checked, every other number shown as information.

    Args:
        method: the config's method name (``"mae"``, ``"simmim"``, ``"sit"``, ``"gmml"``).
        rows: the report rows, the method's first; ``"random init"``, ``"raw pixels"`` and a peer
            (name starting with ``"transformers"``) are found by name when present.
        pool: the table's pooling.
        subset: the ``--subset-fraction`` record (``images`` is the subset's size), or None.
    """
    label = METHOD_NAMES.get(method, method)
    targets = TARGETS.get(method, {})
    mine = rows[0]
    frozen = mine["frozen"][pool]
    by_name = {r["name"]: r for r in rows}
    rand = by_name.get("random init", {"finetune": {}})["finetune"]
    lines = []
    if not targets:
        lines.append(f"No numeric targets for {label} in the issues: the lines below are information.")
    checks = [
        ("knn", f"{label} kNN (k=20)", "%", frozen["knn"].get(20)),
        ("linear", f"{label} linear probe", "%", frozen["linear"]["test_top1"]),
        ("ft_100", "fine-tuning, 100% of the labels", "%", mine["finetune"].get(1.0)),
        (
            "ft_1_gain",
            "fine-tuning, 1% of the labels, pretrained - random init",
            " points",
            _diff(mine["finetune"].get(0.01), rand.get(0.01)),
        ),
    ]
    # a gain over a random-init run that collapsed is no gain the encoder earned: say so on its line
    caveat = {"ft_1_gain": 0.01 in by_name.get("random init", {}).get("ft_at_chance", [])}
    for key, what, unit, value in checks:
        if key in targets:
            met = value is not None and value >= targets[key]
            line = f"- {what} >= {targets[key]:g}{unit}: {_fmt(value)} -> {'met' if met else 'not met'}"
        else:
            line = f"- {what}: {_fmt(value)} (no target)"
        lines.append(line + (f" (random init {CHANCE_MARK}: overstated)" if caveat.get(key) else ""))
    if "raw pixels" in by_name:
        pixels = by_name["raw pixels"]["frozen"]["pixels"]["knn"].get(20)
        ahead = frozen["knn"].get(20) is not None and pixels is not None and frozen["knn"][20] > pixels
        bar = " (raw-pixel kNN is the real bar on Fashion-MNIST)" if method == "sit" else ""
        lines.append(
            f"- {label} kNN (k=20) above raw pixels' {_fmt(pixels)}{bar}: {'yes' if ahead else 'no'}"
        )
    peer = next((r for r in rows if r["name"].startswith("transformers")), None)
    if peer is not None:
        theirs = peer["frozen"][pool]
        ahead = (
            frozen["knn"].get(20, 0) > theirs["knn"].get(20, 0)
            and frozen["linear"]["test_top1"] > theirs["linear"]["test_top1"]
        )
        lines.append(f"- mimkit ahead of the peer on kNN and linear probe: {'yes' if ahead else 'no'}")
    elif method == "mae":
        lines.append("- mimkit ahead of the peer: not measured (no peer row)")
    if subset is not None:
        ours, theirs = mine["finetune"].get(1.0), rand.get(1.0)
        gain = _diff(ours, theirs)
        verdict = "-" if gain is None else ("pretraining ahead" if gain > 0 else "pretraining not ahead")
        lines.append(
            f"- small data: fine-tuning on 100% of the {subset['images']:,}-image subset, pretrained "
            f"{_fmt(ours)} vs random init {_fmt(theirs)}: "
            f"{'-' if gain is None else f'{gain:+.2f}'} points -> {verdict}"
        )
    return lines


def write_report(
    out: Path, rows: list[dict[str, Any]], meta: dict[str, Any], curves: dict[str, list]
) -> None:
    pool = meta["pools"][0]
    with open(out / "results.csv", "w", newline="") as f:
        fields = ["encoder", "pool", "knn_k20", "linear", "ft_1pct", "ft_10pct", "ft_100pct"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            for p, frozen in r["frozen"].items():
                writer.writerow(
                    {
                        "encoder": r["name"],
                        "pool": p,
                        "knn_k20": frozen["knn"].get(20),
                        "linear": frozen["linear"]["test_top1"],
                        **{f"ft_{pct(fr)}pct": r["finetune"].get(fr) for fr in FRACTIONS},
                    }
                )
    with open(out / "curve.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["encoder", "epoch", "train_seconds", "knn_top1"])
        for name, points in curves.items():
            for p in points:
                writer.writerow([name, p["epoch"], f"{p['train_seconds']:.1f}", f"{p['knn_top1']:.2f}"])
    _plot_curve(out / "curve.png", curves)

    lines = [
        f"# Fashion-MNIST quality benchmark ({meta['date']})",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine']}; torch {meta['torch']}; transformers {meta.get('transformers', '-')}.",
        "",
        "## Results (test set, top-1 %)",
        "",
        f"kNN: k=20, cosine, exp(sim/0.07) votes; linear probe: BatchNorm + Linear, LARS, blr chosen on "
        f"10% of the training set; features: `{pool}` pooling. Fine-tuning: the reference classifier "
        "(ViT: mean of the patch tokens + fc_norm + head, as MAE; Swin: final norm + mean + head, as "
        "SimMIM); the recipe is in the notes.",
        "",
        f"Training data: {meta['train_data']}; the fine-tuning fractions are of these. "
        f"Test data: {meta['test_images']:,} images.",
        "",
        "| encoder | kNN | linear probe | fine-tune 1% | fine-tune 10% | fine-tune 100% |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        frozen = r["frozen"].get(pool) or r["frozen"].get("pixels")
        lines.append(
            f"| {r['name']} | {_fmt(frozen['knn'].get(20))} | {_fmt(frozen['linear']['test_top1'])} | "
            + " | ".join(_ft_cell(r, f) for f in FRACTIONS)
            + " |"
        )
    lines += ["", "## Targets", ""] + target_lines(meta["method"], rows, pool, meta.get("subset"))

    lines += ["", "## Budgets used", ""]
    for name, b in meta["pretrain"].items():
        lines.append(
            f"- {name} pretraining: {b['train_seconds'] / 60:.1f} min of training "
            f"(budget {b['minutes']:g} min), {b['steps']} of {b['planned_steps']} planned steps "
            f"({b['epochs']:.2f} epochs), {b['images_per_s']:.0f} images/s"
            f"{'; stopped early by the clock' if b['stopped_early'] else ''}"
        )
    ft = meta.get("finetune")
    if ft:
        lines.append(
            f"- fine-tuning: {meta['finetune_minutes']:g} min of steps for 100% of the labels "
            f"({ft['seconds_per_step']:.3f} s/step calibrated), 1/3 for 10%, 1/10 for 1%; epochs "
            + ", ".join(f"{pct(f)}%: {e}" for f, e in ft["epochs"].items())
        )
    for name, seconds in meta["eval_seconds"].items():
        lines.append(f"- evaluation time, {name}: {seconds / 60:.1f} min")

    lines += ["", "## Every number", ""]
    for r in rows:
        for p, fr in r["frozen"].items():
            knn = ", ".join(f"k={k}: {v:.2f}" for k, v in fr["knn"].items())
            lin = fr["linear"]
            held = holdout_summary(lin)
            lines.append(
                f"- {r['name']} ({p}): kNN {knn}; linear {lin['test_top1']:.2f} "
                f"(blr {lin['best_blr']:g}; held-out top-1 by blr: {held})"
            )
    lines += [
        "",
        "## kNN (k=20) against pretraining time",
        "",
        "![curve](curve.png)",
        "",
        "| encoder | epoch | training minutes | kNN top-1 |",
        "|---|---:|---:|---:|",
    ]
    for name, points in curves.items():
        for p in points:
            lines.append(f"| {name} | {p['epoch']} | {p['train_seconds'] / 60:.2f} | {p['knn_top1']:.2f} |")
    lines += ["", "## Notes", ""] + [f"- {n}" for n in meta["notes"]]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def _plot_curve(path: Path, curves: dict[str, list]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.5))
    ax = fig.add_subplot()
    for name, points in curves.items():
        if points:
            ax.plot(
                [p["train_seconds"] / 60 for p in points],
                [p["knn_top1"] for p in points],
                marker="o",
                label=name,
            )
    ax.set_xlabel("pretraining time (min)")
    ax.set_ylabel("online kNN top-1 (%)")
    ax.grid(alpha=0.3)
    if any(curves.values()):  # no curve (e.g. no online kNN points): no legend to draw
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
