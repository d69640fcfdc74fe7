"""A sample that is part of a file (a slice of a volume, a frame, a chip of a scene), its id, and the two
config blocks that cut files into parts: ``data.volume`` and ``data.tile``.

A folder dataset holds, per sample, a :class:`~pathlib.Path` (the whole file is one image) or a
:class:`Part`. Both are named by a **sample id**: the file's path relative to the folder (POSIX), and for
a part a suffix after ``#``:

- ``cls/brain.nii.gz#z=41``: slice 41 along the volume's z axis (``x``, ``y``, ``z``: the volume's axes in
  RAS+ order, see ``mimkit.data.volumes``);
- ``scan.dcm#frame=3``: frame 3 of a multi-frame file;
- ``ct/IM0012.dcm#slice=11``: a file that is slice 11 of its DICOM series, in the series' order
  (``data.volume.series``, see ``mimkit.data.series``);
- ``scene.tif#tile=512,1024``: the chip whose top-left pixel is row 512, column 1024 (its size is the
  run's ``data.tile`` size);
- ``brain.nii.gz#z=41;tile=0,64``: a chip of a slice.

``sample_id.split("#", 1)[0]`` is always the source file (:func:`source_of`): the split files, the
predictions CSV and the embedding index carry sample ids, so every result maps back to its file and its
place in it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

AXES = ("x", "y", "z")


@dataclass(frozen=True)
class Part:
    """A 2-D sample cut out of a file.

    Attributes:
        path: the file.
        frame: the slice (volumes, along ``axis``) or frame (multi-frame files); None for a 2-D file.
        box: ``(top, left, height, width)`` in pixels of the (slice's) image; None for all of it.
        axis: the volume axis ``frame`` counts along (0, 1, 2 = x, y, z); None for a frame of a
            multi-frame file.
        levels: per band ``(lows, highs)`` of the raw values that map linearly to [0, 1] (float32), from
            the whole volume (``data.window`` or ``data.volume.percentiles``); None: raw values.
        series_index: the file's place in its DICOM series (0: the first slice in the series' order); None
            for a file that is not read as part of a series.
    """

    path: Path
    frame: int | None = None
    box: tuple[int, int, int, int] | None = None
    axis: int | None = None
    levels: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    series_index: int | None = None

    @property
    def suffix(self) -> str:
        """What follows ``#`` in the sample id: ``z=41``, ``frame=3``, ``slice=11``, ``tile=512,1024``,
        joined by ``;``."""
        parts = []
        if self.frame is not None:
            name = AXES[self.axis] if self.axis is not None else "frame"
            parts.append(f"{name}={self.frame}")
        if self.series_index is not None:
            parts.append(f"slice={self.series_index}")
        if self.box is not None:
            parts.append(f"tile={self.box[0]},{self.box[1]}")
        return ";".join(parts)

    def __str__(self) -> str:
        suffix = self.suffix
        return f"{self.path}#{suffix}" if suffix else str(self.path)


Item = Path | Part  # what a folder dataset holds per sample


def source(item: Item | str | os.PathLike) -> Path:
    """The file a sample comes from."""
    return item.path if isinstance(item, Part) else Path(item)


def sample_id(item: Item, root: str | os.PathLike) -> str:
    """The sample's id under ``root``: the file's relative POSIX path, ``#`` and the part's suffix."""
    rel = source(item).relative_to(root).as_posix()
    suffix = item.suffix if isinstance(item, Part) else ""
    return f"{rel}#{suffix}" if suffix else rel


def source_of(sid: str) -> str:
    """The source file (relative path) of a sample id: its part before ``#``."""
    return sid.split("#", 1)[0]


# ----------------------------------------------------------------------------- config blocks


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class VolumeSpec:
    """How a 3-D volume becomes 2-D slices (``data.volume``; see :class:`~mimkit.data.DataConfig`)."""

    axis: int = 2
    stride: int = 1
    skip_empty: bool = True
    percentiles: tuple[float, float] | None = None
    series: bool = False


@dataclass(frozen=True)
class TileSpec:
    """How a large image is cut into chips (``data.tile``; see :class:`~mimkit.data.DataConfig`)."""

    size: tuple[int, int]
    stride: tuple[int, int]
    nodata: float | None = None
    skip_nodata: bool = True

    def boxes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """Every chip ``(top, left, h, w)`` of an image, row by row: ``floor((H - h) / stride) + 1`` rows
        of ``floor((W - w) / stride) + 1``; none when the chip is larger than the image."""
        (h, w), (sh, sw) = self.size, self.stride
        if h > height or w > width:
            return []
        rows, cols = (height - h) // sh + 1, (width - w) // sw + 1
        return [(r * sh, c * sw, h, w) for r in range(rows) for c in range(cols)]


_VOLUME_KEYS = ("axis", "stride", "skip_empty", "percentiles", "series")
_TILE_KEYS = ("size", "stride", "nodata", "skip_nodata")


def _unknown(value: dict, keys: tuple[str, ...], name: str) -> None:
    bad = [k for k in value if k not in keys]
    if bad:
        raise ValueError(f"unknown key {name}.{bad[0]} (valid: {', '.join(keys)})")


def volume_spec(value: Any) -> VolumeSpec:
    """``data.volume`` (None or a mapping) as a :class:`VolumeSpec`; a one-line ValueError when bad."""
    if value is None:
        return VolumeSpec()
    if not isinstance(value, dict):
        raise ValueError(
            f"data.volume must be a mapping (e.g. {{axis: z, stride: 2, skip_empty: true, "
            f"percentiles: [0.5, 99.5]}}), got {value!r}"
        )
    _unknown(value, _VOLUME_KEYS, "data.volume")
    axis = value.get("axis", "z")
    if axis in AXES:
        axis = AXES.index(axis)
    if not _is_int(axis) or not 0 <= axis <= 2:
        raise ValueError(f"data.volume.axis must be x, y or z (or 0, 1, 2), got {value.get('axis')!r}")
    stride = value.get("stride", 1)
    if not _is_int(stride) or stride < 1:
        raise ValueError(f"data.volume.stride must be an int >= 1 (1: every slice), got {stride!r}")
    skip = value.get("skip_empty", True)
    if not isinstance(skip, bool):
        raise ValueError(f"data.volume.skip_empty must be true or false, got {skip!r}")
    pct = value.get("percentiles")
    if pct is not None:
        if (
            not isinstance(pct, (list, tuple))
            or len(pct) != 2
            or not all(map(_is_number, pct))
            or not 0 <= pct[0] < pct[1] <= 100
        ):
            raise ValueError(
                f"data.volume.percentiles must be [low, high] with 0 <= low < high <= 100, got {pct!r}"
            )
        pct = (float(pct[0]), float(pct[1]))
    series = value.get("series", False)
    if not isinstance(series, bool):
        raise ValueError(f"data.volume.series must be true or false, got {series!r}")
    if series and axis != 2:
        raise ValueError(
            f"data.volume.series reads each DICOM series in the plane it was acquired in (axis z), not "
            f"along {AXES[axis]}: to slice across it, convert the series to NIfTI (e.g. dcm2niix) and read "
            "the volume"
        )
    return VolumeSpec(axis, stride, skip, pct, series)


def _pair(value: Any, name: str) -> tuple[int, int]:
    if _is_int(value):
        value = [value, value]
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(_is_int(v) and v > 0 for v in value)
    ):
        raise ValueError(f"{name} must be a positive int or [height, width], got {value!r}")
    return int(value[0]), int(value[1])


def tile_spec(value: Any) -> TileSpec | None:
    """``data.tile`` as a :class:`TileSpec` (None: no tiling): ``64`` (size = stride), ``[64, 32]`` (size,
    stride) or a mapping with ``size``, ``stride``, ``nodata``, ``skip_nodata``. A one-line ValueError when
    bad."""
    if value is None:
        return None
    if _is_int(value):
        value = {"size": value}
    elif isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"data.tile as a list is [size, stride], got {value!r}")
        value = {"size": value[0], "stride": value[1]}
    if not isinstance(value, dict) or "size" not in value:
        raise ValueError(
            f"data.tile must be a size (64), [size, stride] ([64, 32]) or a mapping with a size "
            f"({{size: 64, stride: 64, nodata: 0}}), got {value!r}"
        )
    _unknown(value, _TILE_KEYS, "data.tile")
    size = _pair(value["size"], "data.tile.size")
    stride = _pair(value.get("stride", list(size)), "data.tile.stride")
    nodata = value.get("nodata")
    if nodata is not None and not _is_number(nodata):
        raise ValueError(f"data.tile.nodata must be a number or null (the file's, else 0), got {nodata!r}")
    skip = value.get("skip_nodata", True)
    if not isinstance(skip, bool):
        raise ValueError(f"data.tile.skip_nodata must be true or false, got {skip!r}")
    return TileSpec(size, stride, None if nodata is None else float(nodata), skip)
