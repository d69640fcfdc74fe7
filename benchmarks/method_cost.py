"""Cost per image of a training step of each pretraining method (MAE, SimMIM, SiT, GMML) on one encoder.

The question (issue "SimMIM on ViT and on Swin"): how much cheaper is an MAE step than a SimMIM step of the
same encoder? The MAE paper reports 2.8-4.1x in wall-clock time: MAE's encoder sees only the visible
25% of the tokens, SimMIM's sees all of them (masked ones replaced by a mask token).

Every method is built with mimkit's own factory, ``create_method(name, encoder=...)``, with the method
options of its Fashion-MNIST recipe (``configs/{mae,simmim_vit,sit,gmml}_fashion_mnist.yaml``) and the
optimiser settings of the recipe's ``train`` section (betas, weight decay, gradient clipping), but the
SAME encoder, input size, batch, device and precision for all, so that only the method differs.

A timed step is exactly the trainer's step: ``Trainer._micro_step`` (``method.training_step((images,
labels))`` under the trainer's autocast, through the trainer's wrapper, then backward) and
``Trainer._optimizer_step`` (lr schedule, gradient clipping as in the recipe, fused AdamW, gradients set to
None, then the method's ``on_train_step_end`` hook: SiT's EMA teacher update). The benchmark drives a real
:class:`~mimkit.engine.trainer.Trainer` rather than re-writing these steps so that it times what
``mimkit pretrain`` runs. The batch is a fixed random normalised batch on the device: data loading and
the data pipeline's augmentation (MAE's and SimMIM's crops and flips, run by the trainer's
``batch_transform``) are not timed, but SiT's and GMML's own view augmentation (``TwoViewAugment``), which
runs inside ``training_step``, is part of their cost, as are SiT's two views per image and its teacher's
forward pass. "Per image" means per image of the batch (SiT's 2 views of an image count as one image).

SimMIM's mask cell: the recipe's 8 px cell (2x2 tokens at 32x32) does not tile a 28x28 image (a 7x7 grid
of 4 px patches, 7 being prime), so at 28x28 the cell falls back to the largest one that tiles the image
and is no larger than the recipe's, 4 px (one token); the note under the table says so. The encoder sees
every token whatever the cell, so the cost does not depend on it. ``--encoder vit_tiny_patch4_32`` runs
the comparison at 32x32 with the recipe's 8 px cell (the SimMIM-ViT recipe's own shape).

Against the machine's limits, in the same run (benchmarks/_roofline.py): each row also gets the model
FLOPs per image, the rate it achieves, the machine's measured 2048^3 matrix-product peak in the step's
precision (MFU = achieved / peak), and the step's **floor**: its own matrix products (same shapes, strides
and dtypes, recorded while it ran) replayed alone. ``floor share`` = floor / step time: 1.0 would be a step
that does nothing but its matrix products (the floor is replayed in every round, right after the row's
timed steps, and the share is the median of the rounds' shares). Its **ceiling** adds the step's essential
element-wise work (GELU, softmax, LayerNorm, the optimizer update; replayed alone the same way): ``floor /
(floor + essential)`` is the best floor share a step that still computes them can reach. The peer,
transformers' ``ViTMAEForPreTraining`` with MAE's recipe shape (as in mae_throughput.py; forward,
backward, fused AdamW, no gradient clipping), runs in the same rounds in fp32 and, where bf16 is native,
in bf16: its best row is "the peer".

How it measures (shared with mae_throughput.py, see benchmarks/_timing.py): each method runs in its own
worker process (own allocator state and peak RSS); the parent asks the workers for ``--steps`` timed steps
one at a time, in a rotating order, round after round, so that load from other processes hits every
method alike. A row's time is the median of all its timed steps. Before timing, one extra step per method
counts the tokens entering the encoders' first block and the step's FLOPs (``FlopCounterMode``).

    python benchmarks/method_cost.py                                 # 28x28 grey, batch 256, precision auto
    python benchmarks/method_cost.py --encoder vit_tiny_patch4_32    # at 32x32 (SimMIM's 8 px cells)
    python benchmarks/method_cost.py --precision fp32 --methods mae,simmim --out runs/method_cost
    python benchmarks/method_cost.py --steps 2 --rounds 1 --warmup 1 # smoke test

Results, and the machine they were measured on: benchmarks/README.md.

Length: one self-contained script per question (every method, its FLOPs, the floor and the peer in the
same rounds), so that a reader can rerun and audit it alone; the shared timing and roofline code is in
_timing.py and _roofline.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path
from typing import Any

from _timing import run_rounds, serve_steps, set_allocator, write_report  # benchmarks/_timing.py

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# method -> the Fashion-MNIST recipe whose method options and optimiser settings it runs with
RECIPES = {
    "mae": "mae_fashion_mnist.yaml",
    "simmim": "simmim_vit_fashion_mnist.yaml",
    "sit": "sit_fashion_mnist.yaml",
    "gmml": "gmml_fashion_mnist.yaml",
}
PRECISIONS = ("auto", "bf16", "fp32")
PEER = "transformers-mae"  # keys "transformers-mae fp32" / "... bf16": the peer's MAE, one per precision
COMPILED = " compiled"  # suffix of a row with train.compile=true (--compile)


def fit_mask_cell(wanted: int, grid_size: tuple[int, int], patch_size: int) -> tuple[int, str | None]:
    """SimMIM's ``mask_patch_size``: ``wanted`` if its cells tile the token grid, else the largest cell
    (in pixels) that does and is no larger than ``wanted`` (the smallest that tiles if none is).

    Returns:
        ``(mask_patch_size, note)``; the note says what changed and why (None if nothing did).
    """
    gh, gw = grid_size
    valid = [s * patch_size for s in range(1, min(gh, gw) + 1) if gh % s == 0 and gw % s == 0]
    if wanted in valid:
        return wanted, None
    smaller = [v for v in valid if v <= wanted]
    cell = max(smaller) if smaller else min(valid)
    image = f"{gh * patch_size}x{gw * patch_size}"
    return cell, (
        f"simmim: mask_patch_size {wanted} (recipe) does not tile the {image} image ({gh}x{gw} patches of "
        f"{patch_size} px; cells that do: {valid}), using {cell}; the encoder sees every token either way"
    )


def build(method: str, args: dict[str, Any]):
    """The method (with its recipe's options around the forced encoder) and its recipe's TrainConfig.

    Returns:
        ``(model, train_config, info)``; info holds the recipe file, the method options and notes.
    """
    from mimkit import create_encoder, create_method
    from mimkit.engine.config import load_config, named_options

    recipe = CONFIGS / RECIPES[method]
    cfg = load_config(recipe)
    if cfg.method["name"] != method:
        raise ValueError(f"{recipe} is a {cfg.method['name']!r} recipe, not {method!r}")
    encoder_options: dict[str, Any] = {"in_chans": args["in_chans"]}
    if args["img_size"]:
        encoder_options["img_size"] = args["img_size"]
    encoder = create_encoder(args["encoder"], **encoder_options)
    _, options = named_options(cfg.method)
    notes = []
    if "mask_patch_size" in options:
        options["mask_patch_size"], note = fit_mask_cell(
            options["mask_patch_size"], tuple(encoder.grid_size), encoder.patch_size
        )
        notes += [note] if note else []
    model = create_method(method, encoder=encoder, **options)
    train = dataclasses.replace(
        cfg.train,
        batch_size=args["batch"],
        precision=args["precision"],
        device=args["device"],
        resume=False,
        progress=False,
        tensorboard=False,
    )
    info = {"recipe": f"configs/{recipe.name}", "options": options, "notes": notes}
    return model, train, info


class _NoBatches:
    """The loader interface the Trainer is built with; the timed steps feed it their own fixed batch."""

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 1

    def set_epoch(self, epoch: int) -> None:
        pass

    def set_start_batch(self, index: int) -> None:
        pass


def _first_block(encoder):
    """The first transformer block of a ViT (``blocks``) or a Swin (``layers[0].blocks``)."""
    if hasattr(encoder, "blocks"):
        return encoder.blocks[0]
    return encoder.layers[0].blocks[0]


def count_step(model, step, batch: int) -> dict[str, float]:
    """Run one step while counting FLOPs and the tokens entering every encoder's first block.

    Returns:
        ``tokens_per_img`` (tokens through encoders with gradients: the trained student), ``frozen_tokens_
        per_img`` (without: SiT's EMA teacher), ``gflop_per_img`` (forward + backward, matrix products and
        attention as counted by ``torch.utils.flop_counter``), all per image of the batch.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    tokens = {True: 0, False: 0}

    def count(_module, inputs) -> None:
        x = inputs[0]  # [N, T, D]
        tokens[torch.is_grad_enabled()] += x.shape[0] * x.shape[1]

    encoders = [m for m in model.modules() if hasattr(m, "forward_encoder")]
    hooks = [_first_block(m).register_forward_pre_hook(count) for m in encoders]
    flops = FlopCounterMode(display=False)
    try:
        with flops:
            step()
    finally:
        for hook in hooks:
            hook.remove()
    return {
        "tokens_per_img": tokens[True] / batch,
        "frozen_tokens_per_img": tokens[False] / batch,
        "gflop_per_img": flops.get_total_flops() / batch / 1e9,
    }


def record_matmuls(step, device) -> tuple[dict[str, int], dict[str, Any]]:
    """The step's matrix products and essential element-wise work, recorded during one step:
    ``({"matmul_calls": n}, {"floor_s": replay, "essential_s": replay})`` where each ``replay()`` times its
    ops alone (asked for by the parent when no other worker runs)."""
    from _roofline import MatmulRecorder, replay_seconds

    recorder = MatmulRecorder()
    with recorder:
        step()
    return {"matmul_calls": sum(recorder.calls.values())}, {
        "floor_s": lambda: replay_seconds(recorder.calls, device),
        "essential_s": lambda: replay_seconds(recorder.essential, device),
    }


def peer_worker(key: str, args: dict[str, Any], conn) -> None:
    """transformers' ViTMAE with MAE's recipe shape at one precision: count, floor, then timed steps."""
    import torch
    from mae_throughput import SHAPE, build_transformers, make_optimizer

    precision = key.split()[-1]
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    from mimkit.engine.dist import resolve_device

    device = resolve_device(args["device"])
    try:
        model, loss_fn = build_transformers(SHAPE, "sdpa")
        model.to(device).train()
        opt = make_optimizer(model, "fused")
    except Exception as err:
        conn.send({"error": f"{type(err).__name__}: {err}"})
        return
    images = torch.randn(
        args["batch"], SHAPE["in_chans"], SHAPE["img_size"], SHAPE["img_size"], device=device
    )

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(images)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    counts = count_step(model, step, args["batch"])
    matmuls, calls = record_matmuls(step, device)
    conn.send(
        {
            "recipe": "transformers ViTMAEForPreTraining, MAE recipe shape",
            "options": {"attn_implementation": "sdpa", "precision": precision},
            "notes": [],
            **counts,
            **matmuls,
            "params": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        }
    )
    serve_steps(conn, step, torch.cuda.synchronize if device.type == "cuda" else None, calls=calls)


def worker(method: str, args: dict[str, Any], conn) -> None:
    """One method in its own process: build it and a Trainer, count one step, then time steps on request."""
    set_allocator(args["glibc_defaults"])
    if method.startswith(PEER):
        return peer_worker(method, args, conn)
    import tempfile

    import torch

    from mimkit.engine.dist import DistEnv, resolve_device
    from mimkit.engine.trainer import Trainer

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="method_cost_") as run_dir:
        compiled = method.endswith(COMPILED)
        try:
            model, train_cfg, info = build(method.removesuffix(COMPILED), args)
            train_cfg = dataclasses.replace(train_cfg, compile=compiled)
            env = DistEnv(device=resolve_device(args["device"]))
            trainer = Trainer(model, _NoBatches(), train_cfg, run_dir, env=env)
        except Exception as err:  # report, do not leave the parent waiting
            conn.send({"error": f"{type(err).__name__}: {err}"})
            return
        device = env.device
        encoder = model.encoder
        h, w = encoder.img_size
        images = torch.randn(args["batch"], encoder.in_chans, h, w, device=device)  # normalised pixels
        labels = torch.zeros(args["batch"], dtype=torch.long, device=device)
        model.train()

        def step() -> None:  # what Trainer.fit does per batch (accum_steps 1), less logging
            trainer._micro_step(images, labels)
            trainer._optimizer_step()

        sync = torch.cuda.synchronize if device.type == "cuda" else None
        step_module = trainer.step_module
        try:
            # counted and recorded on the eager step: a compiled one dispatches the same products
            trainer.step_module = getattr(step_module, "_orig_mod", step_module)
            counts = count_step(model, step, args["batch"])
            matmuls, calls = record_matmuls(step, device)
            counts.update(matmuls)
            trainer.step_module = step_module
        except Exception as err:
            conn.send({"error": f"{type(err).__name__} in the first step: {err}"})
            return
        conn.send(
            {
                **info,
                **counts,
                "img_size": [h, w],
                "params": sum(p.numel() for p in model.parameters()),
                "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "encoder_params": sum(p.numel() for p in encoder.parameters()),
                "threads": torch.get_num_threads(),
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "torch": torch.__version__,
            }
        )
        serve_steps(conn, step, sync, calls=calls)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--encoder",
        default="vit_tiny_patch4_28",
        help="encoder name, the same for every method (default vit_tiny_patch4_28; vit_tiny_patch4_32 for "
        "32x32)",
    )
    parser.add_argument("--img-size", type=int, default=0, help="input side (default: the encoder's own)")
    parser.add_argument("--in-chans", type=int, default=1, help="input channels (default 1, grey)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument(
        "--methods", default=",".join(RECIPES), help=f"comma list of {', '.join(RECIPES)} (default all)"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time each method with train.compile=true (extra rows '<method> compiled'; their floor and "
        "FLOPs are recorded on the eager step, the same products; compiling happens in the warm-up steps)",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="auto (bf16 where the device has it natively, else fp32), bf16 autocast or fp32",
    )
    parser.add_argument(
        "--no-peer", dest="peer", action="store_false", help="leave out transformers' ViTMAE rows"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method per round (default 3)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before a method's first round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the methods alternate within each")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--glibc-defaults",
        action="store_true",
        help="glibc's allocator defaults in every worker (mimkit's own setting off): freed memory is "
        "page-faulted in again every step; default: kept for reuse on every side",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each round wait up to this many seconds for the machine to be idle (shared machines)",
    )
    parser.add_argument(
        "--out", default=None, help="directory to write method_cost.json and method_cost.md into"
    )
    args = parser.parse_args(argv)
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.method_list if m not in RECIPES]
    if not args.method_list or unknown:
        parser.error(f"--methods {args.methods!r}: use a comma list of {', '.join(RECIPES)}")
    if len(set(args.method_list)) != len(args.method_list):
        parser.error(f"--methods {args.methods!r} names a method twice")
    for name in ("batch", "steps", "rounds", "in_chans"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.img_size < 0:
        parser.error("--warmup and --img-size must be >= 0")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start one worker per method (and per peer precision), run the rounds, return the rows and notes."""
    from _roofline import matmul_peak_gflops

    from mimkit.engine.dist import resolve_device
    from mimkit.engine.precision import DTYPES, auto_to_native, device_capabilities

    device = resolve_device(args.device)
    requested, args.precision = args.precision, auto_to_native(args.precision, device)
    peak = matmul_peak_gflops(DTYPES[args.precision], device)
    keys = list(args.method_list)
    if args.compile:
        keys += [m + COMPILED for m in args.method_list]
    if args.peer:
        peer_precisions = ["fp32"] + (["bf16"] if device_capabilities(device).bf16 else [])
        keys += [f"{PEER} {p}" for p in peer_precisions]
    wargs = {
        k: getattr(args, k)
        for k in (
            "encoder",
            "img_size",
            "in_chans",
            "batch",
            "device",
            "precision",
            "threads",
            "glibc_defaults",
            "compile",
        )
    }

    def report(r: int, method: str, times: list[float]) -> None:
        rate = args.batch / statistics.median(times)
        print(f"round {r + 1}/{args.rounds} {method:>7s}: {rate:7.1f} img/s", file=sys.stderr, flush=True)

    timed = run_rounds(
        keys,
        worker,
        wargs,
        args.rounds,
        args.steps,
        args.warmup,
        args.quiet_wait,
        skip_failed=True,
        progress=report,
        round_calls=["floor_s", "essential_s"],
    )
    info, results = timed["info"], timed["results"]
    notes = [f"{m}: not run, {i['error']}" for m, i in info.items() if "error" in i]
    rows = []
    for method, res in results.items():
        med = statistics.median(res["times"])
        i = info[method]
        notes += [n for n in i["notes"] if n not in notes]  # a compiled row repeats its method's
        rows.append(
            {
                "method": method,
                "recipe": i["recipe"],
                "options": i["options"],
                "s_per_step": med,
                "img_per_s": args.batch / med,
                "ms_per_img": med * 1e3 / args.batch,
                "img_per_s_rounds": [round(args.batch / m, 1) for m in res["round_medians"]],
                "gflop_per_img": i["gflop_per_img"],
                "tokens_per_img": i["tokens_per_img"],
                "frozen_tokens_per_img": i["frozen_tokens_per_img"],
                "params": i["params"],
                "trainable": i["trainable"],
                "peak_rss_mb": res["peak_rss_mb"],
                "gflop_per_s": i["gflop_per_img"] * args.batch / med,
                "mfu": i["gflop_per_img"] * args.batch / med / peak,
                # each round's floor and essential work replayed right after its steps: shares per round
                "floor_s": statistics.median(res["floor_s"]),
                "floor_share": statistics.median(
                    f / m for f, m in zip(res["floor_s"], res["round_medians"], strict=True)
                ),
                "floor_share_rounds": [
                    round(f / m, 3) for f, m in zip(res["floor_s"], res["round_medians"], strict=True)
                ],
                "essential_s": statistics.median(res["essential_s"]),
                "share_ceiling": statistics.median(
                    f / (f + e) for f, e in zip(res["floor_s"], res["essential_s"], strict=True)
                ),
                "matmul_calls": i["matmul_calls"],
                "steps_timed": len(res["times"]),
                "other_load": statistics.mean(res["other_load"]) if res["other_load"] else None,
            }
        )
    mae = next((r for r in rows if r["method"] == "mae"), None)
    peers = [r for r in rows if r["method"].startswith(PEER)]
    best_peer = max(peers, key=lambda r: r["img_per_s"]) if peers else None
    for row in rows:
        row["cost_vs_mae"] = row["ms_per_img"] / mae["ms_per_img"] if mae else None
    for ours in [r for r in rows if r["method"] in ("mae", "mae" + COMPILED)] if best_peer else []:
        notes.append(
            f"mimkit {ours['method']} {ours['img_per_s']:.1f} img/s against the peer's best "
            f"({best_peer['method']}) {best_peer['img_per_s']:.1f}: "
            f"{ours['img_per_s'] / best_peer['img_per_s']:.2f}x"
        )
    first = next((i for i in info.values() if "error" not in i), {})
    return {
        "rows": rows,
        "notes": notes,
        "img_size": first.get("img_size"),
        "encoder_params": first.get("encoder_params"),
        "threads": first.get("threads"),
        "device": first.get("device"),
        "torch": first.get("torch"),
        "quiet_rounds": timed["quiet_rounds"],
        "precision_requested": requested,
        "precision": args.precision,
        "peak_gflops": peak,
        "peak_shape": "2048^3",
    }


def _tokens(row: dict[str, Any]) -> str:
    text = f"{row['tokens_per_img']:g}"
    return text + (f" + {row['frozen_tokens_per_img']:g} (teacher)" if row["frozen_tokens_per_img"] else "")


def render(args: argparse.Namespace, out: dict[str, Any]) -> str:
    """The markdown report: a header line, the table, and what the columns mean."""
    if not out["rows"]:
        return "No method ran.\n\n" + "\n".join(f"- {n}" for n in out["notes"]) + "\n"
    h, w = out["img_size"]
    from _timing import cpu_name

    where = out["device"] if out["device"] != "cpu" else f"CPU {cpu_name()}"
    lines = [
        f"Training step per method: encoder `{args.encoder}` ({out['encoder_params'] / 1e6:.2f}M parameters) "
        f"on {h}x{w}x{args.in_chans}, batch {args.batch}, precision {out['precision_requested']} -> "
        f"{out['precision']}, {where} ({out['threads']} threads), torch {out['torch']}; median of "
        f"{args.rounds} rounds x {args.steps} steps per row; "
        f"{'glibc allocator defaults' if args.glibc_defaults else 'freed host memory kept for reuse'} "
        f"in every worker. Machine peak ({out['peak_shape']} matrix "
        f"product, {out['precision']}): **{out['peak_gflops']:.0f} GFLOP/s**.",
        "",
        "| row | ms/step | img/s | cost vs MAE | GFLOP/img | GFLOP/s | MFU (of peak) | floor ms/step "
        "| floor share | essential ms/step | share ceiling | encoder tokens/img | params (trainable) "
        "| rounds (img/s) | peak RSS (MB) | other load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---:|---:|",
    ]
    for row in out["rows"]:
        ratio = "n/a" if row["cost_vs_mae"] is None else f"{row['cost_vs_mae']:.2f}x"
        load = "n/a" if row["other_load"] is None else f"{100 * row['other_load']:.0f}%"
        rates = row["img_per_s_rounds"]
        lines.append(
            f"| {row['method']} | {row['s_per_step'] * 1e3:.0f} | {row['img_per_s']:.1f} "
            f"| {ratio} | {row['gflop_per_img']:.3f} | {row['gflop_per_s']:.0f} | {100 * row['mfu']:.1f}% "
            f"| {row['floor_s'] * 1e3:.0f} | {100 * row['floor_share']:.0f}% "
            f"| {row['essential_s'] * 1e3:.0f} | {100 * row['share_ceiling']:.0f}% | {_tokens(row)} "
            f"| {row['params'] / 1e6:.2f}M ({row['trainable'] / 1e6:.2f}M) "
            f"| {min(rates):.0f}-{max(rates):.0f} | {row['peak_rss_mb']:.0f} | {load} |"
        )
    lines += [
        "",
        "- A step: `training_step` under the trainer's autocast, backward, gradient clipping (recipe), "
        "fused AdamW, `on_train_step_end` (SiT's EMA teacher), through mimkit's Trainer. A fixed random "
        "batch: data loading and the pipeline's augmentation are not timed; SiT's / GMML's own view "
        "augmentation runs inside `training_step` and is timed. Per image = per image of the batch (SiT: "
        "2 views each).",
        "- cost vs MAE: ms/img over MAE's ms/img (how many times MAE's cost). GFLOP/img: forward + backward "
        "matrix products and attention (`torch.utils.flop_counter`). Encoder tokens/img: tokens entering the "
        "first block of the trained encoder (class token included; MAE: visible only), plus the frozen "
        "teacher's.",
        "- MFU: GFLOP/s over the machine's peak. Floor: the step's own matrix products (GEMMs and "
        "convolutions, forward and backward, as dispatched; a fused attention kernel as the products the "
        "plain path runs for it) replayed alone; floor share = floor / step time (the target is >= 85% for "
        "MAE). Essential: the step's GELU, softmax, LayerNorm (forward and backward) and optimizer update "
        "replayed alone; share ceiling = floor / (floor + essential), the floor share of a step that ran "
        "nothing else. Both are replayed in every round right after the row's timed steps, and the shares "
        "are medians of the rounds' (a shared machine's speed drifts between rounds). "
        "benchmarks/_roofline.py.",
        "- other load: share of the machine's CPU time used by other processes while a method ran.",
    ]
    for row in out["rows"]:
        options = ", ".join(f"{k}={v}" for k, v in row["options"].items())
        lines.append(f"- {row['method']}: {row['recipe']} ({options})")
    lines += [f"- NOTE {n}" for n in out["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = run(args)
    text = render(args, out)
    print("\n" + text)
    if args.out:
        record = {"args": {k: v for k, v in vars(args).items() if k != "method_list"}, **out}
        json_path, md_path = write_report(args.out, "method_cost", record, text)
        print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0 if out["rows"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
