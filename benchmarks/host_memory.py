"""Training steps with glibc's allocator defaults against freed memory kept for reuse (the trainer's own
setting on the CPU, :mod:`mimkit.engine.host_memory`).

For each method (MAE, SimMIM, SiT, GMML on the same encoder, each with its Fashion-MNIST recipe's options,
built as in method_cost.py) two worker processes: one with glibc's defaults (``MIMKIT_KEEP_FREED_MEMORY=0``)
and one with freed memory kept, timed in interleaved rounds (benchmarks/_timing.py). Per row: the median
step time, the page faults per step (minor faults, ``getrusage``) and the peak resident memory.

    python benchmarks/host_memory.py                       # every method, precision auto, batch 256
    python benchmarks/host_memory.py --precision fp32 --methods mae --out runs/host_memory
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
from typing import Any

from _timing import cpu_name, run_rounds, serve_steps, set_allocator, write_report  # benchmarks/_timing.py
from method_cost import RECIPES, _NoBatches, build  # benchmarks/method_cost.py

SETTINGS = ("glibc defaults", "kept")


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def worker(key: tuple[str, str], args: dict[str, Any], conn) -> None:
    """One method with one allocator setting: build it and a Trainer, then serve timed steps."""
    method, setting = key
    allocator = set_allocator(glibc_defaults=setting == "glibc defaults")
    import torch

    from mimkit.engine.dist import DistEnv
    from mimkit.engine.trainer import Trainer

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="host_memory_") as run_dir:
        try:
            model, train_cfg, _ = build(method, {**args, "img_size": 0, "in_chans": 1, "device": "cpu"})
            env = DistEnv(device=torch.device("cpu"))
            trainer = Trainer(model, _NoBatches(), train_cfg, run_dir, env=env)
        except Exception as err:  # report, do not leave the parent waiting
            conn.send({"error": f"{type(err).__name__}: {err}"})
            return
        h, w = model.encoder.img_size
        images = torch.randn(args["batch"], 1, h, w)
        labels = torch.zeros(args["batch"], dtype=torch.long)
        model.train()
        faults: list[int] = []

        def step() -> None:  # the trainer's step, as in method_cost.py, with its page faults counted
            before = _faults()
            trainer._micro_step(images, labels)
            trainer._optimizer_step()
            faults.append(_faults() - before)

        conn.send(
            {
                "allocator": allocator,
                "kept": trainer.keeps_freed_memory,
                "precision": trainer.precision.precision,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            }
        )
        serve_steps(conn, step, calls={"faults_per_step": lambda: statistics.median(faults[1:])})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", default="vit_tiny_patch4_28")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--methods", default=",".join(RECIPES), help="comma list (default every method)")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", default=None, help="directory to write host_memory.json and .md into")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or any(m not in RECIPES for m in methods):
        parser.error(f"--methods {args.methods!r}: use a comma list of {', '.join(RECIPES)}")
    keys = [(m, s) for m in methods for s in SETTINGS]
    wargs = {"encoder": args.encoder, "batch": args.batch, "precision": args.precision}

    def report(r: int, key: tuple[str, str], times: list[float]) -> None:
        rate = args.batch / statistics.median(times)
        print(f"round {r + 1}/{args.rounds} {key[0]:>7s} {key[1]:>14s}: {rate:7.1f} img/s", file=sys.stderr)

    timed = run_rounds(
        keys, worker, wargs, args.rounds, args.steps, args.warmup, progress=report, calls=["faults_per_step"]
    )
    info, results = timed["info"], timed["results"]
    rows = []
    d, k = SETTINGS
    for method in methods:
        default, kept = results[(method, SETTINGS[0])], results[(method, SETTINGS[1])]
        t_default, t_kept = statistics.median(default["times"]), statistics.median(kept["times"])
        rows.append(
            {
                "method": method,
                "ms_per_step": {d: t_default * 1e3, k: t_kept * 1e3},
                "img_per_s": {d: args.batch / t_default, k: args.batch / t_kept},
                "time_ratio_kept": t_kept / t_default,
                "faults_per_step": {d: default["faults_per_step"], k: kept["faults_per_step"]},
                "peak_rss_mb": {d: default["peak_rss_mb"], k: kept["peak_rss_mb"]},
                "other_load": statistics.mean(default["other_load"] + kept["other_load"]),
            }
        )
    first = info[keys[0]]
    lines = [
        f"Training step, glibc's allocator defaults against freed memory kept: encoder `{args.encoder}`, "
        f"batch {args.batch}, precision {args.precision} -> {first['precision']}, CPU {cpu_name()} "
        f"({first['threads']} threads), torch {first['torch']}; median of {args.rounds} rounds x "
        f"{args.steps} steps per row.",
        "",
        "| method | ms/step, defaults | ms/step, kept | kept / defaults | page faults/step, defaults | "
        "page faults/step, kept | peak RSS MB, defaults | peak RSS MB, kept | other load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['ms_per_step'][d]:.0f} | {row['ms_per_step'][k]:.0f} "
            f"| {row['time_ratio_kept']:.2f} | {row['faults_per_step'][d]:,.0f} "
            f"| {row['faults_per_step'][k]:,.0f} "
            f"| {row['peak_rss_mb'][d]:.0f} | {row['peak_rss_mb'][k]:.0f} | {100 * row['other_load']:.0f}% |"
        )
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        write_report(
            args.out, "host_memory", {"args": vars(args), "precision": first["precision"], "rows": rows}, text
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
