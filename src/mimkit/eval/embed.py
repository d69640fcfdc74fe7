"""One embedding per image of a dataset, written for other tools: ``mimkit embed RUN --out emb.npy``.

The output is a NumPy ``.npy`` array ``[N, D]`` (float32) and, next to it, a CSV index with one line per
row: ``row, path, label, class``. NumPy arrays open memory-mapped (``np.load(path, mmap_mode="r")``) in
any numerical tool without loading them, and a CSV is read by everything; Parquet would need pyarrow, a
large dependency, for no gain on a plain matrix. Rows follow the dataset's order (sorted file paths for
folders, file order for IDX); files that cannot be decoded are skipped, counted and left out of both.

The pass is the evaluation's feature pass (:func:`~mimkit.eval.features.pooled_batches`: the same
normalisation, precision and pooling) and it resumes: rows are written into ``<out>.partial.npy`` batch
by batch and ``<out>.progress.json`` records how far it got, so a killed run on a large folder continues
where it stopped, if nothing about the run changed (checked with the feature cache's key: encoder, data,
options). The record is written every ``SAVE_EVERY_S`` seconds and when the pass is interrupted (Ctrl-C,
an error): a ``kill -9`` loses at most those seconds. That resumable pass (:func:`resumable_rows`) is
also what ``mimkit predict`` (:mod:`mimkit.eval.predict`) writes its rows with.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mimkit.data.datasets import ImageDataset
from mimkit.data.loader import build_loader
from mimkit.data.transforms import build_eval_transform
from mimkit.eval.features import FeaturePass, pooled_batches
from mimkit.eval.frozen import Encoder, Split, cache_key

log = logging.getLogger("mimkit")
SAVE_EVERY_S = 10.0  # a killed pass resumes from at most this long ago
_SHOWN = 3  # unreadable files named in the pass's warning


@dataclass
class RowPass:
    """What :func:`resumable_rows` leaves: the rows on disk and which images they are.

    Attributes:
        rows: ``<out>.partial.npy`` memory-mapped, one row per dataset item (unreadable ones left unset).
        kept: the dataset indices of the readable images, in order.
        skipped: unreadable images (found in the pass, or when an in-memory dataset loaded).
        seconds: the time this call's pass took.
        partial, progress: the partial array and the progress record (delete them with :meth:`finish`).
    """

    rows: np.ndarray
    kept: list[int]
    skipped: int
    seconds: float
    partial: Path
    progress: Path

    def finish(self) -> None:
        """Release the memory map and remove the partial array (if still there) and the progress record."""
        del self.rows
        self.partial.unlink(missing_ok=True)
        self.progress.unlink(missing_ok=True)


def resumable_rows(
    dataset: ImageDataset,
    out: Path,
    key: str | None,
    row: tuple[np.dtype | str, tuple[int, ...]],
    batch_size: int,
    compute: Callable[[Iterator[tuple[torch.Tensor, list[int]]]], Iterator[tuple[np.ndarray, list[int]]]],
    num_workers: int = 0,
    name: str = "embed",
) -> RowPass:
    """One row per image of ``dataset``, computed batch by batch into ``<out>.partial.npy``, resumable.

    ``<out>.progress.json`` records how far the pass got (every ``SAVE_EVERY_S`` seconds, and when it is
    interrupted); a call with the same ``key`` continues from there, any other starts over.

    Args:
        dataset: the images (in memory, or files decoded on the fly).
        out: the final output; the partial array and the record go next to it.
        key: what a resume must match (None: never resume).
        row: ``(dtype, shape)`` of one row (a structured dtype and ``()`` for records).
        batch_size: images per batch.
        compute: ``(uint8 images [n, C, H, W], their dataset indices)`` batches -> ``(rows [m, *shape],
            the dataset indices they belong to)``.
        num_workers: processes decoding images (folders decoded on the fly).
        name: what the log lines call the pass.
    """
    partial, progress_file = out.with_suffix(".partial.npy"), out.with_suffix(".progress.json")
    progress = json.loads(progress_file.read_text()) if progress_file.is_file() else {}
    resume = key is not None and progress.get("fingerprint") == key and partial.is_file()
    done, unreadable = (progress["done"], set(progress["unreadable"])) if resume else (0, set())
    if resume:
        log.info("%s: resuming at image %d of %d (%s)", name, done, len(dataset), partial)
    out.parent.mkdir(parents=True, exist_ok=True)
    dtype, shape = row
    rows = np.lib.format.open_memmap(
        partial, mode="r+" if resume else "w+", dtype=np.dtype(dtype), shape=(len(dataset), *shape)
    )
    # the evaluation's loader: in-memory splits sliced a batch at a time, others decoded in worker
    # processes, leaving unreadable files out of the batches (the indices it skipped are theirs)
    loader = build_loader(
        dataset, batch_size, shuffle=False, drop_last=False, num_workers=num_workers, report_skipped=False
    )  # the unreadable files are said once, at the end
    loader.set_start_batch(done // batch_size)

    def checkpoint(done: int) -> None:  # the rows up to "done" are on disk, then the record says so
        rows.flush()
        record = {"fingerprint": key, "done": done, "unreadable": sorted(unreadable)}
        tmp = progress_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, progress_file)

    t0 = t_saved = time.perf_counter()
    completed = done
    batches = ((images, loader.last_indices.tolist()) for images, _ in loader)
    try:
        for values, ok in compute(batches):
            rows[ok] = values
            unreadable.update(set(range(completed, ok[-1])) - set(ok))
            completed = max(completed, ok[-1] + 1)
            # the rows flushed and the record written every SAVE_EVERY_S seconds, not every batch
            if time.perf_counter() - t_saved >= SAVE_EVERY_S:
                checkpoint(completed)
                t_saved = time.perf_counter()
    except BaseException:
        checkpoint(completed)  # interrupted: what is done stays done
        raise
    unreadable.update(range(completed, len(dataset)))  # after the last readable image
    seconds = time.perf_counter() - t0
    rows.flush()
    kept = [i for i in range(len(dataset)) if i not in unreadable]
    # found during the pass (the loader counts them in dataset.skipped too), or when an in-memory split loaded
    skipped = len(unreadable) + (dataset.skipped if dataset.in_memory else 0)
    if unreadable:
        files = dataset.files
        names = [str(files[i]) if files is not None else f"#{i}" for i in sorted(unreadable)[:_SHOWN]]
        more = ", ..." if len(unreadable) > _SHOWN else ""
        log.warning("%s: skipped %d unreadable file(s): %s%s", name, len(unreadable), ", ".join(names), more)
    return RowPass(rows, kept, skipped, seconds, partial, progress_file)


def write_embeddings(
    encoder: Encoder, split: Split, run: FeaturePass, out: Path, *, pool: str = "token", num_workers: int = 0
) -> dict[str, Any]:
    """Write one ``pool`` embedding per image of ``split`` to ``out`` (``.npy``) and its CSV index.

    Args:
        encoder: the encoder; its cache key (with the split's data config) is what a resume must match
            (none: the pass starts over).
        split: the images; the index names their files (folders) or their place in the split.
        run: device, precision and batch size of the feature pass.
        out: the ``.npy`` path; the index goes to the same path with ``.csv``.
        num_workers: processes decoding images (folders decoded on the fly).

    Returns:
        ``{"rows", "dim", "skipped", "path", "index", "seconds"}``.
    """
    dataset, model = split.dataset, encoder.module
    transform = build_eval_transform(dataset).to(run.device)
    dim = int(getattr(model, "num_features", getattr(model, "embed_dim", 0)))
    key = cache_key(encoder, split, pool, run)  # the checkpoint's bytes, data, split, pooling, precision, ...

    def compute(batches):
        for pooled, ok in pooled_batches(model, batches, transform, run, (pool,)):
            yield pooled[pool].numpy(), ok

    done = resumable_rows(dataset, out, key, (np.float32, (dim,)), run.batch_size, compute, num_workers)
    keep = done.kept
    if len(keep) < len(dataset):  # leave the unreadable rows out (rare: one copy of the readable ones)
        tmp = out.with_suffix(".compact.npy")
        np.save(tmp, done.rows[keep])
        os.replace(tmp, out)
    else:
        os.replace(done.partial, out)
    done.finish()
    index = out.with_suffix(".csv")
    with open(index, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "path", "label", "class"])
        for row, i in enumerate(keep):
            label = int(dataset.labels[i])
            path = (
                str(dataset.files[i]) if dataset.files is not None else f"{dataset.root}#{dataset.split}/{i}"
            )
            writer.writerow([row, path, label, dataset.classes[label] if label >= 0 else ""])
    return {
        "rows": len(keep),
        "dim": dim,
        "skipped": done.skipped,
        "path": out,
        "index": index,
        "seconds": done.seconds,
    }
