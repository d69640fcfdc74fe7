"""A fine-tuned classifier on a folder of new images: ``mimkit predict RUN DIR --out predictions.csv``.

Every image under the folder (recursively, labels ignored) is decoded as the classifier's training images
were (:mod:`mimkit.eval.saved`: size, bands, bit depth, clip, normalisation) and gets its ``k`` most
probable classes with their softmax probabilities. The CSV has timm's ``inference.py`` columns: the file
(its path under the folder; for a slice or chip its sample id, ``scene.tif#tile=0,64``), then
``label_0, prob_0, label_1, prob_1, ...`` from the most probable down.

The pass is the evaluation's batched pass (:func:`~mimkit.eval.features.forward_batches` over the shared
loader) and resumes as ``mimkit embed`` does (:func:`~mimkit.eval.embed.resumable_rows`): the rows go into
``<out>.partial.npy`` and ``<out>.progress.json`` records how far it got, every few seconds and when
interrupted, so the same command run again computes only the images not done yet. Files that cannot be
decoded are skipped and counted, never fatal.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mimkit.data.datasets import ImageDataset
from mimkit.data.images import DecodeOptions, image_info, list_images
from mimkit.data.items import expand, item_spec
from mimkit.data.parts import sample_id, source
from mimkit.eval.cache import file_fingerprint
from mimkit.eval.embed import resumable_rows
from mimkit.eval.features import FeaturePass, forward_batches
from mimkit.eval.saved import SavedClassifier

log = logging.getLogger("mimkit")
_DTYPES = {"uint8": torch.uint8, "uint16": torch.uint16, "float32": torch.float32}
_DEPTHS = {torch.uint8: "8-bit", torch.uint16: "16-bit", torch.float32: "float"}
_CONVERTIBLE = {1, 3, 4}  # grey, RGB and RGBA convert into each other


def check_topk(topk: int, classes: int) -> int:
    """``min(topk, classes)``; a ValueError for a ``topk`` below 1."""
    if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
        raise ValueError(
            f"--topk must be a whole number >= 1 (above the {classes} classes: all of them), got {topk!r}"
        )
    return min(topk, classes)


def csv_path(out: str | os.PathLike) -> Path:
    """``out`` as a path, if it names a ``.csv`` file (else a ValueError)."""
    if Path(out).suffix.lower() != ".csv":
        raise ValueError(f"--out must name a .csv file, got {str(out)!r}")
    return Path(out)


def folder_dataset(
    saved: SavedClassifier, folder: str | os.PathLike, convert_channels: bool = False
) -> ImageDataset:
    """Every image under ``folder`` (recursively, unlabeled), decoded on the fly as the classifier's training
    images were.

    Raises:
        FileNotFoundError: no such folder.
        ValueError: in one line: no image in it; none of its first images readable; images of another bit
            depth, or of another band count than the classifier's (unless ``convert_channels`` and both are
            grey, RGB or RGBA).
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder of images: {root}")
    files = list_images(root)
    if not files:
        raise ValueError(f"no image files found under {root}: nothing to predict")
    r = saved.record
    dtype, bands, channels = _DTYPES[r["dtype"]], r["bands"], r["channels"]
    window = tuple(r["window"]) if isinstance(r["window"], list) else r["window"]
    spec = item_spec(r.get("volume"), r.get("tile"), window)  # cut as the training files were
    files = expand(files, [-1] * len(files), spec, str(root))[0]
    info, example = None, None
    for path in files[:100]:  # the first readable file says what the folder holds
        try:
            info, example = image_info(path, window), sample_id(path, root)
            break
        except Exception:  # noqa: BLE001 - unreadable: counted in the pass, try the next one
            continue
    if info is None:
        raise ValueError(f"none of the first {min(len(files), 100)} image files under {root} can be read")
    if info.dtype != dtype:
        raise ValueError(
            f"{root} holds {_DEPTHS[info.dtype]} images ({example}, ...), the classifier was trained on "
            f"{_DEPTHS[dtype]} images: give images of the same bit depth"
        )
    theirs = len(bands) if bands else info.channels
    if theirs != channels and not (convert_channels and {theirs, channels} <= _CONVERTIBLE):
        fix = (
            "pass --convert-channels to convert them (grey, RGB and RGBA convert into each other)"
            if {theirs, channels} <= _CONVERTIBLE
            else "give images with the classifier's bands"
        )
        raise ValueError(
            f"{root} holds {theirs}-channel images ({example}, ...), the classifier takes {channels}-channel "
            f"images: {fix}"
        )
    stored = tuple(r["stored_size"])
    if (info.height, info.width) != stored:
        log.info("predict: images of another size than %dx%d (%s: %dx%d) are resized to it (%s)",
                 *stored, example, info.height, info.width, r["resize_mode"])  # fmt: skip
    clip = (r["clip"][0], r["clip"][1]) if r["clip"] else None
    return ImageDataset(
        torch.full((len(files),), -1, dtype=torch.int64),
        [],
        channels,
        stored,
        r["mean"],
        r["std"],
        files=files,
        resize_mode=r["resize_mode"],
        root=str(root),
        split="predict",
        decode=DecodeOptions(tuple(bands) if bands else None, dtype, window, spec),
        clip=clip,
    )


def _folder_key(saved: SavedClassifier, dataset: ImageDataset, topk: int, run: FeaturePass) -> str:
    """What a resumed pass must match: the classifier (record and checkpoint bytes), the files (names,
    sizes, times), k and the precision."""
    files = [(str(p), source(p).stat().st_size, source(p).stat().st_mtime_ns) for p in dataset.files]
    record = {
        "classifier": saved.record,
        "checkpoint": file_fingerprint(saved.checkpoint),
        "files": hashlib.sha256(json.dumps(files).encode()).hexdigest(),
        "topk": topk,
        "precision": run.precision,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:24]


def write_predictions(
    saved: SavedClassifier,
    dataset: ImageDataset,
    run: FeaturePass,
    out: str | os.PathLike,
    *,
    topk: int = 5,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Write the ``topk`` most probable classes of every readable image of ``dataset`` to ``out`` (CSV).

    Args:
        saved: the classifier (:func:`~mimkit.eval.saved.load_classifier`).
        dataset: the images, from :func:`folder_dataset`.
        run: device, precision and batch size of the pass.
        out: the CSV path; ``<out>.partial.npy`` and ``<out>.progress.json`` hold an unfinished pass.
        topk: classes per image, capped at the number of classes.
        num_workers: processes decoding images.

    Returns:
        ``{"rows", "topk", "skipped", "path", "seconds"}``.
    """
    classes = saved.classes
    k = check_topk(topk, len(classes))
    out = csv_path(out)
    model, transform = saved.classifier, saved.transform().to(run.device)
    row = np.dtype([("index", np.int32, (k,)), ("prob", np.float32, (k,))])

    def top(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = F.softmax(model(images).float(), dim=-1)  # softmax in fp32 whatever the pass ran in
        best = probs.topk(k, dim=-1)  # sorted, most probable first
        return best.indices.cpu(), best.values.cpu()

    def compute(batches):
        for (index, prob), ok in forward_batches(model, batches, transform, run, top):
            values = np.empty(len(ok), dtype=row)
            values["index"], values["prob"] = index.numpy(), prob.numpy()
            yield values, ok

    key = _folder_key(saved, dataset, k, run)
    done = resumable_rows(dataset, out, key, (row, ()), run.batch_size, compute, num_workers, "predict")
    root = Path(dataset.root)
    tmp = out.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename"] + [f"{name}_{r}" for r in range(k) for name in ("label", "prob")])
        for i in done.kept:
            ranks = zip(done.rows[i]["index"], done.rows[i]["prob"], strict=True)
            cells = [cell for c, p in ranks for cell in (classes[c], f"{p:.6g}")]
            writer.writerow([sample_id(dataset.files[i], root), *cells])
    os.replace(tmp, out)
    done.finish()
    return {"rows": len(done.kept), "topk": k, "skipped": done.skipped, "path": out, "seconds": done.seconds}
