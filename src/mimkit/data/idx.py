"""IDX files (the MNIST / Fashion-MNIST format), raw or gzip-compressed.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), the
dimensions as big-endian uint32, then the values in C order, big-endian.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

# IDX type code -> big-endian numpy dtype
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
SPLIT_PREFIXES = {"train": "train", "test": "t10k"}


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read one IDX file (gzip-compressed or raw, told apart by content, not by name).

    Returns:
        A tensor of the file's shape and type (uint8 for images ``[N, H, W]`` and labels ``[N]``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an IDX file, or its size does not match its header (names the path).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: corrupt gzip data ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path} is not an IDX file: expected magic bytes 00 00 <type in "
            f"{sorted(hex(c) for c in _IDX_DTYPES)}> <ndim>, got {raw[:4].hex(' ') or 'an empty file'}"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes for {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: IDX header says shape {shape} of {dtype.name} ({expected} bytes), "
            f"but the file holds {len(raw)} bytes"
        )
    values = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(values.astype(dtype.newbyteorder("="), copy=True))


def find_idx_file(root: str | os.PathLike, split: str, kind: str) -> Path | None:
    """The IDX file of ``split`` ("train" / "test") and ``kind`` ("images" / "labels") in ``root``.

    Accepts the usual names: ``train-images-idx3-ubyte``, ``train-images.idx3-ubyte``, each raw or
    ``.gz`` (``t10k-`` for the test split). Returns None when there is none.
    """
    if split not in SPLIT_PREFIXES:
        raise ValueError(f"split must be one of {', '.join(SPLIT_PREFIXES)}; got {split!r}")
    ndim = 3 if kind == "images" else 1
    prefix = SPLIT_PREFIXES[split]
    for stem in (f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"):
        for name in (stem + ".gz", stem):
            if (Path(root) / name).is_file():
                return Path(root) / name
    return None


def load_idx(
    root: str | os.PathLike, split: str = "train", require_labels: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an MNIST-style split from a directory of IDX files.

    Args:
        root: directory with ``train-images-idx3-ubyte[.gz]`` etc.
        split: ``"train"`` or ``"test"`` (``t10k-*`` files).
        require_labels: if False, a missing label file gives labels of -1 instead of an error.

    Returns:
        ``images`` uint8 ``[N, 1, H, W]`` and ``labels`` int64 ``[N]``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"IDX data directory not found: {root} (expected a directory of IDX files)")
    image_file = find_idx_file(root, split, "images")
    if image_file is None:
        prefix = SPLIT_PREFIXES[split]
        raise FileNotFoundError(
            f"no {split} images in {root}: expected {prefix}-images-idx3-ubyte(.gz) "
            f"(found: {', '.join(sorted(p.name for p in root.iterdir())[:8]) or 'nothing'})"
        )
    images = read_idx(image_file)
    if images.dim() != 3 or images.dtype != torch.uint8:
        raise ValueError(
            f"{image_file}: expected uint8 images [N, H, W], "
            f"got {images.dtype} of shape {tuple(images.shape)}"
        )
    images = images.unsqueeze(1)  # [N, 1, H, W]
    label_file = find_idx_file(root, split, "labels")
    if label_file is None:
        if require_labels:
            prefix = SPLIT_PREFIXES[split]
            raise FileNotFoundError(f"no {split} labels in {root}: expected {prefix}-labels-idx1-ubyte(.gz)")
        return images, torch.full((images.shape[0],), -1, dtype=torch.int64)
    labels = read_idx(label_file)
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{label_file}: expected {images.shape[0]} labels (one per image), "
            f"got shape {tuple(labels.shape)}"
        )
    return images, labels.to(torch.int64)
