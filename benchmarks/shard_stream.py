"""Tar shards against the MAE step: is the streamed loader ever the bottleneck?

The issue's target: a 20,000-image JPEG folder packed (``mimkit shards make``) and streamed at no less than
the MAE step rate on this machine, measured as the step with and without the data.

1. Writes the first ``--images`` Fashion-MNIST training images as JPEG files (quality 95, one folder per
   class), then packs them into shards of ``--shard-size`` (both timed).
2. ``stream``: the :class:`~mimkit.data.shards.ShardLoader` alone, one epoch, with 0, 1 and 2 loader
   workers: images per second read, shuffled, decoded and batched.
3. ``train``: ``mimkit pretrain`` with the MAE Fashion-MNIST recipe for ``--steps`` optimizer steps, its own
   images/s line, on (a) the same JPEG folder decoded once into memory (batches are slices: the step
   without data) and (b) the shards streamed with 0 and 1 loader workers. ``--rounds`` alternate them.

    python benchmarks/shard_stream.py --work /tmp/shard_bench --json benchmarks/results/shard_stream/x.json
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

from _timing import cli_images_per_s, machine_info, write_json  # benchmarks/_timing.py

ROOT = Path(__file__).resolve().parents[1]
FMNIST = "/usr/share/datasets/fashion-mnist"


def write_jpegs(out: Path, n: int) -> float:
    import numpy as np
    from PIL import Image

    from mimkit.data.config import DataConfig
    from mimkit.data.datasets import build_dataset

    data = build_dataset(DataConfig(source="fashion_mnist", root=FMNIST, limit=n), "train")
    t = time.perf_counter()
    for i in range(len(data)):
        image, label = data[i]
        folder = out / data.classes[label].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(image[0])).save(folder / f"{i:05d}.jpg", quality=95)
    return time.perf_counter() - t


def stream_rate(shards: Path, workers: int, batch: int) -> float:
    from mimkit.data.config import DataConfig
    from mimkit.data.shards import ShardLoader, ShardSet

    loader = ShardLoader(ShardSet(DataConfig(source="shards", root=str(shards))), batch, num_workers=workers)
    t = time.perf_counter()
    n = sum(images.shape[0] for images, _ in loader)
    return n / (time.perf_counter() - t)


def train_rate(data: list[str], steps: int, out: Path) -> float:
    cmd = [
        sys.executable, "-m", "mimkit.cli", "pretrain", "--config", "configs/mae_fashion_mnist.yaml", *data,
        f"train.max_steps={steps}", "train.progress=false", "train.tensorboard=false", "train.resume=false",
        f"output_dir={out}",
    ]  # fmt: skip
    return cli_images_per_s(cmd, ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/shard_bench", help="where the JPEGs, shards and runs go")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per training run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--json")
    args = parser.parse_args()
    work = Path(args.work)
    jpeg, shards = work / "jpeg", work / "shards"
    result: dict = {"machine": machine_info(), "date": datetime.date.today().isoformat(), "args": vars(args)}
    if not jpeg.is_dir():
        result["write_jpegs_s"] = write_jpegs(jpeg, args.images)
    from mimkit.data.packing import pack_shards

    t = time.perf_counter()
    pack_shards(jpeg, shards, args.shard_size, force=True)
    result["pack_s"] = time.perf_counter() - t
    print(f"packed {args.images} JPEGs into shards in {result['pack_s']:.1f} s", flush=True)

    result["stream"] = {}
    for workers in (0, 1, 2):
        result["stream"][workers] = rate = stream_rate(shards, workers, args.batch)
        print(f"stream, {workers} worker(s): {rate:.0f} images/s", flush=True)

    rows = {
        "folder in memory (no data cost)": ["data.source=folder", f"data.root={jpeg}", "data.in_memory=true"],
        "shards, 0 workers": ["data.source=shards", f"data.root={shards}", "data.num_workers=0"],
        "shards, 1 worker": ["data.source=shards", f"data.root={shards}", "data.num_workers=1"],
    }
    rates: dict[str, list[float]] = {name: [] for name in rows}
    for r in range(args.rounds):
        for name, data in rows.items():
            rates[name].append(
                train_rate([*data, f"train.batch_size={args.batch}"], args.steps, work / "run")
            )
            print(f"round {r}: train on {name}: {rates[name][-1]:.1f} images/s", flush=True)
    result["train"] = {name: {"median": statistics.median(v), "rounds": v} for name, v in rates.items()}
    base = result["train"]["folder in memory (no data cost)"]["median"]
    for name, row in result["train"].items():
        row["vs_in_memory"] = row["median"] / base
        print(f"{name}: {row['median']:.1f} images/s ({row['vs_in_memory']:.3f} of in memory)")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
