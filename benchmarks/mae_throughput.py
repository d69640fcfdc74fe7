"""MAE training-step throughput: mimkit against Hugging Face transformers' ViTMAEForPreTraining.

The Fashion-MNIST recipe shape: ViT-Tiny encoder (width 192, depth 12, 3 heads, patch 4 on 28x28 grey),
decoder 128 wide x 4 blocks (4 heads), mask ratio 0.75, norm_pix_loss, batch 256. A step is what a
trainer does per batch: forward (under bf16 autocast or in fp32), backward, AdamW step (the same fused
AdamW and parameter groups for both sides), gradients set to None. Data loading is not timed (one fixed
random batch per side; a new random mask every step).

Each row also gets the step's model FLOPs per image (``torch.utils.flop_counter``, counted on the eager
step) and its MFU against the machine's 2048^3 matrix-product peak in that precision, measured in the same
run (benchmarks/_roofline.py). ``--data-path`` adds mimkit's step fed by mimkit's own data path, as
``mimkit pretrain`` feeds it (decoded uint8 images in memory, the BatchLoader with pinned batches on a GPU,
a non-blocking copy, MAE's augmentation on the device), next to the same step on a fixed batch, and the
data path alone: whether loading is what the step waits for.

Each (side, precision) pair runs in its own worker process, so its peak RSS (on a GPU: peak allocated
GPU memory) is its own. The parent runs the workers one at a time, in a rotating order, round after round,
so that noise from other work on a shared machine hits every side alike; a row's rate is the batch over
the median of all its timed steps.

    python benchmarks/mae_throughput.py                          # both sides, fp32 and bf16, batch 256
    python benchmarks/mae_throughput.py --no-peer --precision bf16 --rounds 2
    python benchmarks/mae_throughput.py --quiet-wait 120 --json out.json
    python benchmarks/mae_throughput.py --device cuda --shape vit_base_224 --batch 256   # on a GPU
    python benchmarks/mae_throughput.py --device cuda --shape vit_base_224 --precision bf16 \
        --compile both --data-path --json mae_vit_base.json    # the GPU table: MFU, compile, data path

Results, and the machine they were measured on: benchmarks/README.md.

Length: one self-contained script (both sides, both precisions, worker processes and the report), so that
a reader can rerun and audit it alone; the shared timing code is in _timing.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from contextlib import nullcontext
from typing import Any

from _timing import (  # benchmarks/_timing.py
    cpu_name,
    machine_info,
    run_rounds,
    serve_steps,
    set_allocator,
)

PRECISIONS = ("fp32", "bf16")
COMPILED = " compiled"  # suffix of a side that runs torch.compile'd (--compile)
LOADER = " + loader"  # suffix of a mimkit side fed by mimkit's data path (--data-path)
ALONE = "loader alone"  # the data path without a model (--data-path)

# The Fashion-MNIST recipe shape (the default), shared by both sides.
SHAPE = dict(
    img_size=28,
    patch_size=4,
    in_chans=1,
    embed_dim=192,
    depth=12,
    num_heads=3,
    mlp_ratio=4,
    decoder_dim=128,
    decoder_depth=4,
    decoder_heads=4,
    mask_ratio=0.75,
    norm_pix_loss=True,
)
# --shape: the recipe above, or the MAE paper's ImageNet ViT-B/16 (decoder 512 x 8) for GPU timings.
SHAPES = {
    "fmnist": SHAPE,
    "vit_base_224": dict(
        img_size=224,
        patch_size=16,
        in_chans=3,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4,
        decoder_dim=512,
        decoder_depth=8,
        decoder_heads=16,
        mask_ratio=0.75,
        norm_pix_loss=True,
    ),
}


def build_mimkit(shape: dict[str, Any]):
    """mimkit's MAE of that shape (a ``create_encoder`` ViT); returns (model, images -> loss)."""
    from mimkit.methods import create_method
    from mimkit.models import create_encoder

    encoder = create_encoder(
        "vit_base_patch16",
        **{k: shape[k] for k in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads")},
        mlp_ratio=shape["mlp_ratio"],
    )
    model = create_method(
        "mae",
        encoder=encoder,
        decoder_dim=shape["decoder_dim"],
        decoder_depth=shape["decoder_depth"],
        decoder_heads=shape["decoder_heads"],
        mask_ratio=shape["mask_ratio"],
        norm_pix_loss=shape["norm_pix_loss"],
    )

    def loss_fn(images):
        return model.training_step((images, None))["loss"]

    return model, loss_fn


def build_transformers(shape: dict[str, Any], attn_implementation: str):
    """transformers' ViTMAEForPreTraining with the same architecture; returns (model, images -> loss)."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    d, dd = shape["embed_dim"], shape["decoder_dim"]
    config = ViTMAEConfig(
        image_size=shape["img_size"],
        patch_size=shape["patch_size"],
        num_channels=shape["in_chans"],
        hidden_size=d,
        num_hidden_layers=shape["depth"],
        num_attention_heads=shape["num_heads"],
        intermediate_size=d * shape["mlp_ratio"],
        decoder_hidden_size=dd,
        decoder_num_hidden_layers=shape["decoder_depth"],
        decoder_num_attention_heads=shape["decoder_heads"],
        decoder_intermediate_size=dd * shape["mlp_ratio"],
        mask_ratio=shape["mask_ratio"],
        norm_pix_loss=shape["norm_pix_loss"],
        qkv_bias=True,  # the reference's qkv bias
        layer_norm_eps=1e-6,  # the reference's eps (transformers' default is 1e-12)
        hidden_act="gelu",  # exact (erf) GELU, as nn.GELU()
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config._attn_implementation = attn_implementation
    model = ViTMAEForPreTraining(config)

    def loss_fn(images):
        return model(pixel_values=images).loss

    return model, loss_fn


def param_groups(model) -> list[dict[str, Any]]:
    """The same rule for both sides: no weight decay on 1-D parameters (biases, norms)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model, kind: str):
    import torch

    impl = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[kind]
    return torch.optim.AdamW(param_groups(model), lr=1.5e-4, betas=(0.9, 0.95), **impl)


def data_path(shape: dict[str, Any], args: dict[str, Any], device):
    """mimkit's data path for the shape, as ``mimkit pretrain`` runs it: an in-memory dataset of decoded
    uint8 images (random, ``--images`` of them), its BatchLoader (batches pinned on a GPU), the copy to the
    device (non-blocking) and MAE's augmentation there (random resized crop, flip, normalisation).

    Returns:
        ``next_batch()``: the next augmented float batch on the device (a new epoch when one ends).
    """
    import torch

    from mimkit.data import ImageDataset, build_loader
    from mimkit.data.transforms import PretrainAugment

    c, side = shape["in_chans"], shape["img_size"]
    n = args["images"] or 4 * args["batch"]
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, c, side, side), dtype=torch.uint8, generator=generator)
    data = ImageDataset(
        torch.zeros(n, dtype=torch.long), [], c, (side, side), [0.5] * c, [0.29] * c, images=images
    )
    loader = build_loader(
        data, args["batch"], shuffle=True, drop_last=True, seed=0, pin_memory=device.type == "cuda"
    )
    augment = PretrainAugment(data.img_size, data.mean, data.std, "mae").to(device)
    state = {"epoch": 0, "batches": iter(loader)}

    def next_batch():
        try:
            batch, _ = next(state["batches"])
        except StopIteration:
            state["epoch"] += 1
            loader.set_epoch(state["epoch"])
            state["batches"] = iter(loader)
            batch, _ = next(state["batches"])
        with torch.no_grad():
            return augment(batch.to(device, non_blocking=True))

    return next_batch


def count_gflop_per_img(loss_fn, images, autocast) -> float:
    """Forward + backward FLOPs of one step per image (``torch.utils.flop_counter``; matrix products and
    attention), counted on the eager step; the gradients it leaves are the caller's to clear."""
    from torch.utils.flop_counter import FlopCounterMode

    flops = FlopCounterMode(display=False)
    with flops:
        with autocast():
            loss = loss_fn(images)
        loss.backward()
    return flops.get_total_flops() / images.shape[0] / 1e9


def worker(key: tuple[str, str], args: dict[str, Any], conn) -> None:
    """One (side, precision) in its own process: build, then run timed segments on request."""
    side, precision = key
    fed = side.endswith(LOADER)
    side = side.removesuffix(LOADER)
    side, compiled = side.removesuffix(COMPILED), side.endswith(COMPILED)
    set_allocator(args["glibc_defaults"])
    import torch

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    shape, device = SHAPES[args["shape"]], torch.device(args["device"])
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    peak = (lambda: torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None
    try:
        next_batch = data_path(shape, args, device) if fed or side == ALONE else None
    except Exception as err:  # report, do not leave the parent waiting
        conn.send({"error": f"{type(err).__name__}: {err}"})
        return
    if side == ALONE:  # the data path's own rate: host batch, pinned copy, augmentation on the device
        conn.send({"params": 0, "trainable": 0, "threads": torch.get_num_threads(), "gflop_per_img": 0.0})
        serve_steps(conn, next_batch, sync, peak)
        return
    try:
        if side == "mimkit":
            model, loss_fn = build_mimkit(shape)
        else:
            model, loss_fn = build_transformers(shape, args["peer_attn"])
        model.to(device).train()
        opt = make_optimizer(model, args["optimizer"])
    except Exception as err:  # report, do not leave the parent waiting
        conn.send({"error": f"{type(err).__name__}: {err}"})
        return
    size = (args["batch"], shape["in_chans"], shape["img_size"], shape["img_size"])
    images = torch.randn(size, device=device)
    if precision == "bf16":
        autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    else:
        autocast = nullcontext
    gflop_per_img = count_gflop_per_img(loss_fn, images, autocast)
    opt.zero_grad(set_to_none=True)
    if compiled:  # the trainer's train.compile=true; compiles in the untimed warm-up steps
        from mimkit.engine.trainer import compile_step

        loss_fn = compile_step(loss_fn, device)

    def step() -> None:
        with autocast():
            loss = loss_fn(next_batch() if fed else images)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    conn.send(
        {
            "params": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "threads": torch.get_num_threads(),
            "gflop_per_img": gflop_per_img,
        }
    )
    serve_steps(conn, step, sync, peak)


def peer_available() -> str | None:
    """None if transformers' ViTMAE imports, else the reason."""
    try:
        from transformers import ViTMAEConfig, ViTMAEForPreTraining  # noqa: F401
    except Exception as err:  # ImportError, or a broken install
        return f"{type(err).__name__}: {err}"
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument(
        "--shape",
        default="fmnist",
        choices=sorted(SHAPES),
        help="fmnist: the Fashion-MNIST recipe (default); vit_base_224: the paper's ViT-B/16 MAE",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side per round (default 3)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before a side's first round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the sides alternate within each")
    parser.add_argument(
        "--precision",
        default="auto",
        help="comma list of fp32, bf16; auto (default): fp32, and bf16 where the device has it natively",
    )
    parser.add_argument(
        "--peer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time transformers' ViTMAEForPreTraining (default on; skipped if not installed)",
    )
    parser.add_argument(
        "--peer-attn",
        default="sdpa",
        choices=("sdpa", "eager"),
        help="transformers' attention implementation (default sdpa, transformers' own default)",
    )
    parser.add_argument(
        "--optimizer",
        default="fused",
        choices=("fused", "foreach", "for-loop"),
        help="AdamW implementation, the same for both sides (default fused, as mimkit's trainer)",
    )
    parser.add_argument(
        "--compile",
        default="none",
        choices=("none", "mimkit", "both"),
        help="also time mimkit (or both sides) under torch.compile, as mimkit's train.compile=true does it "
        "(extra rows; default none); compiling happens in the untimed warm-up steps",
    )
    parser.add_argument(
        "--data-path",
        action="store_true",
        help="also time mimkit's step fed by its own data path (decoded uint8 images in memory, BatchLoader "
        "with pinned batches on a GPU, the copy to the device, MAE's augmentation there) and that data path "
        "alone (extra rows)",
    )
    parser.add_argument(
        "--images", type=int, default=0, help="images in the --data-path dataset (default: 4 batches)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--glibc-defaults",
        action="store_true",
        help="glibc's allocator defaults in both sides' processes (mimkit's own setting off): freed memory "
        "is page-faulted in again every step; default: kept for reuse on every side",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each round wait up to this many seconds for the machine to be idle (shared machines)",
    )
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.precision == "auto":  # an emulated bf16 row would take hours on an AVX2-only CPU
        from mimkit.engine.precision import device_capabilities

        native = device_capabilities(args.device).bf16
        args.precision = "fp32,bf16" if native else "fp32"
    args.precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if not args.precisions or any(p not in PRECISIONS for p in args.precisions):
        parser.error(f"--precision {args.precision!r}: use a comma list of {', '.join(PRECISIONS)}")
    for name in ("batch", "steps", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.images < 0:
        parser.error("--warmup and --images must be >= 0")
    if args.data_path and 0 < args.images < args.batch:
        parser.error(f"--images {args.images} is less than one batch ({args.batch})")
    if args.device != "cpu":  # checked here, not in each worker process
        import torch

        try:
            device = torch.device(args.device)
        except RuntimeError:
            parser.error(f"--device {args.device!r}: use cpu or cuda[:N]")
        if device.type != "cuda" or not torch.cuda.is_available():
            parser.error(f"--device {args.device!r}: use cpu, or cuda[:N] on a machine with a CUDA GPU")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the workers, run the rounds, return the results (rows, ratio, notes)."""
    import torch

    sides, peer_note = ["mimkit"], None
    if args.peer:
        reason = peer_available()
        if reason is None:
            sides.append("transformers")
        else:
            peer_note = f"transformers is not installed or broken ({reason}): timing mimkit only, no ratio"
            print(f"NOTE: {peer_note}", file=sys.stderr)

    wargs = {
        "batch": args.batch,
        "threads": args.threads,
        "optimizer": args.optimizer,
        "peer_attn": args.peer_attn,
        "glibc_defaults": args.glibc_defaults,
        "shape": args.shape,
        "device": args.device,
        "images": args.images,
    }
    if args.compile != "none":
        sides += [s + COMPILED for s in sides if args.compile == "both" or s == "mimkit"]
    configs = [(s, p) for s in sides for p in args.precisions]
    if args.data_path:  # mimkit's sides again, fed by its data path; then that path alone
        configs += [(s + LOADER, p) for s in sides if s.startswith("mimkit") for p in args.precisions]
        configs.append((ALONE, "uint8"))
    from _roofline import matmul_peak_gflops

    from mimkit.engine.precision import DTYPES

    peaks = {p: matmul_peak_gflops(DTYPES[p], torch.device(args.device)) for p in args.precisions}

    def report(r: int, cfg: tuple[str, str], times: list[float]) -> None:
        rate = args.batch / statistics.median(times)
        print(
            f"round {r + 1}/{args.rounds} {cfg[0]:>12s} {cfg[1]}: {rate:6.1f} img/s",
            file=sys.stderr,
            flush=True,
        )

    timed = run_rounds(
        configs, worker, wargs, args.rounds, args.steps, args.warmup, args.quiet_wait, progress=report
    )
    info, results = timed["info"], timed["results"]
    params = {
        s: (info[(s, args.precisions[0])]["params"], info[(s, args.precisions[0])]["trainable"])
        for s in sides
    }
    if len(set(params.values())) > 1:
        print(f"WARNING: the sides' parameter counts differ: {params}", file=sys.stderr)

    rows = []
    for (side, prec), res in results.items():
        med = statistics.median(res["times"])
        gflop = info[(side, prec)]["gflop_per_img"]
        rows.append(
            {
                "side": side,
                "precision": prec,
                "img_per_s": args.batch / med,
                "ms_per_step": med * 1e3,
                "gflop_per_img": gflop,
                "mfu": gflop * args.batch / med / peaks[prec] if prec in peaks and gflop else None,
                "img_per_s_rounds": [round(args.batch / m, 1) for m in res["round_medians"]],
                "peak_rss_mb": res["peak_rss_mb"],
                "peak_device_mb": res.get("peak_device_mb"),
                "steps_timed": len(res["times"]),
                "other_load": statistics.mean(res["other_load"]) if res["other_load"] else None,
            }
        )

    def rate(row: dict[str, Any]) -> float:
        return row["img_per_s"]

    best = {s: max((r for r in rows if r["side"] == s), key=rate) for s in sides}
    # The ratio compares each library's fastest model step (over precisions and, with --compile, compiled or
    # not) on a fixed batch: the peer has no data path of its own.
    fastest = {
        lib: max((b for s, b in best.items() if s.startswith(lib)), key=rate, default=None)
        for lib in ("mimkit", "transformers")
    }
    ratio = None
    if fastest["transformers"] is not None:
        ratio = fastest["mimkit"]["img_per_s"] / fastest["transformers"]["img_per_s"]
    return {
        "rows": rows,
        "best": {s: b["precision"] for s, b in best.items()},
        "ratio": ratio,
        "fastest": {lib: (r["side"], r["precision"]) for lib, r in fastest.items() if r is not None},
        "params": params,
        "threads": info[configs[0]]["threads"],
        "quiet_rounds": timed["quiet_rounds"],
        "peer_note": peer_note,
        "peaks_gflops": peaks,
    }


def data_path_lines(rows: list[dict[str, Any]]) -> list[str]:
    """With --data-path: each fed row against the same step on a fixed batch, and the data path's own rate
    against the fastest fed step (how far it is from being what the step waits for)."""
    by = {(r["side"], r["precision"]): r for r in rows}
    fed = [r for r in rows if r["side"].endswith(LOADER)]
    lines = []
    for row in fed:
        alone = by[(row["side"].removesuffix(LOADER), row["precision"])]
        lines.append(
            f"{row['side']} {row['precision']}: {row['img_per_s']:.1f} img/s, "
            f"{row['img_per_s'] / alone['img_per_s']:.3f} of the same step on a fixed batch"
        )
    loader = next((r for r in rows if r["side"] == ALONE), None)
    if loader is not None and fed:
        fastest = max(fed, key=lambda r: r["img_per_s"])
        lines.append(
            f"data path alone: {loader['img_per_s']:.0f} img/s, "
            f"{loader['img_per_s'] / fastest['img_per_s']:.1f}x the fastest fed step"
        )
    return ["", *lines] if lines else []


def print_report(args: argparse.Namespace, out: dict[str, Any]) -> None:
    import torch

    extras = ", glibc's allocator defaults" if args.glibc_defaults else ", freed host memory kept for reuse"
    gpu = args.device.startswith("cuda")
    where = f"{torch.cuda.get_device_name(args.device)}" if gpu else f"{cpu_name()}, {out['threads']} threads"
    print(
        f"\nMAE training step ({args.shape}), batch {args.batch}, {where}, torch {torch.__version__}, "
        f"AdamW {args.optimizer}{extras}; median of {args.rounds} rounds x {args.steps} steps per row\n"
    )
    memory = "peak GPU memory (MB)" if gpu else "peak RSS (MB)"
    peaks = ", ".join(f"{p} {v:.0f} GFLOP/s" for p, v in out["peaks_gflops"].items())
    print(f"machine peak (2048^3 matrix product): {peaks}\n")
    print(
        f"| side | precision | img/s | ms/step | GFLOP/img | MFU | rounds (img/s) | {memory} | other load |"
    )
    print("|---|---|---:|---:|---:|---:|---|---:|---:|")
    for row in out["rows"]:
        load = "n/a" if row["other_load"] is None else f"{100 * row['other_load']:.0f}%"
        mark = " (best)" if out["best"].get(row["side"]) == row["precision"] else ""
        rounds = "-".join(f"{v:.0f}" for v in (min(row["img_per_s_rounds"]), max(row["img_per_s_rounds"])))
        mfu = "n/a" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
        print(
            f"| {row['side']} | {row['precision']}{mark} | {row['img_per_s']:.1f} | {row['ms_per_step']:.0f} "
            f"| {row['gflop_per_img']:.3f} | {mfu} | {rounds} "
            f"| {row['peak_device_mb' if gpu else 'peak_rss_mb']:.0f} | {load} |"
        )
    for line in data_path_lines(out["rows"]):
        print(line)
    if out["ratio"] is not None:
        print(
            f"\nratio, mimkit best ({' '.join(out['fastest']['mimkit'])}) / transformers best "
            f"({' '.join(out['fastest']['transformers'])}): {out['ratio']:.2f}x"
        )
    elif out["peer_note"]:
        print(f"\n{out['peer_note']}")
    print(f"parameters (all, trainable): {out['params']}")
    print("other load: share of the machine's CPU time used by other processes while a row ran")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = run(args)
    except RuntimeError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 1
    print_report(args, out)
    if args.json:
        machine = machine_info()
        try:
            import transformers

            machine["transformers"] = transformers.__version__
        except ImportError:
            pass
        record = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": machine,
            "args": {k: v for k, v in vars(args).items() if k != "precisions"},
            "shape": SHAPES[args.shape],
            **out,
        }
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
