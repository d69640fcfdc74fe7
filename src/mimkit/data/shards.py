"""Tar shards in the WebDataset layout, streamed: for image sets of too many files to read one by one.
:mod:`mimkit.data.packing` makes them (``mimkit shards make SRC OUT``).

``data.source: shards`` with ``data.root: OUT`` streams them (:class:`ShardLoader`): every epoch the shards
are put in an order drawn from ``seed + epoch``; process ``r`` of ``W`` takes shards ``r, r + W, ...``,
and its loader workers split those the same way; each worker reads its tar files front to back (one
sequential read per shard, no seeks), passes the members through a shuffle buffer (``data.shuffle_buffer``
images, seeded by seed, epoch, process and worker), decodes them and hands over whole batches. Every
process yields the same number of batches per epoch, ``(images // W) // batch_size`` as for a folder: a
worker whose shards run short (uneven shard sizes, an unreadable shard) starts its list again. A run
resumed mid-epoch replays each worker's stream without decoding the batches already trained on, so it
continues exactly, on the same number of processes and workers (on others it continues at the same count
of images, from another order).

Written with the standard ``tarfile`` module rather than the ``webdataset`` library: the layout is the
same (webdataset reads these shards), and the order, rank / worker split, quotas and mid-epoch resume
that the trainer needs are the part that matters here, which webdataset's pipeline would have to be
bent into; ``tarfile`` adds no dependency.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mimkit.data.config import DataConfig
from mimkit.data.images import (
    STORE_DTYPES,
    ImageInfo,
    ImageSet,
    UnreadableImageError,
    decode_bytes,
    decode_setup,
)
from mimkit.data.loader import EpochCursor
from mimkit.data.stats import STATS_SAMPLE, apply_clip, channel_stats, normalization, resolve_clip

logger = logging.getLogger(__name__)

INDEX = "shards.json"
FORMAT = "mimkit-shards/1"


@dataclass(frozen=True)
class Shard:
    path: Path
    count: int
    first: int  # the global index of its first image


def read_shard(shard: Shard) -> Iterator[tuple[int, str, bytes, int]]:
    """``(global index, member name, bytes, label or -1)`` per image of a shard, front to back.

    Members of one key (``000000042.jpg``, ``000000042.cls``) are grouped as WebDataset does; a shard that
    breaks off (truncated, corrupt) ends where it breaks, with a warning.
    """
    position, key, image, label = 0, None, None, -1

    def done():
        return (shard.first + position, image[0], image[1], label) if image is not None else None

    try:
        with tarfile.open(shard.path, "r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                stem, _, ext = member.name.rpartition("/")[2].partition(".")
                if stem != key:
                    item = done()
                    if item is not None:
                        yield item
                        position += 1
                        if position >= shard.count:  # data.limit may cut a shard short
                            return
                    key, image, label = stem, None, -1
                data = tar.extractfile(member).read()
                if ext == "cls":
                    label = int(data.decode().strip() or -1)
                elif ext == "id":  # a slice's or chip's sample id (packing.py): for the record
                    continue
                elif image is None:
                    image = (member.name, data)
        item = done()
        if item is not None and position < shard.count:
            yield item
    except (tarfile.TarError, OSError, EOFError, ValueError) as err:
        logger.warning("shard %s unreadable after %d images (%s): the rest of it skipped", shard.path,
                       position, str(err).splitlines()[0] if str(err) else type(err).__name__)  # fmt: skip


class ShardSet(ImageSet):
    """The training images of a shard directory: what a dataset tells the rest of mimkit (classes,
    channels, size, normalisation) and how its members decode; iterated by :class:`ShardLoader`."""

    split = "train"

    def __init__(self, cfg: DataConfig):
        root = Path(cfg.root).expanduser()
        index_file = root / INDEX
        if not index_file.is_file():
            raise FileNotFoundError(
                f"{root} has no {INDEX}: make shards with `mimkit shards make SRC_DIR {root}`"
            )
        try:
            index = json.loads(index_file.read_text())
            if index.get("format") != FORMAT:
                raise ValueError(f"format {index.get('format')!r}, not {FORMAT!r}")
            info = index["image"]
            listed = [(s["file"], int(s["count"])) for s in index["shards"]]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{index_file} is not a mimkit shard index ({err})") from None
        self.root = str(root)
        self.classes = list(index.get("classes") or [])
        self.skipped_files = list(index.get("skipped") or [])
        self.shards: list[Shard] = []
        first = 0
        for name, count in listed:
            if cfg.limit is not None and first >= cfg.limit:
                break
            count = count if cfg.limit is None else min(count, cfg.limit - first)
            self.shards.append(Shard(root / name, count, first))
            first += count
        self.total = first
        missing = [s.path.name for s in self.shards if not s.path.is_file()]
        if missing:
            logger.warning(
                "%d shard file(s) missing under %s (%s, ...): skipped", len(missing), root, missing[0]
            )
            self.shards = [s for s in self.shards if s.path.is_file()]
            self.total = sum(s.count for s in self.shards)
        if not self.shards:
            raise ValueError(f"no shard file listed in {index_file} is there")
        dtype = STORE_DTYPES.get(info.get("dtype"), torch.uint8)
        first_image = ImageInfo(int(info["height"]), int(info["width"]), int(info["channels"]), dtype)
        self.channels, self.img_size, self.decode = decode_setup(cfg, first_image)
        self.resize_mode = cfg.resize_mode
        sampled: list[torch.Tensor] = []

        def sample() -> torch.Tensor:
            if not sampled:
                sampled.append(self._leading_images(min(STATS_SAMPLE, self.total)))
            return sampled[0]

        self.clip = resolve_clip(cfg, self.channels, sample)
        self.mean, self.std = normalization(
            cfg, self.channels, lambda: channel_stats(apply_clip(sample(), self.clip))
        )
        logger.info(
            "shards %s: %d images in %d shards, %d channel(s) of %s at %dx%d, %d classes",
            root, self.total, len(self.shards), self.channels, str(dtype).removeprefix("torch."),
            *self.img_size, len(self.classes),
        )  # fmt: skip

    def __len__(self) -> int:
        return self.total

    def decode_member(self, name: str, data: bytes) -> torch.Tensor:
        """A member's bytes as a stored image ``[C, H, W]`` (clip applied); UnreadableImageError if not."""
        image = decode_bytes(data, name, self.channels, self.img_size, self.resize_mode, self.decode)
        return apply_clip(image, self.clip)

    def _leading_images(self, n: int) -> torch.Tensor:
        """The first ``n`` readable images in packing order (a seeded shuffle: a fair sample)."""
        rows = []
        for _, name, data, _ in itertools.chain.from_iterable(read_shard(s) for s in self.shards):
            try:
                rows.append(
                    decode_bytes(data, name, self.channels, self.img_size, self.resize_mode, self.decode)
                )
            except UnreadableImageError:
                continue
            if len(rows) == n:
                break
        if not rows:
            raise ValueError(f"no readable image in the shards under {self.root}")
        return torch.stack(rows)


# ----------------------------------------------------------------------------- streaming


@dataclass(frozen=True)
class _WorkerPlan:
    shards: tuple[Shard, ...]
    batches: int  # batches this worker yields this epoch
    skip: int  # of which the first ``skip`` are replayed without decoding (a mid-epoch resume)


def _shuffled(items: Iterator, size: int, rnd: random.Random) -> Iterator:
    """A shuffle buffer: fill ``size`` items, then yield a random one and put the next item in its place."""
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = rnd.randrange(size)
        yield buffer[j]
        buffer[j] = item
    rnd.shuffle(buffer)
    yield from buffer


class _Stream(IterableDataset):
    """One epoch of one process's batches, each worker producing its plan's batches."""

    def __init__(
        self,
        dataset: ShardSet,
        plans: Sequence[_WorkerPlan],
        batch_size: int,
        buffer: int,
        seed: str,
        start: int,
    ):
        self.dataset, self.plans, self.batch_size = dataset, plans, batch_size
        self.buffer, self.seed, self.start = buffer, seed, start

    def _members(self, shards: Sequence[Shard], rnd: random.Random) -> Iterator[tuple[int, str, bytes, int]]:
        """The shards' members through the shuffle buffer, pass after pass over the list (each pass drained
        before the next: an epoch sees every image of a worker's shards before any twice)."""
        while True:
            produced = False
            for item in _shuffled(itertools.chain.from_iterable(map(read_shard, shards)), self.buffer, rnd):
                produced = True
                yield item
            if not produced:
                raise ValueError(f"none of the shards {[s.path.name for s in shards]} can be read")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        worker = get_worker_info()
        # the loader asks its workers in turn from worker 0, and the epoch continues at batch `start`,
        # which is plan `start % workers`'s: worker i runs plan (i + start) % workers
        slot = ((worker.id if worker is not None else 0) + self.start) % len(self.plans)
        plan = self.plans[slot]
        rnd = random.Random(f"{self.seed}/{slot}")
        members = self._members(plan.shards, rnd)
        for _ in range(plan.skip * self.batch_size):  # replayed, not decoded
            next(members)
        for _ in range(plan.batches - plan.skip):
            images, labels, indices = [], [], []
            while len(images) < self.batch_size:
                index, name, data, label = next(members)
                try:
                    images.append(self.dataset.decode_member(name, data))
                except UnreadableImageError as err:
                    logger.warning("skipped an unreadable image in the shards: %s", err)
                    continue
                labels.append(label)
                indices.append(index)
            yield torch.stack(images), torch.tensor(labels), torch.tensor(indices)


class ShardLoader(EpochCursor):
    """Batches ``(images [N, C, H, W], labels [N])`` streamed from a :class:`ShardSet` for one process, with
    the trainer's loader interface (``len``, ``set_epoch``, ``set_start_batch``, ``last_indices``).

    Args:
        dataset: the shards.
        batch_size: images per batch on this process.
        seed: the epochs' shard orders and shuffle buffers are drawn from it.
        rank, world_size: this process among the processes.
        num_workers: loader worker processes (0: read and decode in this process).
        buffer: shuffle-buffer size, in images, per worker.
        pin_memory: pin the batches (faster copies to a GPU).
    """

    def __init__(
        self,
        dataset: ShardSet,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        buffer: int = 1000,
        pin_memory: bool = False,
    ):
        streams = world_size * max(1, num_workers)
        if len(dataset.shards) < streams:
            raise ValueError(
                f"{len(dataset.shards)} shard(s) for {world_size} process(es) x {max(1, num_workers)} loader "
                f"worker(s): each stream needs one; pack with a smaller --shard-size or use fewer workers"
            )
        self.batches_per_epoch = dataset.total // world_size // batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"the shards hold {dataset.total} images, fewer than batch_size x processes = "
                f"{batch_size} x {world_size}"
            )
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.buffer, self.pin_memory = buffer, pin_memory
        self.last_indices: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.batches_per_epoch

    def plans(self, start: int = 0) -> list[_WorkerPlan]:
        """Each worker's shards, batches and skipped batches for this epoch and process. Batch ``j`` of the
        epoch comes from worker ``j % workers`` (the quotas differ by at most one, the larger first, so the
        loader's round robin over the workers is exact)."""
        order = torch.randperm(
            len(self.dataset.shards), generator=torch.Generator().manual_seed(self.seed + self.epoch)
        )
        mine = [self.dataset.shards[i] for i in order.tolist()[self.rank :: self.world_size]]
        workers = max(1, self.num_workers)
        total = len(self)
        return [
            _WorkerPlan(
                tuple(mine[w::workers]),
                total // workers + (w < total % workers),
                start // workers + (w < start % workers),
            )
            for w in range(workers)
        ]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start = self._take_start()
        seed = f"{self.seed}/{self.epoch}/{self.rank}"
        stream = _Stream(self.dataset, self.plans(start), self.batch_size, self.buffer, seed, start)
        if self.num_workers == 0:
            batches: Any = iter(stream)
        else:
            batches = DataLoader(
                stream, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
                persistent_workers=False,
            )  # fmt: skip
        for images, labels, indices in batches:
            self.last_indices = indices
            yield images, labels
