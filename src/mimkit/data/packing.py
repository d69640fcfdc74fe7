"""Packing a folder into tar shards in the WebDataset layout (``mimkit shards make SRC OUT``); streamed by
:mod:`mimkit.data.shards`.

The folder ``SRC`` (class sub-folders or not, as ``data.source: folder`` reads it) goes into
``OUT/shard-000000.tar``, ... of ``--shard-size`` images each: every image is a member ``{key}.{ext}``
holding the file's own bytes (no re-encoding), with ``{key}.cls`` (the class index as text) when the
folder is labeled, keys being the images' positions in a seeded shuffle of the folder, so that every shard
mixes the classes. ``OUT/shards.json`` lists the shards, their image counts, the classes, the first image's
size, bands and dtype, and the files that could not be decoded (checked while packing: skipped and
counted, as a folder does).

Volumes and large images (``items``: ``data.volume`` / ``data.tile``, e.g. ``mimkit shards make SRC OUT
data.tile=64``) are packed as their samples: each slice or chip a member ``{key}.npy`` (its pixels
``[H, W, C]`` at the file's dtype, read as a folder reads it) with ``{key}.id``, its sample id
(``scene.tif#tile=0,64``, :mod:`mimkit.data.parts`).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mimkit.data.datasets import scan_folder, warn_skipped
from mimkit.data.images import DecodeOptions, ImageInfo, decode_image, image_info
from mimkit.data.items import ItemSpec, read_item
from mimkit.data.parts import Item, Part, sample_id
from mimkit.data.shards import FORMAT, INDEX


def _readable(path: Item, window=None) -> ImageInfo | str:
    """The file's image info if it decodes (at a small size: JPEG decodes a fraction), else why not."""
    try:
        info = image_info(path, window)
        decode_image(path, info.channels, (8, 8), "stretch", DecodeOptions(dtype=info.dtype, window=window))
        return info
    except Exception as err:  # noqa: BLE001 - any failure means "unreadable": skipped and counted
        return str(err).splitlines()[0] if str(err) else type(err).__name__


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    member.mode = 0o644
    tar.addfile(member, fileobj=io.BytesIO(data))  # shares the bytes: no copy


def pack_shards(
    src: str | os.PathLike,
    out: str | os.PathLike,
    shard_size: int = 1000,
    labeled: str | bool = "auto",
    seed: int = 0,
    force: bool = False,
    items: ItemSpec | None = None,
) -> dict[str, Any]:
    """Pack the images of folder ``src`` into tar shards in ``out``; returns the index written there.
    ``items``: how volumes and large images are cut into samples (default: volumes into z slices).

    Raises:
        FileNotFoundError: ``src`` is not a directory.
        ValueError: ``shard_size`` < 1, ``out`` not empty (without ``force``), no readable image.
    """
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a directory of images")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"the shard size must be a positive number of images, got {shard_size!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ValueError(f"{out} exists and is not an empty directory; choose another or pass --force")
    files, labels, classes = scan_folder(src, labeled, spec=items)
    window = items.window if items else None
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        checked = list(pool.map(lambda item: _readable(item, window), files, chunksize=16))
    failures = [(str(f), why) for f, why in zip(files, checked, strict=True) if isinstance(why, str)]
    warn_skipped(failures, str(src), len(files))
    kept = [
        (f, y, info) for f, y, info in zip(files, labels, checked, strict=True) if not isinstance(info, str)
    ]
    if not kept:
        raise ValueError(f"none of the {len(files)} image files under {src} could be read")
    order = torch.randperm(len(kept), generator=torch.Generator().manual_seed(seed)).tolist()
    kept = [kept[i] for i in order]
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("shard-*.tar"):  # --force over an earlier packing
        stale.unlink()
    shards = []
    for number, start in enumerate(range(0, len(kept), shard_size)):
        name = f"shard-{number:06d}.tar"
        part = kept[start : start + shard_size]
        tmp = out / f".{name}.tmp"
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for offset, (path, label, _) in enumerate(part):
                key = f"{start + offset:09d}"
                if isinstance(path, Part):  # a slice or chip: its pixels, and its id
                    data = io.BytesIO()
                    np.save(data, read_item(path, window), allow_pickle=False)
                    _add(tar, f"{key}.npy", data.getvalue())
                    _add(tar, f"{key}.id", sample_id(path, src).encode())
                else:
                    _add(tar, f"{key}{path.suffix.lower() or '.dcm'}", path.read_bytes())
                if classes:
                    _add(tar, f"{key}.cls", str(label).encode())
        os.replace(tmp, out / name)
        shards.append({"file": name, "count": len(part)})
    first = kept[0][2]
    index = {
        "format": FORMAT,
        "source": str(src),
        "images": len(kept),
        "classes": classes,
        "shards": shards,
        "image": {
            "height": first.height,
            "width": first.width,
            "channels": first.channels,
            "dtype": str(first.dtype).removeprefix("torch."),
        },
        "skipped": [path for path, _ in failures],
        "seed": seed,
    }
    tmp = out / f".{INDEX}.tmp"
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(tmp, out / INDEX)
    return index
