"""Training steps with glibc's allocator defaults against freed memory kept for reuse (the trainer's own
setting on the CPU, :mod:`mimkit.engine.host_memory`).

For each method (MAE, SimMIM, SiT, GMML on the same encoder, each with its Fashion-MNIST recipe's options,
built as in method_cost.py) two worker processes: one with glibc's defaults (``MIMKIT_KEEP_FREED_MEMORY=0``)
and one with freed memory kept, timed in interleaved rounds (benchmarks/_timing.py). Per row: the median
step time, the page faults per step (minor faults, ``getrusage``) and the peak resident memory.
``--mapped-large-blocks`` adds a third process per method: freed memory kept, but blocks over glibc's
largest mmap threshold (32 MiB) still served by ``mmap`` (glibc's ``M_MMAP_MAX`` default, 65,536), as
mimkit's setting was before 2026-12-03; those are returned to the OS when freed and faulted in again.

    python benchmarks/host_memory.py                       # every method, precision auto, batch 256
    python benchmarks/host_memory.py --precision fp32 --methods mae --out runs/host_memory
    python benchmarks/host_memory.py --mapped-large-blocks --methods sit
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
MAPPED = "kept, large blocks mapped"  # --mapped-large-blocks
_GLIBC_MMAP_MAX = 65536  # glibc's default M_MMAP_MAX


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def worker(key: tuple[str, str], args: dict[str, Any], conn) -> None:
    """One method with one allocator setting: build it and a Trainer, then serve timed steps."""
    method, setting = key
    allocator = set_allocator(glibc_defaults=setting == "glibc defaults")
    if setting == MAPPED:  # undo one part of mimkit's setting: large blocks mapped again
        import ctypes

        from mimkit.engine.host_memory import _M_MMAP_MAX

        if not ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX):
            conn.send({"error": "mallopt(M_MMAP_MAX) refused"})
            return
        allocator += ", large blocks mapped"
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
    parser.add_argument(
        "--mapped-large-blocks", action="store_true", help=f"add the setting '{MAPPED}' (blocks over 32 MiB)"
    )
    parser.add_argument("--out", default=None, help="directory to write host_memory.json and .md into")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or any(m not in RECIPES for m in methods):
        parser.error(f"--methods {args.methods!r}: use a comma list of {', '.join(RECIPES)}")
    settings = SETTINGS + ((MAPPED,) if args.mapped_large_blocks else ())
    keys = [(m, s) for m in methods for s in settings]
    wargs = {"encoder": args.encoder, "batch": args.batch, "precision": args.precision}

    def report(r: int, key: tuple[str, str], times: list[float]) -> None:
        rate = args.batch / statistics.median(times)
        print(f"round {r + 1}/{args.rounds} {key[0]:>7s} {key[1]:>14s}: {rate:7.1f} img/s", file=sys.stderr)

    timed = run_rounds(
        keys, worker, wargs, args.rounds, args.steps, args.warmup, progress=report, calls=["faults_per_step"]
    )
    info, results = timed["info"], timed["results"]
    rows = []
    for method in methods:
        res = {s: results[(method, s)] for s in settings}
        times = {s: statistics.median(r["times"]) for s, r in res.items()}
        rows.append(
            {
                "method": method,
                "ms_per_step": {s: t * 1e3 for s, t in times.items()},
                "img_per_s": {s: args.batch / t for s, t in times.items()},
                "time_ratio": {s: t / times[SETTINGS[0]] for s, t in times.items()},
                "faults_per_step": {s: r["faults_per_step"] for s, r in res.items()},
                "peak_rss_mb": {s: r["peak_rss_mb"] for s, r in res.items()},
                "other_load": statistics.mean(x for r in res.values() for x in r["other_load"]),
            }
        )
    first = info[keys[0]]
    others = settings[1:]
    lines = [
        f"Training step, glibc's allocator defaults against freed memory kept: encoder `{args.encoder}`, "
        f"batch {args.batch}, precision {args.precision} -> {first['precision']}, CPU {cpu_name()} "
        f"({first['threads']} threads), torch {first['torch']}; median of {args.rounds} rounds x "
        f"{args.steps} steps per row.",
        "",
        "| method | "
        + " | ".join(f"ms/step, {s}" for s in settings)
        + " | "
        + " | ".join(f"{s} / defaults" for s in others)
        + " | "
        + " | ".join(f"page faults/step, {s}" for s in settings)
        + " | "
        + " | ".join(f"peak RSS MB, {s}" for s in settings)
        + " | other load |",
        "|---|" + "---:|" * (4 * len(settings)),
    ]
    for row in rows:
        cells = [f"{row['ms_per_step'][s]:.0f}" for s in settings]
        cells += [f"{row['time_ratio'][s]:.2f}" for s in others]
        cells += [f"{row['faults_per_step'][s]:,.0f}" for s in settings]
        cells += [f"{row['peak_rss_mb'][s]:.0f}" for s in settings]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + f" | {100 * row['other_load']:.0f}% |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        write_report(
            args.out, "host_memory", {"args": vars(args), "precision": first["precision"], "rows": rows}, text
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
