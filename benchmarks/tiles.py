"""Chips of a large scene (data.tile): memory while training, and chip throughput against separate files.

The issue's targets: a 10,000 x 10,000 13-band uint16 tiled TIFF (2.6 GB, generated) trains as 64 x 64 chips
with memory bounded by the chips in flight, not by the scene; chips read from the tiled TIFF come within 20%
of the same chips stored as separate files.

1. Writes the scene (tifffile, TIFF tiles 256 x 256, uncompressed; one random tile of values in 1..9999,
   rolled by and offset by the tile's number, except a 1024 x 2048 block of zeros at the top left: 512
   nodata chips) unless it is there already.
2. ``scan``: :func:`mimkit.data.items.expand` cuts it into 64 x 64 chips (stride 64) and finds the nodata
   ones: 156 x 156 = 24,336 by the formula, 512 of them nodata. Timed, page cache warm.
3. ``throughput``: ``--chips`` chips from a 4096 x 4096 window, in a seeded random order, each decoded
   as a folder dataset decodes it (``decode_image``: read, bands, dtype, size), from (a) the tiled TIFF,
   (b) the same chips as separate ``.npy`` files, (c) as separate uncompressed ``.tif`` files; and (d)
   from a deflate-compressed tiled TIFF of the window (the decoded-tile cache at work), in random and in
   row order. ``--rounds`` rounds alternate the sides after a warm-up pass (page cache warm for all).
   Reported per CPU second of the process (user + system: robust on a shared machine) and per second
   of wall time.
4. ``memory``: ``mimkit pretrain`` (the 13-band MAE recipe, ``data.in_memory=false``) for ``--steps``
   steps on the scene cut into chips, and on the separate ``.npy`` chips, each in its own process:
   peak RSS of each (statistics sample of 2,000 chips included) against the scene's 2.6 GB.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/tiles.py --work /tmp/tiles_bench \
        --json benchmarks/results/tiles/zen4.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _timing import machine_info, write_json  # benchmarks/_timing.py

ROOT = Path(__file__).resolve().parents[1]
SIZE, BANDS, TILE, CHIP = 10_000, 13, 256, 64
NODATA_BLOCK = (1024, 2048)


def instruction_sets() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "sve")
    return " ".join(f for f in wanted if f in flags) or "none of avx2 / avx512f / amx"


def write_scene(path: Path, size: int) -> float:
    import tifffile

    base = np.random.default_rng(0).integers(1, 10_000, (TILE, TILE, BANDS), dtype=np.uint16)
    across = -(-size // TILE)

    def tiles():
        for ty in range(across):
            for tx in range(across):
                if ty * TILE < NODATA_BLOCK[0] and tx * TILE < NODATA_BLOCK[1]:
                    yield np.zeros((TILE, TILE, BANDS), np.uint16)
                else:
                    k = ty * across + tx  # every tile its own values: the random tile rolled and offset
                    yield np.roll(base, (k % TILE, 7 * k % TILE), axis=(0, 1)) + np.uint16(k % 50_000)

    path.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    tifffile.imwrite(path, tiles(), shape=(size, size, BANDS), dtype=np.uint16, tile=(TILE, TILE),
                     photometric="minisblack", planarconfig="contig")  # fmt: skip
    return time.perf_counter() - t


def write_separate(scene: Path, boxes: list, origin: tuple[int, int], work: Path) -> tuple[Path, Path, Path]:
    """The chips as .npy files, as .tif files, and the window as a deflate-compressed tiled TIFF."""
    import tifffile

    from mimkit.data.tiles import read_region

    npy, tif = work / "chips_npy", work / "chips_tif"
    npy.mkdir(parents=True, exist_ok=True)
    tif.mkdir(parents=True, exist_ok=True)
    for top, left, h, w in boxes:
        chip = read_region(scene, (top, left, h, w))
        np.save(npy / f"{top:05d}_{left:05d}.npy", chip)
        tifffile.imwrite(
            tif / f"{top:05d}_{left:05d}.tif", chip, photometric="minisblack", planarconfig="contig"
        )
    deflate = work / "window_deflate.tif"
    window = read_region(scene, (*origin, 4096, 4096))
    tifffile.imwrite(deflate, window, tile=(TILE, TILE), compression="zlib", photometric="minisblack",
                     planarconfig="contig")  # fmt: skip
    return npy, tif, deflate


def chips_per_s(items: list, rounds_out: list[tuple[float, float]]) -> None:
    """Decode ``items``; append ``(chips per second of wall time, chips per CPU second of this process)``."""
    import torch

    from mimkit.data.images import DecodeOptions, decode_image

    options = DecodeOptions(dtype=torch.uint16)
    t, cpu = time.perf_counter(), time.process_time()
    for item in items:
        decode_image(item, BANDS, (CHIP, CHIP), "stretch", options)
    rounds_out.append((len(items) / (time.perf_counter() - t), len(items) / (time.process_time() - cpu)))


def throughput(scene: Path, size: int, work: Path, n: int, rounds: int) -> dict:
    from mimkit.data.parts import Part

    top0 = left0 = min(3072, size - 4096)  # a window clear of the nodata block (on the full-size scene)
    grid = [(top0 + r * CHIP, left0 + c * CHIP, CHIP, CHIP) for r in range(64) for c in range(64)]
    order = np.random.default_rng(1).permutation(len(grid))[:n]
    boxes = [grid[i] for i in order]
    npy, tif, deflate = write_separate(scene, boxes, (top0, left0), work)
    sides = {
        "tiled TIFF (uncompressed)": [Part(scene, None, b) for b in boxes],
        "separate .npy files": [npy / f"{t:05d}_{c:05d}.npy" for t, c, _, _ in boxes],
        "separate .tif files": [tif / f"{t:05d}_{c:05d}.tif" for t, c, _, _ in boxes],
        "tiled TIFF, deflate, random order": [
            Part(deflate, None, (t - top0, c - left0, h, w)) for t, c, h, w in boxes
        ],
        "tiled TIFF, deflate, row order": sorted(
            [Part(deflate, None, (t - top0, c - left0, h, w)) for t, c, h, w in boxes], key=lambda p: p.box
        ),
    }
    for items in sides.values():  # warm-up: page cache, open files
        chips_per_s(items, [])
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for r in range(rounds):
        for name in list(sides)[r % len(sides) :] + list(sides)[: r % len(sides)]:
            chips_per_s(sides[name], rates[name])
        print(f"round {r}: " + ", ".join(f"{k}: {v[-1][1]:.0f}" for k, v in rates.items()), flush=True)
    out = {
        name: {
            "wall_median": statistics.median(w for w, _ in v),
            "cpu_median": statistics.median(c for _, c in v),
            "rounds": v,
        }
        for name, v in rates.items()
    }
    base = out["separate .npy files"]
    for row in out.values():
        row["cpu_vs_npy_files"] = row["cpu_median"] / base["cpu_median"]
        row["wall_vs_npy_files"] = row["wall_median"] / base["wall_median"]
    return out


CHILD = """
import resource, sys, time
from mimkit.cli import main
t = time.perf_counter()
code = main(sys.argv[1:])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print("PEAK_RSS_MB", peak, time.perf_counter() - t, code)
"""


def pretrain_rss(root: Path, extra: list[str], steps: int, out: Path) -> dict:
    cmd = [
        sys.executable, "-c", CHILD, "pretrain", "--config", "configs/multispectral13_cpu.yaml",
        f"data.root={root}", "data.in_memory=false", "data.num_workers=0", "data.clip=null",
        "data.labeled=false", "data.holdout=null", "train.batch_size=32", f"train.max_steps={steps}",
        "train.progress=false", "train.tensorboard=false", "train.resume=false",
        "train.picture_every_minutes=1000", f"output_dir={out}",
        *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    line = next((x for x in done.stdout.splitlines() if x.startswith("PEAK_RSS_MB")), None)
    if line is None or not line.endswith(" 0"):
        raise RuntimeError(done.stderr[-3000:])
    _, rss, seconds, _ = line.split()
    trained = next((x for x in done.stderr.splitlines() if "trained steps" in x), "")
    return {"peak_rss_mb": float(rss), "seconds": float(seconds), "trained": trained.split(" INFO ")[-1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/tiles_bench", help="where the scene, chips and runs go")
    parser.add_argument("--size", type=int, default=SIZE, help="the scene's side in pixels (>= 4096)")
    parser.add_argument("--chips", type=int, default=2048, help="chips in the throughput comparison")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per memory run")
    parser.add_argument("--json")
    args = parser.parse_args()
    work = Path(args.work)
    scene = work / f"scene{args.size}" / "scene.tif"
    result: dict = {
        "machine": {**machine_info(), "instructions": instruction_sets()},
        "date": datetime.date.today().isoformat(),
        "args": vars(args),
    }
    print(
        f"{result['machine']['cpu']}; {result['machine']['instructions']}; load {os.getloadavg()}", flush=True
    )
    if not scene.is_file():
        result["write_scene_s"] = write_scene(scene, args.size)
        print(f"wrote {scene} ({scene.stat().st_size / 2**30:.2f} GiB) in {result['write_scene_s']:.0f} s")
    result["scene_bytes"] = scene.stat().st_size

    from mimkit.data.items import expand, item_spec

    t, cpu = time.perf_counter(), time.process_time()
    chips, _ = expand([scene], [-1], item_spec(tile=CHIP))
    scan = result["scan"] = {
        "chips": len(chips),
        "seconds": time.perf_counter() - t,
        "cpu_seconds": time.process_time() - cpu,
        "formula": ((args.size - CHIP) // CHIP + 1) ** 2,
    }
    seconds, cpu = scan["seconds"], scan["cpu_seconds"]
    print(f"scan: {len(chips)} chips of {scan['formula']} in {seconds:.1f} s ({cpu:.1f} CPU s)")

    result["throughput"] = throughput(scene, args.size, work, args.chips, args.rounds)
    for name, row in result["throughput"].items():
        cpu, wall = row["cpu_median"], row["wall_median"]
        print(f"{name}: {cpu:.0f} chips per CPU second ({row['cpu_vs_npy_files']:.2f} of .npy files), "
              f"{wall:.0f} chips/s wall ({row['wall_vs_npy_files']:.2f})")  # fmt: skip
    result["load_average"] = os.getloadavg()

    result["memory"] = {
        "scene as 64x64 chips": pretrain_rss(scene.parent, ["data.tile=64"], args.steps, work / "run_scene"),
        f"{args.chips} separate .npy chips": pretrain_rss(
            work / "chips_npy", [], args.steps, work / "run_npy"
        ),
    }
    for name, row in result["memory"].items():
        rss, seconds = row["peak_rss_mb"], row["seconds"]
        print(f"pretrain on {name}: peak RSS {rss:.0f} MB ({seconds:.0f} s); {row['trained']}")
    write_json(args.json, result)
    if not args.json:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
