"""Batches of uint8 images in a reproducible, resumable, shardable order.

The order of an epoch is a permutation drawn from its own ``torch.Generator`` seeded with
``seed + epoch``: the same on every rank and every run, and the global torch RNG is never touched (the
trainer's resume equivalence relies on that). Each rank takes every ``world_size``-th index of it, as
``DistributedSampler`` does. ``set_start_batch(k)`` makes the next pass start at batch ``k`` of the
epoch, which is how a run resumed mid-epoch sees exactly the batches it had not seen.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from mimkit.data.arrays import skipped_by_reason
from mimkit.data.images import UnreadableImageError

logger = logging.getLogger(__name__)

_WARN_EACH_UNTIL = 20  # unreadable files reported batch by batch up to this many; then once per epoch


class _Tolerant(Dataset):
    """Wraps a dataset so an unreadable file becomes ``(None, -1, (path, reason))`` instead of an error."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, tuple[str, str] | None, int]:
        try:
            image, label = self.dataset[index]
        except UnreadableImageError as err:
            return None, -1, (err.path, err.reason), index
        return image, label, None, index


def _collate(items: list) -> tuple[torch.Tensor | None, torch.Tensor, list[tuple[str, str]], torch.Tensor]:
    good = [(image, label, index) for image, label, bad, index in items if bad is None]
    failures = [bad for _, _, bad, _ in items if bad is not None]
    images = torch.stack([image for image, _, _ in good]) if good else None
    labels = torch.tensor([label for _, label, _ in good], dtype=torch.int64)
    indices = torch.tensor([index for _, _, index in good], dtype=torch.int64)
    return images, labels, failures, indices


class EpochCursor:
    """Where a resumable loader stands: the epoch it serves and the batch its next pass starts at."""

    epoch = 0
    _start_batch = 0

    def __len__(self) -> int:  # batches per epoch
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch`` (call before iterating, every epoch)."""
        self.epoch = int(epoch)

    def set_start_batch(self, batch: int) -> None:
        """Make the next iteration skip the first ``batch`` batches of the epoch (a mid-epoch resume)."""
        if not 0 <= batch <= len(self):
            raise ValueError(f"start batch must be in [0, {len(self)}] (batches per epoch), got {batch!r}")
        self._start_batch = int(batch)

    def _take_start(self) -> int:
        """The start batch of this pass; the next pass starts at 0 unless set again."""
        start, self._start_batch = self._start_batch, 0
        return start


class BatchLoader(EpochCursor):
    """Iterable of ``(images uint8 [N, C, H, W], labels int64 [N])`` for one rank.

    Args:
        dataset: a map-style dataset of ``(uint8 [C, H, W], int label)``; an in-memory
            :class:`~mimkit.data.ImageDataset` is sliced a whole batch at a time (no per-item Python).
        batch_size: images per batch on this rank.
        shuffle: a new permutation every epoch (else the dataset order).
        drop_last: drop the images that do not fill a last batch (and those that would make the shards
            unequal); if False every rank gets ``ceil(n / world_size)`` images, padded by repeating the
            first ones of the order, as ``DistributedSampler`` does.
        seed: the epoch's order is drawn from ``torch.Generator().manual_seed(seed + epoch)``.
        num_workers: worker processes decoding a lazily loaded dataset (ignored for in-memory data).
        rank, world_size: this process's shard.
        pin_memory: pin the batches (faster copies to a GPU).
        report_skipped: log unreadable files as batches find them (False: the caller reports them; they
            are recorded in the dataset's ``skipped_files`` either way).

    After each batch, ``last_indices`` holds its dataset indices (int64 ``[N]``, unreadable files left
    out): the trainer keys each sample's randomness by them (:mod:`mimkit.rng`).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
        report_skipped: bool = True,
    ):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if (
            not isinstance(world_size, int)
            or world_size < 1
            or not isinstance(rank, int)
            or not 0 <= rank < world_size
        ):
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        n = len(dataset)
        if n == 0:
            raise ValueError("the dataset is empty: nothing to load")
        if drop_last and n // world_size < batch_size:
            raise ValueError(
                f"the dataset has {n} images, fewer than batch_size x world_size = "
                f"{batch_size} x {world_size}: "
                "with drop_last there would be no batch at all; lower batch_size or set drop_last=False"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.num_workers = num_workers
        self.rank = rank
        self.world_size = world_size
        self.pin_memory = pin_memory
        self.report_skipped = report_skipped
        self._reported = 0  # unreadable files already reported
        self.last_indices: torch.Tensor | None = None

    @property
    def samples_per_rank(self) -> int:
        n = len(self.dataset)
        return n // self.world_size if self.drop_last else math.ceil(n / self.world_size)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        per_rank = self.samples_per_rank
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in order: int64 ``[samples_per_rank]``."""
        n = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        total = self.samples_per_rank * self.world_size
        if total > n:  # pad (drop_last=False): repeat the start of the order
            order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
        return order[:total][self.rank :: self.world_size]

    def batches(self) -> list[torch.Tensor]:
        """The index tensors of the current epoch's batches on this rank (before any start offset)."""
        mine = self.indices()
        return [mine[i * self.batch_size : (i + 1) * self.batch_size] for i in range(len(self))]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.batches()[self._take_start() :]
        images = getattr(self.dataset, "images", None)
        if isinstance(images, torch.Tensor):
            labels = self.dataset.labels
            for idx in batches:
                self.last_indices = idx
                idx = idx.to(images.device)  # the images may have been moved to the accelerator
                batch = images.index_select(0, idx), labels.index_select(0, idx.to(labels.device))
                yield (batch[0].pin_memory(), batch[1].pin_memory()) if self.pin_memory else batch
            return
        yield from self._iter_decoded(batches)

    def _iter_decoded(self, batches: Sequence[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches decoded item by item, in worker processes if asked; unreadable files are dropped."""
        loader = DataLoader(
            _Tolerant(self.dataset),
            batch_sampler=[idx.tolist() for idx in batches],
            num_workers=self.num_workers,
            collate_fn=_collate,
            pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(self.seed + self.epoch),  # keeps the global RNG untouched
        )
        epoch_failures: list[tuple[str, str]] = []
        for images, labels, failures, indices in loader:
            if failures:
                self._record(failures, epoch_failures)
            if images is not None:
                self.last_indices = indices
                yield images, labels
        if epoch_failures and self._reported > _WARN_EACH_UNTIL and self.report_skipped:
            logger.warning(
                "skipped %d unreadable image file(s) this epoch (%d in all so far): %s",
                len(epoch_failures),
                self._reported,
                skipped_by_reason(epoch_failures),
            )

    def _record(self, failures: list[tuple[str, str]], epoch_failures: list[tuple[str, str]]) -> None:
        add = getattr(self.dataset, "add_skipped", None)
        new_paths = set(add([path for path, _ in failures])) if add is not None else {p for p, _ in failures}
        new = [f for f in failures if f[0] in new_paths]
        if not new:
            return
        epoch_failures.extend(new)
        if self._reported < _WARN_EACH_UNTIL and self.report_skipped:
            shown = "; ".join(f"{path}: {reason}" for path, reason in new[:3])
            logger.warning("skipped %d unreadable image file(s): %s", len(new), shown)
        self._reported += len(new)


build_loader = BatchLoader  # the name the package builds its loaders by (see BatchLoader for the arguments)


def process_loader(dataset: Dataset, batch_size: int, env, **options) -> BatchLoader:
    """:func:`build_loader` (``options``: shuffle, drop_last, seed, num_workers) for the process ``env``
    names (a :class:`~mimkit.engine.dist.DistEnv` or anything with its ``rank``, ``world_size``: each takes
    every ``world_size``-th image, and ``device``: batches pinned for a GPU)."""
    pin = env.device.type == "cuda"
    return build_loader(
        dataset, batch_size, rank=env.rank, world_size=env.world_size, pin_memory=pin, **options
    )
