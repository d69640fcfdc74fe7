"""``mimkit eval knn|linear|finetune|label-efficiency|tsne``: each protocol is a plain typed function here.

Every protocol takes any encoder checkpoint: a mimkit run directory or checkpoint (the method is rebuilt
and its encoder taken), or an encoder-only file (reference MAE, timm-style ViT, a mimkit ``.safetensors``
export) with ``--encoder NAME`` to build the model it fits; ``--encoder NAME`` without a checkpoint is a
randomly initialised encoder. The frozen protocols (kNN, linear probe, t-SNE) share one feature pass:
features are cached per checkpoint, data, split, pooling and precision (:mod:`mimkit.eval.cache`); the
feature pass runs in the precision the device runs natively (``--precision auto``: bf16 where the CPU or GPU
has native bf16, else fp32 / fp16) unless ``--precision`` says otherwise.

    mimkit eval knn runs/mae --k 10 20 100 --compare-random
    mimkit eval linear runs/mae --pool token --set epochs=90 "blrs=[0.1, 0.3, 1.0]"
    mimkit eval finetune runs/mae --train-blocks 4 --set train.epochs=50 layer_decay=0.75
    mimkit eval label-efficiency runs/mae --fractions 0.01 0.1 1 --epochs 200 60 30
    mimkit eval tsne runs/mae --out tsne.png
    mimkit eval knn runs/sit --teacher     # SiT's momentum teacher instead of the student

This module is the command line only: argparse parents build the protocols' shared inputs
(:class:`~mimkit.eval_sources.EncoderChoice`, :class:`~mimkit.eval_sources.DataChoice`,
:class:`~mimkit.eval_sources.FeatureOptions`) once, and :mod:`mimkit.eval_protocols` does the work.
``add_eval_parsers(subparsers)`` adds the ``eval`` parser to the main CLI; ``run_eval(args)`` runs it.
"""

from __future__ import annotations

import argparse
import inspect
import logging
from collections.abc import Callable
from typing import Any

from mimkit.data.subsets import DEFAULT_FRACTIONS
from mimkit.engine.dist import is_main_process
from mimkit.engine.precision import PRECISIONS
from mimkit.engine.trackers import for_run
from mimkit.eval.linear import holdout_summary
from mimkit.eval.records import chance_note, chance_reason, within_chance
from mimkit.eval.selection import summary
from mimkit.eval.tsne import TsneOptions
from mimkit.eval_protocols import (
    embed,
    evaluate_finetune,
    evaluate_knn,
    evaluate_label_efficiency,
    evaluate_linear,
    evaluate_tsne,
    predict,
)
from mimkit.eval_sources import POOLS, DataChoice, EncoderChoice, FeatureOptions

# Recipe settings (key.sub=value) come after --set: trailing positionals cannot follow options in argparse.
_SET: dict[str, Any] = dict(dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")


def _encoder_parent() -> argparse.ArgumentParser:
    """Arguments of :class:`EncoderChoice`."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("checkpoint", nargs="?", help="run directory, mimkit checkpoint, or encoder file")
    p.add_argument(
        "--encoder", dest="encoder_name", help="encoder name, for an encoder-only file (or none: random)"
    )
    p.add_argument(
        "--teacher",
        action="store_true",
        help="evaluate the run's momentum teacher encoder instead of the student (SiT)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random-init encoders and label subsets")
    p.add_argument(
        "--adapt-channels",
        action="store_true",
        help="load an encoder file trained on another channel count (e.g. RGB weights on 13-band data), "
        "adapting its patch embedding",
    )
    return p


def _data_parent() -> argparse.ArgumentParser:
    """Arguments of :class:`DataChoice`."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--source", help="data source (default: the run's)")
    p.add_argument("--data-root", dest="root", help="data root (default: the run's)")
    p.add_argument("--train-limit", type=int, help="use only the first N training images")
    p.add_argument("--test-limit", type=int, help="use only the first N test images")
    return p


def _features_parent() -> argparse.ArgumentParser:
    """Arguments of :class:`FeatureOptions` (the frozen protocols)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--pool", choices=POOLS, default="token", help="class token or mean of the patch tokens")
    p.add_argument("--batch-size", type=int, default=512, help="feature-extraction batch size")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="of the feature pass (auto: bf16 where the device has it natively, else fp32)",
    )
    p.add_argument("--cache-dir", help="feature cache (default: <run>/eval/feature_cache)")
    p.add_argument(
        "--no-cache", dest="use_cache", action="store_false", help="do not read or write the cache"
    )
    return p


def _pick(target: Callable, args: argparse.Namespace, *inputs: Any, **given: Any) -> Any:
    """``target(*inputs, **given, **the other parameters the parsed arguments name)``: an input object from
    its parent parser's arguments, or a protocol called with its options (each dest is a parameter's name)."""
    names = [n for n in list(inspect.signature(target).parameters)[len(inputs) :] if n not in given]
    return target(*inputs, **given, **{name: getattr(args, name) for name in names if hasattr(args, name)})


def add_embed_parser(subparsers: argparse._SubParsersAction) -> None:
    """``mimkit embed RUN --out emb.npy``: one embedding per image, with a CSV index."""
    p = subparsers.add_parser(
        "embed",
        help="one embedding per image (.npy) with its path and label (.csv), resumable",
        parents=[_encoder_parent(), _data_parent(), _features_parent()],
    )
    p.add_argument("--out", "-o", required=True, help="the .npy file; the index goes next to it as .csv")
    p.add_argument("--split", choices=["train", "test"], default="train", help="which split (folders: train)")
    p.add_argument("--workers", dest="num_workers", type=int, default=0, help="processes decoding images")
    p.set_defaults(protocol="embed")


def say(*args: object) -> None:
    """``print`` in the main process only (under torchrun every process runs the command)."""
    if is_main_process():
        print(*args)


def run_embed(args: argparse.Namespace) -> int:
    """Run ``mimkit embed``; prints where the embeddings went."""
    features = _pick(FeatureOptions, args)
    r = _pick(embed, args, _pick(EncoderChoice, args), args.out, _pick(DataChoice, args), features)
    skipped = f", {r['skipped']} unreadable skipped" if r["skipped"] else ""
    say(
        f"wrote {r['rows']} embeddings of dimension {r['dim']} ({features.pool} features) to {r['path']} "
        f"and their index to {r['index']} in {r['seconds']:.1f} s{skipped}"
    )
    return 0


def add_predict_parser(subparsers: argparse._SubParsersAction) -> None:
    """``mimkit predict RUN DIR --out predictions.csv``: a fine-tuned classifier on a folder of images."""
    p = subparsers.add_parser(
        "predict",
        help="top-k classes with probabilities for every image of a folder (.csv), by a fine-tuned "
        "classifier; resumable",
    )
    p.add_argument("run", help="fine-tuning run directory, or a pretraining run (its eval/finetune)")
    p.add_argument("folder", help="a folder of images, read recursively (labels, if any, are ignored)")
    p.add_argument("--out", "-o", default="predictions.csv", help="the CSV (default predictions.csv)")
    p.add_argument("--topk", type=int, default=5, help="classes per image (default 5, at most the classes)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="of the forward pass (default fp32: the precision the held-out score was measured in)",
    )
    p.add_argument("--workers", dest="num_workers", type=int, default=0, help="processes decoding images")
    p.add_argument(
        "--convert-channels",
        action="store_true",
        help="convert grey / RGB / RGBA images to the classifier's channel count instead of refusing them",
    )


def run_predict(args: argparse.Namespace) -> int:
    """Run ``mimkit predict``; prints where the predictions went."""
    features = FeatureOptions(batch_size=args.batch_size, device=args.device, precision=args.precision)
    r = _pick(predict, args, args.run, args.folder, args.out, features=features)
    skipped = f"; {r['skipped']} unreadable file(s) skipped" if r["skipped"] else ""
    say(
        f"wrote the top-{r['topk']} classes of {r['rows']} images to {r['path']} "
        f"(classifier {r['classifier']}) in {r['seconds']:.1f} s{skipped}"
    )
    return 0


KNN_HELP = "weighted kNN (cosine, exp(sim/0.07) votes) for several k, one feature pass"


def add_knn_parser(subparsers: argparse._SubParsersAction, name: str, help: str = KNN_HELP) -> None:
    """The kNN protocol's parser; ``mimkit knn`` and ``mimkit eval knn`` are the same command."""
    p = subparsers.add_parser(
        name, help=help, parents=[_encoder_parent(), _data_parent(), _features_parent()]
    )
    p.add_argument(
        "--k", dest="ks", type=int, nargs="+", help="k values (default 10 20 100 200, those the bank holds)"
    )
    p.add_argument("--compare-random", action="store_true", help="also score the encoder at random init")
    p.set_defaults(protocol="knn")


def add_eval_parsers(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``eval <protocol>`` to the main parser's subcommands; returns the ``eval`` parser."""
    parser = subparsers.add_parser(
        "eval", help="evaluate an encoder: knn, linear, finetune, label-efficiency, tsne"
    )
    sub = parser.add_subparsers(dest="protocol", required=True)
    frozen = [_encoder_parent(), _data_parent(), _features_parent()]
    trained = [_encoder_parent(), _data_parent()]

    add_knn_parser(sub, "knn")

    p = sub.add_parser(
        "linear",
        help="linear probe: BatchNorm + Linear, LARS, blr chosen on held-out train data",
        parents=frozen,
    )
    p.add_argument("--out", dest="out_dir", help="run directory (default: <run>/eval/linear)")
    p.add_argument("--compare-random", action="store_true", help="also probe the encoder at random init")
    p.add_argument("--set", **_SET, help='linear-probe settings, e.g. --set epochs=90 "blrs=[0.1, 1.0]"')

    p = sub.add_parser(
        "finetune",
        help="full or partial fine-tuning (layer decay, MixUp/CutMix, RandAugment)",
        parents=trained,
    )
    p.add_argument("--out", dest="out_dir", help="run directory (default: <run>/eval/finetune)")
    p.add_argument(
        "--train-blocks", type=int, help="partial fine-tuning: train only the last K blocks (0: head)"
    )
    p.add_argument("--label-fraction", type=float, default=1.0, help="fraction of the labels, in (0, 1]")
    p.add_argument("--random-init", action="store_true", help="start from a random encoder (the baseline)")
    p.add_argument("--set", **_SET, help="fine-tuning settings, e.g. --set train.epochs=50 layer_decay=0.65")

    p = sub.add_parser(
        "label-efficiency",
        help="fine-tune {pretrained, random} x {1%%, 10%%, 100%%} of the labels",
        parents=trained,
    )
    p.add_argument("--out", dest="out_dir", help="output directory (default: <run>/eval/label_efficiency)")
    p.add_argument("--fractions", type=float, nargs="+", default=list(DEFAULT_FRACTIONS))
    p.add_argument(
        "--epochs", type=int, nargs="+", help="epochs per fraction (default: train.epochs for all)"
    )
    p.add_argument(
        "--no-random", dest="include_random", action="store_false", help="skip the random-init row"
    )
    p.add_argument("--set", **_SET, help="fine-tuning settings, e.g. --set train.epochs=50 mixup=0")

    p = sub.add_parser(
        "tsne",
        help="PNG of a t-SNE of test-set features coloured by class (needs scikit-learn)",
        parents=frozen,
    )
    p.add_argument("--out", "-o", help="PNG path (default: <run>/eval/tsne/tsne_<init>_<pool>.png)")
    p.add_argument("--max-points", type=int, default=2000, help="per-class sample of about this many points")
    p.add_argument("--perplexity", type=float, default=30.0)
    p.add_argument("--max-iter", type=int, default=1000, help="t-SNE optimisation steps (>= 250)")
    p.add_argument("--random-init", action="store_true", help="plot the encoder at random init instead")
    return parser


def run_eval(args: argparse.Namespace) -> int:
    """Run the protocol parsed by :func:`add_eval_parsers` (or ``mimkit knn``); prints the results.

    Errors (ValueError, FileNotFoundError, ImportError) propagate to the caller, which prints them
    in one line.
    """
    encoder, data = _pick(EncoderChoice, args), _pick(DataChoice, args)
    features = _pick(FeatureOptions, args) if hasattr(args, "pool") else None
    tracked: dict[str, float] = {}  # what the run's experiment trackers get (train.mlflow / train.wandb)
    files: list[str] = []
    if args.protocol == "knn":
        results = _pick(evaluate_knn, args, encoder, data, features)
        for name, r in results.items():
            accs, chance = r["knn"], r["chance"]
            flagged = [k for k, acc in accs.items() if within_chance(acc, chance)]
            scores = "  ".join(
                f"k={k}: {acc:.2f}%" + (" (within chance)" if k in flagged else "") for k, acc in accs.items()
            )
            why = f"; within chance: {chance_reason(chance)}" if flagged else ""
            say(f"kNN top-1 ({features.pool} features) {name:>12}: {scores}{why}")
            tracked |= {f"eval/knn_k{k}_{features.pool}_{name}": acc for k, acc in accs.items()}
    elif args.protocol == "linear":
        results = _pick(evaluate_linear, args, encoder, data, features)
        for name, r in results.items():
            held = holdout_summary(r, "%")
            say(
                f"linear probe ({features.pool} features) {name:>12}: test top-1 {r['test_top1']:.2f}%"
                f"{chance_note(r['test_top1'], r['chance'])}  "
                f"(blr {r['best_blr']:g} chosen on {r['holdout_images']} held-out training images: {held}; "
                f"{r['grid']['stopped']})"
            )
            tracked[f"eval/linear_{features.pool}_{name}"] = r["test_top1"]
    elif args.protocol == "finetune":
        r = _pick(evaluate_finetune, args, encoder, data)
        what = "full" if args.train_blocks is None else f"last {args.train_blocks} block(s)"
        say(
            f"fine-tune ({what}, {r['init']}, {100 * r['label_fraction']:g}% of the labels = "
            f"{r['train_images']} images, {r['steps']} steps): {summary(r)}"
        )
        tracked[f"eval/finetune_{r['init']}_{100 * r['label_fraction']:g}pct"] = r["test_top1"]
    elif args.protocol == "label-efficiency":
        rows = _pick(evaluate_label_efficiency, args, encoder, data)
        for r in rows:
            say(
                f"{r['init']:>12}  {100 * r['fraction']:>6g}% labels ({r['labels']} images): "
                f"test top-1 {r['test_top1']:.2f}%" + (" (within chance)" if r.get("within_chance") else "")
            )
            tracked[f"eval/label_efficiency_{r['init']}_{100 * r['fraction']:g}pct"] = r["test_top1"]
    else:  # "tsne": argparse lets only the protocols above through
        options = _pick(TsneOptions, args)  # max points, perplexity, steps; the seed is --seed
        path = _pick(evaluate_tsne, args, encoder, data, features, options=options)
        say(f"wrote {path}")
        files.append(str(path))
    track_results(encoder.checkpoint, tracked, files)
    return 0


def track_results(checkpoint: str | None, metrics: dict[str, float], files: list[str]) -> None:
    """Add a command's results to the experiment trackers its run was trained with, if any."""
    if checkpoint is None or not is_main_process():
        return
    try:
        trackers = for_run(checkpoint)
    except ImportError as err:  # the results are printed; the tracker is an extra
        logging.getLogger("mimkit").warning("results not sent to the run's tracker: %s", err)
        return
    if trackers is None:
        return
    trackers.log_metrics(0, metrics)
    for path in files:
        trackers.log_file(path)
    trackers.close()
