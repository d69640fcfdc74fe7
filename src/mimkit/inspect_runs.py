"""``mimkit compare RUN...`` and ``mimkit attention RUN``: looking at finished runs from their directories.

``compare`` reads what each run recorded (``config.yaml``, ``metrics.jsonl`` and every
``eval/**/evaluation.json``) into :class:`~mimkit.eval.compare.RunRecords`, and :mod:`mimkit.eval.compare`
makes the table and the plots. ``attention`` loads a run's encoder and a few held-out images (or the files
given), and draws :mod:`mimkit.viz.attention`'s maps.

    mimkit compare runs/mae runs/simmim runs/sit --out compare/
    mimkit attention runs/mae --block all --images 4
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from mimkit.data import ImageDataset, build_dataset, build_eval_transform
from mimkit.engine import load_config
from mimkit.eval.compare import Comparison, RunRecords, compare, markdown, write_comparison
from mimkit.eval.evaluation_record import EVALUATION_FILE, read_evaluation
from mimkit.eval.records import logged_losses
from mimkit.eval_sources import eval_data_config
from mimkit.pretrain import load_pretrained
from mimkit.viz.attention import block_indices, class_token_attention, on_patch_grid, save_attention_picture

# results written before evaluations were recorded: (file, the command that evaluates again)
_UNRECORDED = {"finetune.json": "mimkit eval finetune", "linear_probe.json": "mimkit eval linear"}


def read_run(path: str | os.PathLike, name: str | None = None) -> RunRecords:
    """What the pretraining run at ``path`` (its directory, or a checkpoint in it) recorded.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: in one line, not a pretraining run directory, or an unreadable record.
    """
    given = Path(path)
    if not given.exists():
        raise FileNotFoundError(f"no such run directory: {given}")
    run = given.parent if given.is_file() else given
    name = name or str(path).rstrip("/")
    if not (run / "config.yaml").is_file():
        raise ValueError(
            f"{name} is not a pretraining run directory (no config.yaml): give the directories `mimkit "
            "pretrain` wrote"
        )
    cfg = load_config(run / "config.yaml")
    records = RunRecords(name, cfg.method.get("name"), cfg.encoder.get("name"), logged_losses(run))
    for file in sorted(run.glob(f"eval/**/{EVALUATION_FILE}")):
        record = read_evaluation(file)
        records.evaluations.append({**record, "where": file.parent.relative_to(run).as_posix()})
    for result, command in _UNRECORDED.items():
        for file in sorted(run.glob(f"eval/**/{result}")):
            if not (file.parent / EVALUATION_FILE).is_file():
                where = file.parent.relative_to(run).as_posix()
                records.notes.append(
                    f"{name}: {where} was evaluated before mimkit recorded evaluations for comparison "
                    f"(no {EVALUATION_FILE}): evaluate it again (`{command} {name}`) to compare it"
                )
    return records


def compare_runs(
    runs: Sequence[str | os.PathLike], out: str | os.PathLike = "compare", mixed: bool = False
) -> tuple[Comparison, dict[str, Path]]:
    """The table and plots of :func:`mimkit.eval.compare.compare` over the runs at ``runs``, written to
    ``out`` (:func:`~mimkit.eval.compare.write_comparison`); ``mixed``: compare scores measured on other
    data or with other settings anyway, marking their columns, instead of refusing them."""
    names = [str(run).rstrip("/") for run in runs]
    twice = [name for i, name in enumerate(names) if name in names[:i]]
    if twice:
        raise ValueError(f"{twice[0]} is given twice: give each run once")
    records = [read_run(run, name) for run, name in zip(runs, names, strict=True)]
    comparison = compare(records, mixed=mixed)
    return comparison, write_comparison(comparison, records, out)


def _files_dataset(like: ImageDataset, files: Sequence[str | os.PathLike]) -> ImageDataset:
    """``files``, decoded as the images of ``like`` are (size, channels, bit depth, bands, clip)."""
    paths = [Path(f) for f in files]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"no such image file: {path}")
    return ImageDataset(
        torch.full((len(paths),), -1, dtype=torch.int64),
        [],
        like.channels,
        like.img_size,
        like.mean,
        like.std,
        files=paths,
        resize_mode=like.resize_mode,
        split="attention",
        decode=like.decode,
        clip=like.clip,
    )


def draw_attention(
    run: str | os.PathLike,
    out: str | os.PathLike | None = None,
    block: int | str = -1,
    images: int = 4,
    files: Sequence[str | os.PathLike] = (),
    data_root: str | None = None,
) -> list[Path]:
    """One PNG per image of the class token's attention in ``block`` (an index, negative from the end, or
    ``"all"``), each head and their mean (:func:`~mimkit.viz.attention.save_attention_picture`), in ``out``
    (default ``<run>/attention``): the first ``images`` of the run's held-out split, or ``files``.

    Raises:
        ValueError: in one line, an encoder without a class token (Swin), a block outside it, a count of
            images outside the split, an unreadable file.
        FileNotFoundError: no such run or file.
    """
    method, cfg, stats = load_pretrained(run)
    blocks = block_indices(method.encoder, block)  # a Swin is refused before any image is read
    test = build_dataset(eval_data_config(cfg.data, stats, None, data_root), "test")
    if files:
        shown, names = _files_dataset(test, files), [Path(f).stem for f in files]
    else:
        if not 1 <= images <= len(test):
            raise ValueError(f"--images must be in [1, {len(test)}] (the held-out split), got {images}")
        shown, names = test, [f"test{i:05d}" for i in range(images)]
    batch = build_eval_transform(test)(torch.stack([shown[i][0] for i in range(len(names))]))
    maps = on_patch_grid(method, class_token_attention(method, batch, blocks))  # [blocks, B, heads, h, w]
    folder = (
        Path(out) if out is not None else Path(run if Path(run).is_dir() else Path(run).parent) / "attention"
    )
    what = f"{cfg.method['name']} {cfg.encoder['name']}: the class token's attention"
    return [
        save_attention_picture(
            batch[i],
            maps[:, i],
            blocks,
            folder / f"attention_{name}.png",
            test.mean,
            test.std,
            f"{what}, {name}",
        )
        for i, name in enumerate(names)
    ]


def _block_arg(value: str) -> int | str:
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a block index or 'all', not {value!r}") from None


def add_inspect_parsers(subparsers: argparse._SubParsersAction) -> None:
    """``mimkit compare`` and ``mimkit attention``."""
    p = subparsers.add_parser(
        "compare",
        help="one table (markdown, CSV) and plots over runs' recorded evaluations; runs evaluated on other "
        "data or with other settings are refused",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="pretraining run directories")
    p.add_argument("--out", "-o", default="compare", help="folder of comparison.md, .csv and the plots")
    p.add_argument(
        "--mixed",
        action="store_true",
        help="compare scores measured on other data or with other settings anyway, marking their columns",
    )
    p = subparsers.add_parser(
        "attention", help="PNGs of the class token's attention (each head, their mean) over held-out images"
    )
    p.add_argument("run", help="pretraining run directory or checkpoint")
    p.add_argument("files", nargs="*", metavar="IMAGE", help="image files (default: held-out images)")
    p.add_argument(
        "--block",
        type=_block_arg,
        default=-1,
        help="block index (negative: from the end; default the last) or all",
    )
    p.add_argument("--images", "-n", type=int, default=4, help="the first N held-out images (default 4)")
    p.add_argument("--out", "-o", help="folder of the PNGs (default <run>/attention)")
    p.add_argument("--data-root", help="read the held-out images from here instead of the run's data root")


def run_inspect(args: argparse.Namespace) -> int:
    """Run the command :func:`add_inspect_parsers` parsed; prints the table or where the pictures went."""
    if args.command == "compare":
        comparison, written = compare_runs(args.runs, args.out, args.mixed)
        print(markdown(comparison))
        for note in comparison.notes:
            print(note)
        print("wrote " + ", ".join(str(path) for path in written.values()))
    else:
        paths = draw_attention(args.run, args.out, args.block, args.images, args.files, args.data_root)
        print(f"wrote {len(paths)} picture(s) to {paths[0].parent}")
    return 0
