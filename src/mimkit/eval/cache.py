"""Frozen features cached on disk, per checkpoint, dataset, split and pooling.

The frozen protocols (kNN, linear probe, t-SNE) share one feature-extraction pass: the first one to need
the features of ``(checkpoint, data, split, pool)`` extracts them and stores them as a ``.pt`` file; the
others load it. The key hashes the checkpoint file (size, modification time and a SHA-256 of its bytes,
so a checkpoint rewritten in place is never confused with its earlier self), the data config (source,
root, size, channels, normalisation, limit), the split, the pooling and anything else the caller adds
(the encoder config of a randomly initialised encoder, for instance).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mimkit.data.loader import process_loader
from mimkit.data.transforms import build_eval_transform
from mimkit.engine import dist
from mimkit.engine.checkpoint import save_atomic
from mimkit.eval.features import FeaturePass, pooled_batches
from mimkit.plain import plain

log = logging.getLogger("mimkit")

CACHE_VERSION = 1  # bump when the extraction changes what it returns
# data-config fields that do not change the images a split holds
_IRRELEVANT_DATA = (
    "num_workers",
    "in_memory",
    "memory_limit_mb",
    "augment",
    "crop_scale",
    "crop_ratio",
    "hflip",
)


def file_fingerprint(path: str | os.PathLike, chunk: int = 1 << 20) -> dict[str, Any]:
    """``{"size", "mtime_ns", "sha256"}`` of a file (read in 1 MiB chunks); of a model directory
    (transformers, timm), its ``config.json`` and ``model.safetensors`` together."""
    path = Path(path)
    if path.is_dir():
        parts = [file_fingerprint(path / name, chunk) for name in ("config.json", "model.safetensors")]
        return {"dir": parts}
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}


def feature_key(
    checkpoint: str | os.PathLike | None,
    data: Any,
    split: str,
    pool: str,
    extra: dict[str, Any] | None = None,
) -> str:
    """A hex key naming the features of ``checkpoint`` (None: none, e.g. random init) on ``data``'s ``split``.

    Args:
        checkpoint: the checkpoint file the encoder was loaded from, or None.
        data: the data config (a :class:`~mimkit.data.DataConfig` or a dict).
        split: ``"train"`` / ``"test"``.
        pool: ``"token"`` / ``"avg"`` (or ``"pixels"``).
        extra: anything else that changes the features (encoder config, seed, ...).
    """
    data_dict = plain(data, sort_keys=True)
    if isinstance(data_dict, dict):
        data_dict = {k: v for k, v in data_dict.items() if k not in _IRRELEVANT_DATA}
    record = {
        "version": CACHE_VERSION,
        "checkpoint": file_fingerprint(checkpoint) if checkpoint is not None else None,
        "data": data_dict,
        "split": split,
        "pool": pool,
        "extra": plain(extra or {}, sort_keys=True),
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:24]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mimkit/features`` (``~/.cache/mimkit/features``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mimkit" / "features"


def cached_pooled_features(
    encoder: nn.Module, dataset, keys: Mapping[str, str | None], run: FeaturePass
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Features of every image of ``dataset`` for each pooling of ``keys``, cached per pooling.

    The poolings missing from the cache are extracted together, in one pass of
    :func:`~mimkit.eval.features.pooled_batches`.

    Args:
        encoder: a frozen encoder with ``forward_features`` / ``pool``.
        dataset: a labeled or unlabeled :class:`~mimkit.data.ImageDataset` (its own normalisation is used).
        keys: ``{pool: key}``, each key from :func:`feature_key` for that pooling (None: not cached).
        run: device, precision, batch size; ``features-<key>.pt`` lives in its ``cache_dir`` (None: none).

    Returns:
        ``{pool: (features [N, D] float32, not normalised, labels [N] int64, -1 where unlabeled)}``.
    """
    found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    cache_dir = run.cache_dir  # None: nothing is read or written
    for pool, key in keys.items():
        path = Path(cache_dir) / f"features-{key}.pt" if cache_dir is not None and key is not None else None
        if path is None or not path.is_file():
            continue
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored["features"].shape[0] == len(dataset):
                log.info("features from the cache: %s", path)
                found[pool] = stored["features"], stored["labels"]
        except (RuntimeError, KeyError, OSError, EOFError) as err:
            log.warning("ignoring unreadable feature cache %s (%s)", path, err)
    missing = [pool for pool in keys if pool not in found]
    if missing:
        # under torchrun each process takes every world_size-th image; the rows are gathered back in order
        batch = min(run.batch_size, -(-len(dataset) // run.world_size))
        loader = process_loader(dataset, batch, run, shuffle=False, drop_last=False)
        transform = build_eval_transform(dataset).to(run.device)
        passes = list(pooled_batches(encoder, loader, transform, run, missing))
        feats = {pool: torch.cat([pooled[pool] for pooled, _ in passes]) for pool in missing}
        labels = torch.cat([target.cpu() for _, target in passes]).long()
        if run.world_size > 1:
            feats = {
                pool: dist.gather_rows(f.to(run.device), len(dataset)).cpu() for pool, f in feats.items()
            }
            labels = dist.gather_rows(labels.to(run.device), len(dataset)).cpu()
        for pool in missing:
            found[pool] = feats[pool], labels
            if cache_dir is not None and keys[pool] is not None and run.rank == 0:
                path = Path(cache_dir) / f"features-{keys[pool]}.pt"
                save_atomic({"features": feats[pool], "labels": labels, "key": keys[pool]}, path)
                log.info("features cached: %s", path)
    return {pool: found[pool] for pool in keys}
