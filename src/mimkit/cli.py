"""``mimkit <subcommand>``: each subcommand is a plain typed function below; ``main`` only parses.

mimkit pretrain --config configs/mae_fashion_mnist.yaml train.epochs=5 output_dir=runs/mae
mimkit reconstruct runs/mae --out recon.png
mimkit knn runs/mae --compare-random
mimkit eval finetune runs/mae && mimkit predict runs/mae new_images/ --out predictions.csv
mimkit export runs/mae encoder.safetensors
mimkit compare runs/mae runs/simmim && mimkit attention runs/mae --block all
mimkit explore runs/mae     # a local web page: reconstructions, attention, neighbours
mimkit sweep --config configs/mae_fashion_mnist.yaml method.mask_ratio=0.5,0.75,0.9 --minutes 5
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

from mimkit.data import build_dataset, build_eval_transform
from mimkit.engine import NonFiniteLossError, dist, load_config
from mimkit.engine.config import parse_overrides
from mimkit.engine.runctl import EXIT_PREEMPTED, Preempted
from mimkit.eval.saved import is_classifier_run
from mimkit.eval_cli import (
    add_embed_parser,
    add_eval_parsers,
    add_knn_parser,
    add_predict_parser,
    run_embed,
    run_eval,
    run_predict,
    track_results,
)
from mimkit.eval_sources import eval_data_config
from mimkit.inspect_runs import add_inspect_parsers, run_inspect
from mimkit.models import create_encoder
from mimkit.pretrain import load_pretrained, pretrain, resolve_checkpoint
from mimkit.recipe import RECIPE_RECORD, choose, default_run_dir
from mimkit.sweep.command import add_sweep_parser, run_sweep_command
from mimkit.viz import DEFAULT_STRETCH, display_bands, draw_reconstructions
from mimkit.weights import export_encoder_safetensors, load_weights

log = logging.getLogger("mimkit")


def run_pretrain(config: str | None, overrides: list[str], folder: str | None = None) -> Path:
    """Pretrain from a YAML recipe plus ``key.sub=value`` overrides, or on a ``folder`` of images with a
    recipe chosen for it (:mod:`mimkit.recipe`) when no recipe is given; returns the run directory."""
    if config is not None:
        where = ["data.source=folder", f"data.root={folder}"] if folder else []
        return pretrain(load_config(config, where + overrides))
    given = parse_overrides(overrides)
    data = given.get("data", {})
    folder = folder or (data.get("root") if data.get("source") == "folder" else None)
    if folder is None:
        raise ValueError(
            "give a folder of images (mimkit pretrain DIR: a recipe is chosen for it) or a recipe "
            "(mimkit pretrain --config configs/<recipe>.yaml)"
        )
    saved = Path(given.get("output_dir") or default_run_dir(folder)) / "config.yaml"
    if saved.is_file():  # a run of this folder exists: resume it with its own recipe, never a new plan
        log.info("%s has a recipe already: resuming with it", saved)
        return pretrain(load_config(saved, overrides))
    cfg, record = choose(folder, overrides)
    return pretrain(cfg, records={RECIPE_RECORD: record})


def run_reconstruct(
    checkpoint: str,
    out: str = "reconstruction.png",
    num: int = 8,
    split: str | None = None,
    seed: int = 0,
    data_root: str | None = None,
    bands: list[int] | str | None = None,
    stretch: tuple[float, float] | None = None,
) -> Path:
    """Write a PNG grid (original | masked | reconstruction | reconstruction + visible) of ``num`` images:
    of the ``split`` ("train" / "test"); by default the held-out images, else (an unlabeled folder has
    none) training images, said in one line.

    ``bands`` / ``stretch``: see :func:`mimkit.viz.save_reconstruction_grid`; 16-bit and float data are
    stretched to their 1-99% percentiles unless ``stretch`` says otherwise.
    """
    method, cfg, stats = load_pretrained(checkpoint)
    if not hasattr(method, "reconstruct"):
        raise ValueError(f"method {cfg.method['name']!r} cannot show reconstructions")
    data_cfg = eval_data_config(cfg.data, stats, None, data_root)
    try:
        data = build_dataset(data_cfg, split or "test")
    except FileNotFoundError as err:
        if split is not None:
            raise
        data = build_dataset(data_cfg, "train")
        log.info("no held-out images (%s): the picture shows training images", str(err).split(":")[0])
    if num < 1 or num > len(data):
        raise ValueError(f"--num must be in [1, {len(data)}], got {num}")
    display_bands(data.channels, bands)
    transform = build_eval_transform(data)
    images = transform(torch.stack([data[i][0] for i in range(num)]))
    title = f"{cfg.method['name']} {cfg.encoder['name']}  ({Path(resolve_checkpoint(checkpoint)).name})"
    if stretch is None and data.dtype != torch.uint8:
        stretch = DEFAULT_STRETCH
    return draw_reconstructions(method, images, out, data.mean, data.std, title, bands, stretch, seed)


def run_export(checkpoint: str, out: str, encoder_name: str | None = None) -> Path:
    """Write a run's encoder as ``.safetensors`` with the standard ViT names."""
    if encoder_name is None and is_classifier_run(checkpoint):
        raise ValueError(
            f"{checkpoint} is a fine-tuning run: export its classifier with --format transformers timm onnx "
            "(a directory), or its pretraining run's encoder as .safetensors"
        )
    if encoder_name is None:
        method, cfg, _ = load_pretrained(checkpoint)
        return export_encoder_safetensors(method, out, config={"encoder": cfg.encoder})
    encoder = create_encoder(encoder_name)
    load_weights(encoder, resolve_checkpoint(checkpoint))
    return export_encoder_safetensors(encoder, out, config={"encoder": {"name": encoder_name}})


def _bands_arg(values: list[str] | None) -> list[int] | str | None:
    if not values or values == ["each"]:
        return values[0] if values else None
    try:
        return [int(v) for v in values]
    except ValueError:
        raise ValueError(f"--bands takes band indices or 'each', got {' '.join(values)}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimkit", description="Masked image modeling for Vision Transformers."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "pretrain", help="pretrain on a folder of images (a recipe is chosen) or from a YAML recipe"
    )
    p.add_argument("--config", "-c", help="YAML recipe (see configs/); without it the recipe is chosen")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="[DIR] KEY=VALUE",
        help="a folder of images, then settings, e.g. my_images/ train.max_minutes=30 output_dir=runs/x",
    )

    p = sub.add_parser("reconstruct", help="PNG grid of a run's reconstructions")
    p.add_argument("checkpoint", help="run directory or checkpoint file")
    p.add_argument("--out", "-o", default="reconstruction.png")
    p.add_argument("--num", "-n", type=int, default=8, help="number of images (rows)")
    p.add_argument(
        "--split", choices=["train", "test"], help="default: the held-out images, else (none) training images"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the masks shown")
    p.add_argument("--data-root", help="read the images from here instead of the run's data root")
    p.add_argument(
        "--bands",
        nargs="+",
        metavar="B",
        help="bands to show: one (grey) or three (an RGB composite), 0-based, or 'each' (a row per band); "
        "default: grey, RGB, or the first three bands",
    )
    p.add_argument(
        "--stretch",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        help=f"percentiles of the originals shown as black and white, per band, the same for every column "
        f"(default {DEFAULT_STRETCH[0]:g} {DEFAULT_STRETCH[1]:g} for 16-bit and float data, none for 8-bit)",
    )

    add_knn_parser(sub, "knn", help="kNN accuracy of a frozen encoder (the same as `mimkit eval knn`)")

    p = sub.add_parser(
        "export",
        help="write the encoder as .safetensors, or for transformers / timm / ONNX with a model card",
    )
    p.add_argument("checkpoint")
    p.add_argument("out", help="OUT.safetensors, or a directory with --format")
    p.add_argument("--encoder", dest="encoder_name", help="encoder name, for a plain encoder file")
    p.add_argument(
        "--format", nargs="+", dest="formats", metavar="FORMAT",
        help="transformers (ViTModel; ViTMAEForPreTraining for MAE; BeitForImageClassification for a "
        "fine-tuning run's classifier), timm, onnx: written under OUT",
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace an OUT directory that is not empty")

    p = sub.add_parser("shards", help="pack a folder of images into tar shards (data.source: shards)")
    shard_sub = p.add_subparsers(dest="shards_command", required=True)
    p = shard_sub.add_parser("make", help="pack SRC_DIR into OUT_DIR/shard-*.tar (WebDataset layout)")
    p.add_argument("src", metavar="SRC_DIR", help="a folder of images (class sub-folders or not)")
    p.add_argument("out", metavar="OUT_DIR")
    p.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    p.add_argument(
        "--labeled", default="auto", type=_labeled_arg, help="auto (default: class sub-folders), true, false"
    )
    p.add_argument("--seed", type=int, default=0, help="the packing order's shuffle (default 0)")
    p.add_argument("--force", action="store_true", help="write into an OUT_DIR that is not empty")
    p.add_argument(
        "settings", nargs="*", metavar="data.KEY=VALUE",
        help="data.tile, data.volume, data.window: pack volumes' slices and large images' chips",
    )  # fmt: skip

    p = sub.add_parser(
        "explore", help="a local web page: reconstructions with clickable masks, attention, neighbours"
    )
    p.add_argument("checkpoint", metavar="RUN", help="run directory, checkpoint, or encoder file (--encoder)")
    p.add_argument("--encoder", dest="encoder_name", help="encoder name, for an encoder-only file")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine)"
    )
    p.add_argument("--port", type=int, default=8765, help="port to serve on (default 8765)")
    p.add_argument("--data-root", help="read the images from here instead of the run's data root")
    p.add_argument("--train-limit", type=int, default=2000, help="training images browsed and embedded")
    p.add_argument("--test-limit", type=int, default=1000, help="held-out images browsed and embedded")
    p.add_argument(
        "--pool", choices=["token", "avg"], default="token", help="the embedding of the neighbours"
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--no-cache",
        dest="use_cache",
        action="store_false",
        help="do not read or write the run's feature cache",
    )

    add_embed_parser(sub)
    add_eval_parsers(sub)
    add_sweep_parser(sub)
    add_predict_parser(sub)
    add_inspect_parsers(sub)  # compare, attention
    return parser


def _shard_items(settings: list[str]):
    """``mimkit shards make``'s ``data.tile=...`` / ``data.volume.axis=...`` / ``data.window=...`` settings
    as an :class:`~mimkit.data.items.ItemSpec`."""
    from mimkit.data import DataConfig
    from mimkit.data.items import spec_of

    values = parse_overrides(settings)
    data = values.pop("data", None) or {}
    other = [k for k in data if k not in ("tile", "volume", "window")]
    if values or other:
        raise ValueError(f"shards make takes data.tile, data.volume and data.window settings, got {settings}")
    return spec_of(DataConfig(source="folder", root=".", **data))


def _labeled_arg(value: str) -> str | bool:
    if value not in ("auto", "true", "false"):
        raise argparse.ArgumentTypeError(f"must be auto, true or false, not {value!r}")
    return value if value == "auto" else value == "true"


# commands that work in one process: under torchrun every process would write the same files
ONE_PROCESS = (
    "reconstruct", "explore", "sweep", "embed", "predict", "compare", "attention", "shards", "export"
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    main_process = dist.is_main_process()  # under torchrun, the others log warnings only
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if main_process else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    code, clean = 0, False
    try:
        if args.command in ONE_PROCESS and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError(
                f"mimkit {args.command} runs in one process: run it without torchrun (pretrain, knn and "
                "eval are the commands that use several)"
            )
        if args.command == "pretrain":
            folders = [a for a in args.overrides if "=" not in a]
            if len(folders) > 1:
                raise ValueError(f"pretrain takes one folder of images, got {', '.join(folders)}")
            settings = [a for a in args.overrides if "=" in a]
            run_dir = run_pretrain(args.config, settings, folders[0] if folders else None)
            if main_process:
                print(f"run directory: {run_dir}")
        elif args.command == "reconstruct":
            bands = _bands_arg(args.bands)
            stretch = tuple(args.stretch) if args.stretch else None
            path = run_reconstruct(
                args.checkpoint, args.out, args.num, args.split, args.seed, args.data_root, bands, stretch
            )
            print(f"wrote {path}")
            track_results(args.checkpoint, {}, [str(path)])  # the picture, to the run's trackers
        elif args.command in ("knn", "eval"):
            code = run_eval(args)
        elif args.command == "explore":
            from mimkit.explore.app import explore
            from mimkit.explore.session import ExploreOptions

            keys = ("encoder_name", "data_root", "train_limit", "test_limit", "pool", "device", "use_cache")
            explore(
                args.checkpoint, ExploreOptions(**{k: getattr(args, k) for k in keys}), args.host, args.port
            )
        elif args.command == "sweep":
            run_sweep_command(args)
        elif args.command == "embed":
            code = run_embed(args)
        elif args.command == "predict":
            code = run_predict(args)
        elif args.command in ("compare", "attention"):
            code = run_inspect(args)
        elif args.command == "shards":
            from mimkit.data.packing import pack_shards

            items = _shard_items(args.settings)
            index = pack_shards(
                args.src, args.out, args.shard_size, args.labeled, args.seed, args.force, items
            )
            skipped = f", {len(index['skipped'])} unreadable skipped" if index["skipped"] else ""
            print(f"wrote {len(index['shards'])} shard(s) of {index['images']} images{skipped} to {args.out}")
        elif args.command == "export" and args.formats:
            from mimkit.interop import export_run
            from mimkit.interop_classifier import export_classifier_run

            if Path(args.out).suffix.lower() in (".safetensors", ".onnx", ".bin", ".pt", ".pth"):
                raise ValueError(
                    f"with --format, OUT is a directory for one model per format and a README.md; "
                    f"{args.out} names a file: give a directory, e.g. {Path(args.out).with_suffix('')}"
                )
            what = export_classifier_run if is_classifier_run(args.checkpoint) else export_run
            checks = what(args.checkpoint, args.out, args.formats, args.force)
            for name, value in checks.items():
                print(f"{name}: " + (f"max |difference| {value:.2e}" if isinstance(value, float) else value))
            print(f"wrote {', '.join(args.formats)} and README.md under {args.out}")
        elif args.command == "export":
            print(f"wrote {run_export(args.checkpoint, args.out, args.encoder_name)}")
        clean = True
    except Preempted as err:  # checkpoint written: a job script requeues the same command on this code
        if err.checkpoint is not None:  # the process that wrote it speaks
            print(f"mimkit: {err}", file=sys.stderr)
        return EXIT_PREEMPTED
    except (ValueError, FileNotFoundError, ImportError, NonFiniteLossError) as err:
        print(f"mimkit: error: {err}", file=sys.stderr)
        return 2 if not isinstance(err, NonFiniteLossError) else 1
    except KeyboardInterrupt:
        print(
            "mimkit: interrupted; run the same command again to resume from the last checkpoint",
            file=sys.stderr,
        )
        return 130
    finally:
        dist.teardown(clean)  # under torchrun: the process group ends before the interpreter does
    return code


def run() -> None:
    """The ``mimkit`` program: :func:`main`, then the exit with its code.

    Under torchrun a process leaves with ``os._exit`` once :func:`main` has torn its process group down and
    its output is flushed: gloo's threads outlive ``destroy_process_group`` while a DDP module still holds
    the group (checked on torch 2.13), and the interpreter's own teardown then destroys them while they
    are joinable, which aborts the process ("terminate called without an active exception", SIGABRT, so
    torchrun reports a failed run after a finished one; seen in CI on a loaded 2-core machine).
    """
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
