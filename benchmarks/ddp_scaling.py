"""Scaling of the MAE Fashion-MNIST recipe over processes: one process against torchrun's DDP and FSDP.

The same effective batch (``--batch`` images per step) on the same cores: one process with every core,
then ``--procs`` processes with ``cores / procs`` threads each (gloo on CPUs, NCCL on GPUs), with
``train.strategy`` ddp and fsdp. Each run trains ``--steps`` optimizer steps and reports its own images/s
line; ``--rounds`` alternate the rows.

    python benchmarks/ddp_scaling.py --json benchmarks/results/ddp_scaling/x.json
    python benchmarks/ddp_scaling.py --procs 8 --device cuda     # a GPU node: 1 GPU against 8
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
from pathlib import Path

from _timing import cli_images_per_s, machine_info, write_json  # benchmarks/_timing.py

ROOT = Path(__file__).resolve().parents[1]


def run(procs: int, strategy: str, args, out: Path) -> float:
    cores = os.cpu_count() or 1
    overrides = [
        "--config", "configs/mae_fashion_mnist.yaml", f"train.batch_size={args.batch // procs}",
        f"train.max_steps={args.steps}", f"train.strategy={strategy}", f"train.device={args.device}",
        "train.progress=false", "train.tensorboard=false", "train.resume=false", f"output_dir={out}",
    ]  # fmt: skip
    if procs == 1:
        cmd = [sys.executable, "-m", "mimkit.cli", "pretrain", *overrides]
    else:
        torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
        cmd = [
            torchrun,
            "--standalone",
            f"--nproc_per_node={procs}",
            "-m",
            "mimkit.cli",
            "pretrain",
            *overrides,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // procs))}
    return cli_images_per_s(cmd, ROOT, env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256, help="effective batch (per step, all processes)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", default="/tmp/ddp_scaling")
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = {"1 process": (1, "ddp"), f"{args.procs} processes, DDP": (args.procs, "ddp"),
            f"{args.procs} processes, FSDP": (args.procs, "fsdp")}  # fmt: skip
    rates: dict[str, list[float]] = {name: [] for name in rows}
    for r in range(args.rounds):
        for name, (procs, strategy) in rows.items():
            rates[name].append(run(procs, strategy, args, Path(args.work) / "run"))
            print(f"round {r}: {name}: {rates[name][-1]:.1f} images/s", flush=True)
    base = statistics.median(rates["1 process"])
    result = {"machine": machine_info(), "date": datetime.date.today().isoformat(), "args": vars(args),
              "rows": {n: {"median": statistics.median(v), "rounds": v, "vs_one": statistics.median(v) / base}
                       for n, v in rates.items()}}  # fmt: skip
    for name, row in result["rows"].items():
        print(f"{name}: {row['median']:.1f} images/s ({row['vs_one']:.2f} of one process)")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
