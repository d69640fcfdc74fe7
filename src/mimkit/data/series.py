"""DICOM series read as volumes: the single-frame files of one series as its slices, in order.

Archives keep a CT or MR series as one file per slice. With ``data.volume.series: true`` the single-frame
DICOM files of a folder are grouped by their SeriesInstanceUID (within each class folder; a file without
one is a series of its own), and each series is read as a volume in the plane it was acquired in:

- **order**: by each slice's position along the series' normal (ImagePositionPatient projected on the
  cross product of ImageOrientationPatient's row and column directions, the first slice's), when every
  slice has both tags; else by InstanceNumber when every slice has one; else by file name. Ties go by file
  name.
- ``data.volume.stride``: every ``stride``-th slice of that order from the first; a series with fewer
  slices than the stride is left out (one line).
- ``data.volume.skip_empty``: slices with no pixel above the series' background (its low level, else its
  minimum) are left out and counted.
- **intensity per series**: ``data.volume.percentiles`` over every pixel of the series (per band) map
  linearly to [0, 1]; ``data.window`` applies to each slice as to any DICOM file (``"voi"``: each file's
  own tags).
- a slice's id is its file and its place in the series: ``ct/IM0012.dcm#slice=11``
  (:mod:`mimkit.data.parts`); without ``data.group_by`` the held-out part is drawn by series.

Multi-frame files keep their frames (``#frame=k``); a file whose pixels do not read is passed on as a
file of its own, skipped and counted by reason with the folder's other unreadable files. Finding empty
slices or a series' percentiles reads every slice of the series once when the folder is listed, one
series in memory at a time. Slices across the acquisition plane (``data.volume.axis`` x or y) need the
series resampled onto a grid: convert it to NIfTI (e.g. with dcm2niix) and read the volume.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimkit.data.dicom import dicom_header
from mimkit.data.readers import ReadError


@dataclass(frozen=True)
class SliceHeader:
    """What orders a slice in its series, from its file's header."""

    path: Path
    series: str | None
    position: tuple[float, float, float] | None  # ImagePositionPatient
    orientation: tuple[float, ...] | None  # ImageOrientationPatient: row then column direction cosines
    instance: int | None  # InstanceNumber
    frames: int
    image: bool  # has Rows and Columns: an image, not a report, plan or directory


def _floats(value, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(map(math.isfinite, out)) else None


def slice_header(path: Path) -> SliceHeader:
    """The :class:`SliceHeader` of a DICOM file (its header only); ReadError when it is not readable.

    Kept per file and stamp (size, modification time): a run lists its folder several times (the split,
    the recipe, each dataset) and draws the split by series, and each would read every header again."""
    try:
        stat = os.stat(path)
    except OSError as err:
        raise ReadError(f"not a readable DICOM file ({err.strerror or err})") from None
    return _slice_header(Path(path), (stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=1 << 17)  # a SliceHeader is a few hundred bytes: 131k files, tens of MB
def _slice_header(path: Path, _stamp: tuple[int, int]) -> SliceHeader:
    ds = dicom_header(path)
    series = str(ds.get("SeriesInstanceUID", "") or "").strip() or None
    try:
        instance = int(ds.get("InstanceNumber")) if ds.get("InstanceNumber") not in (None, "") else None
    except (TypeError, ValueError):
        instance = None
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1  # reading the file says why (a bad NumberOfFrames)
    return SliceHeader(
        path,
        series,
        _floats(ds.get("ImagePositionPatient"), 3),
        _floats(ds.get("ImageOrientationPatient"), 6),
        instance,
        frames,
        "Rows" in ds and "Columns" in ds,
    )


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """The unit normal of a slice plane: row direction x column direction (ImageOrientationPatient)."""
    row, col = np.asarray(orientation[:3], dtype=np.float64), np.asarray(orientation[3:], dtype=np.float64)
    normal = np.cross(row, col)
    norm = np.linalg.norm(normal)
    if not norm > 0:
        raise ReadError(
            f"ImageOrientationPatient {tuple(orientation)} has parallel row and column directions"
        )
    return normal / norm


def order_series(slices: Sequence[SliceHeader]) -> tuple[list[SliceHeader], str]:
    """The slices of one series in order, and by what (``"position"``, ``"InstanceNumber"`` or
    ``"file name"``; see the module docstring)."""
    by_name = sorted(slices, key=lambda s: s.path.name)
    if all(s.position is not None and s.orientation is not None for s in by_name):
        normal = slice_normal(by_name[0].orientation)
        depth = {s.path: float(np.dot(normal, s.position)) for s in by_name}
        return sorted(by_name, key=lambda s: depth[s.path]), "position"
    if all(s.instance is not None for s in by_name):
        return sorted(by_name, key=lambda s: s.instance), "InstanceNumber"
    return by_name, "file name"


def stack_slices(arrays: Sequence[np.ndarray], series: str) -> np.ndarray:
    """Slices ``[H, W, B]`` of one series as a volume ``[H, W, n, B]`` (the axis order
    :func:`~mimkit.data.volumes.volume_levels` and ``nonempty_slices`` take, slices along axis 2)."""
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise ReadError(f"series {series}: slices of different shapes ({shapes[0]} and {shapes[-1]})")
    return np.stack(arrays, axis=2)
