"""Pretraining throughput on 16-bit and float images against 8-bit images of the same size and bands.

The issue's target: a pretraining step on 16-bit 3-channel data within 10% of uint8 RGB of the same size
(the data path must not become the bottleneck), and the in-memory store of uint8 data unchanged in size.

Each storage kind (``uint8``, ``uint16``, ``float32``) gets an in-memory ImageDataset of random images
(the kind's full range) and runs, in its own worker process:
- ``step``: what the trainer does per batch: the next batch from mimkit's BatchLoader, the MAE
  augmentation on the device (RandomResizedCrop + flip + normalisation), forward under the native
  precision, backward, AdamW step;
- ``data``: the loader and the augmentation alone.
Workers are timed in interleaved rounds (benchmarks/_timing.py); a row's rate is the batch over the median
step time. The store's bytes per image are reported next to it.

    python benchmarks/field_throughput.py                        # 64x64 RGB, batch 128, ViT-Tiny/8 MAE
    python benchmarks/field_throughput.py --size 224 --patch 16 --batch 32 --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys

from _timing import machine_info, run_rounds, set_allocator  # benchmarks/_timing.py

KINDS = ("uint8", "uint16", "float32")
PARTS = ("step", "data")


def _dataset(kind: str, n: int, size: int, channels: int):
    import torch

    from mimkit.data import ImageDataset

    g = torch.Generator().manual_seed(0)
    if kind == "float32":
        images = torch.rand(n, channels, size, size, generator=g)
    else:
        top = 256 if kind == "uint8" else 65536
        images = torch.randint(0, top, (n, channels, size, size), generator=g, dtype=torch.int32)
        images = images.to(getattr(torch, kind))
    mean, std = [0.5] * channels, [0.29] * channels  # uniform values in unit scale
    return ImageDataset(
        torch.zeros(n, dtype=torch.long), [], channels, (size, size), mean, std, images=images
    )


def worker(key, args, conn) -> None:
    kind, part = key
    try:
        import torch

        set_allocator(glibc_defaults=False)
        torch.manual_seed(0)
        from mimkit.data import build_loader
        from mimkit.data.transforms import PretrainAugment
        from mimkit.engine.optim import build_adamw, param_groups
        from mimkit.engine.precision import auto_to_native, autocast
        from mimkit.methods import create_method
        from mimkit.models import create_encoder

        data = _dataset(kind, args["images"], args["size"], args["channels"])
        loader = build_loader(data, args["batch"], shuffle=True, seed=0)
        augment = PretrainAugment(data.img_size, data.mean, data.std, "mae")
        precision = auto_to_native("auto", "cpu")
        encoder = create_encoder(
            "vit_tiny_patch4_28", img_size=args["size"], patch_size=args["patch"], in_chans=args["channels"]
        )
        model = create_method("mae", encoder=encoder, decoder_dim=128, decoder_depth=4, decoder_heads=4)
        optimizer = build_adamw(param_groups(model, 0.05), 1e-4, (0.9, 0.95))
        batches = iter(())
        epoch = [0]

        def next_batch():
            nonlocal batches
            try:
                return next(batches)[0]
            except StopIteration:
                epoch[0] += 1
                loader.set_epoch(epoch[0])
                batches = iter(loader)
                return next(batches)[0]

        def step() -> None:
            x = augment(next_batch())
            if part == "data":
                return
            with autocast(precision, "cpu"):
                loss = model.training_step((x, None))["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        conn.send({"precision": precision, "store_bytes_per_image": data.images[0].nbytes})
    except Exception as err:  # noqa: BLE001 - reported to the parent
        conn.send({"error": f"{type(err).__name__}: {err}"})
        return
    from _timing import serve_steps

    serve_steps(conn, step)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    cfg = vars(args)
    keys = [(kind, part) for part in PARTS for kind in KINDS]
    out = run_rounds(keys, worker, cfg, rounds=args.rounds, steps=args.steps, warmup=2)
    rows = []
    for key in keys:
        median = statistics.median(out["results"][key]["times"])
        rounds = out["results"][key]["round_medians"]
        rows.append({"kind": key[0], "part": key[1], "images_per_s": args.batch / median, "median_s": median,
                     "round_medians_s": rounds, **out["info"][key]})  # fmt: skip
    by = {(r["kind"], r["part"]): r for r in rows}
    machine = machine_info()
    print(f"{machine['cpu']}, {machine['cpus']} CPUs, torch {machine.get('torch')}; precision "
          f"{rows[0]['precision']}; {args.channels}x{args.size}x{args.size}, batch {args.batch}")  # fmt: skip
    spread = max(
        (max(r["round_medians_s"]) - min(r["round_medians_s"])) / r["median_s"]
        for r in rows
        if r["part"] == "step"
    )
    print(f"round-to-round spread of a step's median: up to {100 * spread:.0f}% of it")
    print("| storage | bytes / image | step img/s | vs uint8 | data path img/s | vs uint8 |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind in KINDS:
        s, d = by[(kind, "step")], by[(kind, "data")]
        s8, d8 = by[("uint8", "step")], by[("uint8", "data")]
        print(
            f"| {kind} | {s['store_bytes_per_image']:,} | {s['images_per_s']:.0f} | "
            f"{s['images_per_s'] / s8['images_per_s']:.3f} | {d['images_per_s']:.0f} | "
            f"{d['images_per_s'] / d8['images_per_s']:.3f} |"
        )
    if args.json:
        record = {"date": datetime.date.today().isoformat(), "machine": machine, "args": cfg, "rows": rows}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
