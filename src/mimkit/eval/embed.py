"""One embedding per image of a dataset, written for other tools: ``mimkit embed RUN --out emb.npy``.

The output is a NumPy ``.npy`` array ``[N, D]`` (float32) and, next to it, a CSV index with one line per
row: ``row, path, label, class``. NumPy arrays open memory-mapped (``np.load(path, mmap_mode="r")``) in
any numerical tool without loading them, and a CSV is read by everything; Parquet would need pyarrow, a
large dependency, for no gain on a plain matrix. Rows follow the dataset's order (sorted file paths for
folders, file order for IDX); files that cannot be decoded are skipped, counted and left out of both.

The pass is the evaluation's feature pass (same encoder resolution, normalisation, precision and
pooling) and it resumes: rows are written into ``<out>.partial.npy`` batch by batch and
``<out>.progress.json`` records how far it got, so a killed run on a large folder continues where it
stopped, if nothing about the run changed (checked with the feature cache's key: encoder, data, options).
The record is written every ``SAVE_EVERY_S`` seconds and when the pass is interrupted (Ctrl-C, an error):
a ``kill -9`` loses at most those seconds.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mimkit.data import build_dataset
from mimkit.data.images import UnreadableImageError
from mimkit.data.transforms import EvalTransform
from mimkit.engine.dist import resolve_device
from mimkit.engine.host_memory import keep_freed_memory
from mimkit.engine.precision import auto_to_native, autocast
from mimkit.eval.cache import feature_key
from mimkit.eval.sources import DataChoice, EncoderChoice, FeatureOptions, load_choice

log = logging.getLogger("mimkit")
SPLITS = ("train", "test")
SAVE_EVERY_S = 10.0  # a killed pass resumes from at most this long ago


class _Indexed(Dataset):
    """``(index, uint8 image or None if unreadable)`` for each item of a dataset from ``start`` on."""

    def __init__(self, dataset, start: int):
        self.dataset, self.start = dataset, start

    def __len__(self) -> int:
        return len(self.dataset) - self.start

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None]:
        index = self.start + i
        try:
            return index, self.dataset[index][0]
        except UnreadableImageError:
            return index, None


def _collate(items: list[tuple[int, torch.Tensor | None]]):
    """``(indices of the readable items, their images stacked or None, unreadable indices, last index)``."""
    ok = [(i, img) for i, img in items if img is not None]
    images = torch.stack([img for _, img in ok]) if ok else None
    return [i for i, _ in ok], images, [i for i, img in items if img is None], items[-1][0]


def embed(
    encoder: EncoderChoice,
    out: str | os.PathLike,
    data: DataChoice | None = None,
    features: FeatureOptions | None = None,
    split: str = "train",
    num_workers: int = 0,
) -> dict[str, Any]:
    """Write one pooled embedding per image of ``split`` to ``out`` (``.npy``) and its CSV index.

    Args:
        encoder: the encoder to embed with (a run, a checkpoint, an encoder file with its name).
        out: the ``.npy`` path; the index goes to the same path with ``.csv``.
        data: the images (default: the run's own data; ``DataChoice(source="folder", root=...)`` for
            another folder; its ``train_limit`` / ``test_limit`` cap the split).
        features: pooling, batch size, device and precision.
        split: ``"train"`` (a folder's images) or ``"test"``.
        num_workers: processes decoding images (folders decoded on the fly).

    Returns:
        ``{"rows", "dim", "skipped", "path", "index", "seconds"}``.

    Raises:
        ValueError: an unknown split, an output that is not ``.npy``, or no encoder weights.
    """
    data, features = data or DataChoice(), features or FeatureOptions()
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    out = Path(out)
    if out.suffix != ".npy":
        raise ValueError(f"--out must name a .npy file (its index goes next to it as .csv), got {str(out)!r}")
    loaded = load_choice(encoder, data)
    if loaded.encoder is None:
        raise ValueError("embedding needs a trained encoder: give a run, a checkpoint or an encoder file")
    limit = data.train_limit if split == "train" else data.test_limit
    data_cfg = dataclasses.replace(loaded.data, limit=limit)
    dataset = build_dataset(data_cfg, split)
    device = resolve_device(features.device)
    precision = auto_to_native(features.precision, device)
    model = loaded.encoder.eval().to(device)
    transform = EvalTransform(dataset.img_size, dataset.mean, dataset.std).to(device)
    dim = int(getattr(model, "num_features", getattr(model, "embed_dim", 0)))
    # the feature cache's key: the checkpoint's bytes, the data, split, pooling, encoder and precision
    extra = {"encoder": loaded.encoder_cfg, "teacher": encoder.teacher, "precision": precision}
    key = feature_key(loaded.checkpoint, data_cfg, split, features.pool, extra)
    partial, progress_file = out.with_suffix(".partial.npy"), out.with_suffix(".progress.json")
    progress = json.loads(progress_file.read_text()) if progress_file.is_file() else {}
    resume = progress.get("fingerprint") == key and partial.is_file()
    done, unreadable = (progress["done"], set(progress["unreadable"])) if resume else (0, set())
    if resume:
        log.info("embed: resuming at image %d of %d (%s)", done, len(dataset), partial)
    out.parent.mkdir(parents=True, exist_ok=True)
    mode = "r+" if resume else "w+"
    rows = np.lib.format.open_memmap(partial, mode=mode, dtype=np.float32, shape=(len(dataset), dim))
    if dataset.in_memory:  # whole batches sliced out of the decoded split, as the evaluation's loader does
        bs = features.batch_size
        loader = (
            (
                list(range(i, min(i + bs, len(dataset)))),
                dataset.images[i : i + bs],
                [],
                min(i + bs, len(dataset)) - 1,
            )
            for i in range(done, len(dataset), bs)
        )
    else:  # decoded on the fly, in worker processes; an unreadable file is skipped and counted
        loader = DataLoader(
            _Indexed(dataset, done),
            batch_size=features.batch_size,
            num_workers=num_workers,
            collate_fn=_collate,
        )

    def checkpoint(done: int) -> None:  # the rows up to "done" are on disk, then the record says so
        rows.flush()
        record = {"fingerprint": key, "done": done, "unreadable": sorted(unreadable)}
        tmp = progress_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, progress_file)

    if device.type == "cpu":
        keep_freed_memory()  # each batch's activations reuse the previous batch's memory
    t0 = t_saved = time.perf_counter()
    completed = done
    try:
        with torch.no_grad(), autocast(precision, device.type):
            for ok, images, bad, last in loader:
                if images is not None:
                    tokens = model.forward_features(transform(images.to(device, non_blocking=True)))
                    rows[ok] = model.pool(tokens, features.pool).float().cpu().numpy()
                unreadable.update(bad)
                completed = last + 1
                # the rows flushed and the record written every SAVE_EVERY_S seconds, not every batch
                if time.perf_counter() - t_saved >= SAVE_EVERY_S:
                    checkpoint(completed)
                    t_saved = time.perf_counter()
    except BaseException:
        checkpoint(completed)  # interrupted: what is done stays done
        raise
    seconds = time.perf_counter() - t0
    keep = [i for i in range(len(dataset)) if i not in unreadable]
    if unreadable:  # leave the unreadable rows out (rare: one copy of the readable ones)
        tmp = out.with_suffix(".compact.npy")
        np.save(tmp, rows[keep])
        del rows
        os.replace(tmp, out)
        partial.unlink()
    else:
        del rows
        os.replace(partial, out)
    index = out.with_suffix(".csv")
    with open(index, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "path", "label", "class"])
        for row, i in enumerate(keep):
            label = int(dataset.labels[i])
            path = str(dataset.files[i]) if dataset.files is not None else f"{dataset.root}#{split}/{i}"
            writer.writerow([row, path, label, dataset.classes[label] if label >= 0 else ""])
    progress_file.unlink(missing_ok=True)
    skipped = len(unreadable) + dataset.skipped  # found during the pass, or when an in-memory split loaded
    if skipped:
        log.info("embed: %d unreadable images skipped", skipped)
    return {
        "rows": len(keep),
        "dim": dim,
        "skipped": skipped,
        "path": out,
        "index": index,
        "seconds": seconds,
    }
