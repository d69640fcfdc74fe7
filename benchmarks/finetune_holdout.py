"""Choose a fine-tuning setting on held-out training images, never on the test set.

Holds out ``--holdout`` images per class of the training split (seed ``--seed``), fine-tunes the checkpoint's
encoder on the rest with 1%, 10% and 100% of those labels (the quality report's schedules by default), once
per variant, and scores each run on the held-out images. A variant is a set of fine-tuning overrides on the
report's recipe (``FT_RECIPE``). This is how the report's crop scale was chosen:

    python benchmarks/finetune_holdout.py runs/quality_fmnist/mimkit --out runs/holdout_crop \\
        --variant 'crop_scale=[0.35, 1.0]' --variant 'crop_scale=[1.0, 1.0]' layer_decay=0.9

Prints one line per variant and writes ``holdout.md`` (a table: variant x fraction) under ``--out``; each
run lives in its own directory there and resumes like any fine-tuning run.

``--random-init`` scores a randomly initialised encoder of the same architecture instead (the report's
random-init rows: the recipe without layer-wise lr decay), to choose those rows' settings the same way:

    python benchmarks/finetune_holdout.py runs/quality_fmnist/mimkit --out runs/holdout_scratch \\
        --random-init --fractions 0.1 0.01 --variant train.blr=2e-3 --variant train.blr=5e-4
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

from mimkit.data import subsets
from mimkit.data.subsets import subset_dataset
from mimkit.eval.label_efficiency import LabelEfficiencyOptions, run_label_efficiency
from mimkit.eval_sources import EncoderChoice, load_encoder, load_splits

_spec = importlib.util.spec_from_file_location(
    "quality_fashion_mnist", Path(__file__).with_name("quality_fashion_mnist.py")
)
quality = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quality)

# The quality report's fine-tuning epochs on 2 CPU cores (30 minutes of steps for 100% of the labels).
EPOCHS = {0.01: 55, 0.1: 16, 1.0: 5}


def holdout_split(labels: torch.Tensor, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(training indices, held-out indices)``, both sorted: ``per_class`` images of each class held out
    (:func:`~mimkit.data.subsets.holdout_split`'s draw), at least one left to train on."""
    counts = torch.bincount(labels)
    smallest = int(counts[counts > 0].min())
    if not 1 <= per_class < smallest:
        raise ValueError(
            f"--holdout must be at least 1 and leave training images in every class "
            f"(smallest class: {smallest} images), got {per_class}"
        )
    return subsets.holdout_split(labels, None, seed, count=per_class)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a pretraining run directory or checkpoint")
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--variant",
        action="append",
        nargs="+",
        required=True,
        metavar="KEY=VALUE",
        help="the fine-tuning overrides of one variant (repeat --variant for each variant)",
    )
    parser.add_argument("--holdout", type=int, default=500, help="held-out images per class")
    parser.add_argument("--seed", type=int, default=123, help="seed of the held-out draw")
    parser.add_argument(
        "--fractions", type=float, nargs="+", choices=sorted(EPOCHS), default=[1.0, 0.1, 0.01]
    )
    parser.add_argument(
        "--epochs-scale", type=float, default=1.0, help="multiply every schedule (smoke runs)"
    )
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="fine-tune a randomly initialised encoder of the checkpoint's architecture instead, with the "
        "report's from-scratch recipe (no layer-wise lr decay) under each variant: how to choose the "
        "random-init rows' settings (the quality benchmark's --scratch-set)",
    )
    parser.add_argument("--train-limit", type=int, help="first N training images only (smoke runs)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    variants = args.variant
    try:
        recipes = [quality.finetune_recipe(v, args.device) for v in variants]
    except ValueError as err:
        parser.error(f"--variant: {err}")
    try:
        loaded = load_encoder(EncoderChoice(args.checkpoint))
        train = load_splits(loaded.data, args.train_limit, None, "fine-tuning")[0].dataset
        if loaded.encoder is None:
            raise ValueError(f"{args.checkpoint} holds no encoder to fine-tune")
        keep, held = holdout_split(train.labels, args.holdout, args.seed)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rest, heldout = subset_dataset(train, keep), subset_dataset(train, held)
    epochs = {f: max(1, round(EPOCHS[f] * args.epochs_scale)) for f in args.fractions}
    out = Path(args.out)
    encoder = f"checkpoint {args.checkpoint}"
    if args.random_init:
        encoder = f"a random init of the encoder of {args.checkpoint} (recipe without layer-wise lr decay)"
    lines = [
        f"Held out: {len(held)} training images ({args.holdout} per class, seed {args.seed}); fine-tuned on "
        f"the other {len(keep)}; epochs per fraction {epochs}; {encoder}.",
        "",
        "| variant | " + " | ".join(f"{f:g} of the labels" for f in args.fractions) + " |",
        "|---|" + "---:|" * len(args.fractions),
    ]
    for index, (variant, cfg) in enumerate(zip(variants, recipes, strict=True)):
        # --random-init: that row alone, with the recipe without layer-wise lr decay
        options = LabelEfficiencyOptions(
            fractions=args.fractions, recipe=cfg, epochs=epochs, include_random=args.random_init
        )
        start = None if args.random_init else loaded.encoder
        rows = run_label_efficiency(
            loaded.encoder_cfg, start, rest, heldout, out / f"variant{index}", options=options
        )
        top1 = {r["fraction"]: r["test_top1"] for r in rows}
        name = " ".join(variant) or "(the report's recipe)"
        print(f"held-out top-1, {name}: {json.dumps(top1)}")
        lines.append(f"| {name} | " + " | ".join(f"{top1[f]:.2f}" for f in args.fractions) + " |")
    (out / "holdout.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
