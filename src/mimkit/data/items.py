"""The samples of a folder: a 2-D image file is one, a volume is its slices, a large image its chips.

:func:`expand` turns a folder's files into its samples (:data:`~mimkit.data.parts.Item`: a path, or a
:class:`~mimkit.data.parts.Part`), once per file and config (kept for the process, keyed by the file's size
and time): a NIfTI volume always becomes slices (``data.volume``, defaults: every z slice, empty ones
skipped); with ``data.tile`` every image (and every slice) becomes chips, and chips that are nodata
everywhere are skipped and counted. Finding empty slices and nodata chips reads each file once, a band of
rows at a time for a large TIFF or array (memory: one band, up to :data:`SCAN_BAND_MB`).

:func:`read_item` reads one sample's pixels ``[H, W, C]`` at the file's dtype: a chip of a tiled TIFF or
a ``.npy`` reads only its region (:mod:`mimkit.data.tiles`), a slice reads its volume (:mod:`mimkit.data.
volumes`); a chip of any other format reads the whole image (the last two kept per process).

Frames: :func:`frame_count` and :func:`read_frame` dispatch by format, so every format with several
frames per file expands the same way: a volume's slices, a multi-frame DICOM's frames (``file.dcm#frame=3``;
enhanced objects with each frame's own rescale and window, :mod:`mimkit.data.dicom`).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mimkit.data.config import DataConfig
from mimkit.data.dicom import dicom_frame_count as header_frame_count
from mimkit.data.parts import AXES, Item, Part, TileSpec, VolumeSpec, tile_spec, volume_spec
from mimkit.data.readers import DICOM_EXTENSIONS, ReadError, is_dicom_file, read_array, suffix
from mimkit.data.series import SliceHeader, order_series, slice_header, stack_slices
from mimkit.data.tiles import Box, file_nodata, has_regions, read_region, region_shape
from mimkit.data.volumes import (
    apply_levels,
    background,
    is_volume_file,
    nonempty_slices,
    read_slice,
    read_volume,
    slice_plane,
    volume_levels,
    volume_shape,
)

logger = logging.getLogger(__name__)

SCAN_BAND_MB = 64
_SHOWN = 3
_SAID: set[str] = set()  # the "cut into" lines this process logged


@dataclass(frozen=True)
class ItemSpec:
    """How files become samples: ``data.volume``, ``data.tile`` and the window (DICOM, volumes)."""

    volume: VolumeSpec = field(default_factory=VolumeSpec)
    tile: TileSpec | None = None
    window: tuple[float, float] | str | None = None


def item_spec(volume=None, tile=None, window=None) -> ItemSpec:
    """The :class:`ItemSpec` of a config's ``volume``, ``tile`` and ``window`` values (as written)."""
    window = tuple(window) if isinstance(window, list) else window
    return ItemSpec(volume_spec(volume), tile_spec(tile), window)


def spec_of(cfg: DataConfig) -> ItemSpec:
    """The :class:`ItemSpec` of a data config."""
    return item_spec(cfg.volume, cfg.tile, cfg.window)


# ----------------------------------------------------------------------------- reading


def dicom_frame_count(path: Path) -> int:
    """Frames of a DICOM file, from its header (:func:`mimkit.data.dicom.dicom_frame_count`); 1 for a file
    whose header does not read: reading it then says why, counted with the folder's unreadable files."""
    try:
        return header_frame_count(path)
    except ReadError:
        return 1


def frame_count(path: Path, axis: int = 2) -> int:
    """2-D images in a file: a volume's slices along ``axis``, a DICOM file's frames, else 1."""
    if is_volume_file(path):
        return volume_shape(path)[axis]
    if _is_dicom(path):
        return dicom_frame_count(path)
    return 1


def read_frame(path: Path, frame: int | None, window=None, axis: int = 2, levels=None) -> np.ndarray:
    """Frame ``frame`` of a file as ``[H, W, C]``: a volume's slice along ``axis`` (raw, or through
    ``levels``), else the file's one image (``frame`` None or 0)."""
    if is_volume_file(path):
        return read_slice(path, axis, 0 if frame is None else frame, levels)
    arr = read_array(path, window, frame)
    return arr if levels is None else apply_levels(arr, levels)  # a slice of a DICOM series


@functools.lru_cache(maxsize=2)
def _whole(path: str, _stamp: tuple[int, int], window, frame, axis, levels) -> np.ndarray:
    arr = read_frame(Path(path), frame, window, 2 if axis is None else axis, levels)
    arr.flags.writeable = False
    return arr


def read_item(item: Item, window=None) -> np.ndarray:
    """A sample's pixels ``[H, W, C]`` at the file's dtype (float32 in [0, 1] for a slice with levels).
    A volume given as a path reads as its middle z slice (what its header-level facts are taken from)."""
    if not isinstance(item, Part):
        if is_volume_file(item):
            return read_slice(item, 2, volume_shape(item)[2] // 2)
        return read_array(item, window)
    if item.box is not None and item.frame is None and has_regions(item.path):
        return read_region(item.path, item.box)
    if item.box is None or is_volume_file(item.path):
        arr = read_frame(item.path, item.frame, window, 2 if item.axis is None else item.axis, item.levels)
    else:
        stat = os.stat(item.path)
        arr = _whole(
            str(item.path), (stat.st_size, stat.st_mtime_ns), window, item.frame, item.axis, item.levels
        )
    if item.box is None:
        return arr
    top, left, h, w = item.box
    if top + h > arr.shape[0] or left + w > arr.shape[1]:
        raise ReadError(f"region {item.box} outside the {arr.shape[0]}x{arr.shape[1]} image")
    return np.array(arr[top : top + h, left : left + w])


# ----------------------------------------------------------------------------- expanding files


def _is_nodata(chip: np.ndarray, nodata: float) -> bool:
    return bool(np.isnan(chip).all()) if np.isnan(nodata) else bool((chip == nodata).all())


def _chips_of(arr: np.ndarray, boxes: Sequence[Box], nodata: float | None) -> list[Box]:
    """The boxes of ``arr`` (``[H, W, C]``) that are not nodata everywhere (all, when ``nodata`` is None)."""
    if nodata is None:
        return list(boxes)
    return [b for b in boxes if not _is_nodata(arr[b[0] : b[0] + b[2], b[1] : b[1] + b[3]], nodata)]


def _too_small(height: int, width: int, tile: TileSpec) -> ReadError:
    return ReadError(
        f"{height}x{width}, smaller than the {tile.size[0]}x{tile.size[1]} chips of data.tile.size"
    )


def _scan_regions(path: Path, tile: TileSpec, nodata: float | None) -> list[Box]:
    """The chips of a file read by regions, scanned a band of chip rows at a time."""
    height, width, bands = region_shape(path)
    boxes = tile.boxes(height, width)
    if not boxes:
        raise _too_small(height, width, tile)
    if nodata is None:
        return boxes
    row_bytes = width * bands * 8  # an upper bound: 8 bytes a value
    per_band = max(1, (SCAN_BAND_MB * 2**20 // row_bytes - tile.size[0]) // tile.stride[0] + 1)
    tops = sorted({b[0] for b in boxes})
    kept: list[Box] = []
    for start in range(0, len(tops), per_band):
        group = tops[start : start + per_band]
        top = group[0]
        band = read_region(path, (top, 0, group[-1] + tile.size[0] - top, width))
        shifted = [(b[0] - top, b[1], b[2], b[3]) for b in boxes if group[0] <= b[0] <= group[-1]]
        kept += [(b[0] + top, b[1], b[2], b[3]) for b in _chips_of(band, shifted, nodata)]
    return kept


def _volume_parts(path: Path, spec: ItemSpec) -> tuple[list[Part], int]:
    vol_spec, tile = spec.volume, spec.tile
    volume = read_volume(path)
    axis = vol_spec.axis
    n = volume.shape[axis]
    if n < vol_spec.stride:
        raise ReadError(f"{n} slice(s) along {AXES[axis]}, fewer than data.volume.stride={vol_spec.stride}")
    levels = volume_levels(path, volume, spec.window, vol_spec.percentiles)
    indices = list(range(0, n, vol_spec.stride))
    empty = 0
    if vol_spec.skip_empty:
        keep = nonempty_slices(volume, axis, background(volume, levels))
        empty = sum(not keep[i] for i in indices)
        indices = [i for i in indices if keep[i]]
    if tile is None:
        return [Part(path, i, None, axis, levels) for i in indices], empty
    parts = []
    for i in indices:
        plane = apply_levels(slice_plane(volume, axis, i), levels)
        boxes = tile.boxes(plane.shape[0], plane.shape[1])
        if not boxes:
            raise _too_small(plane.shape[0], plane.shape[1], tile)
        nodata = (0.0 if tile.nodata is None else tile.nodata) if tile.skip_nodata else None
        kept = _chips_of(plane, boxes, nodata)
        empty += len(boxes) - len(kept)
        parts += [Part(path, i, b, axis, levels) for b in kept]
    return parts, empty


@functools.lru_cache(maxsize=1024)
def _file_parts(path: str, _stamp: tuple[int, int], spec: ItemSpec) -> tuple[tuple[Item, ...], int]:
    """``(samples of one file, how many empty slices / nodata chips were left out)``."""
    file = Path(path)
    if is_volume_file(file):
        parts, empty = _volume_parts(file, spec)
        return tuple(parts), empty
    frames = frame_count(file)
    tile = spec.tile
    if tile is None:
        return ((file,) if frames == 1 else tuple(Part(file, k) for k in range(frames))), 0
    nodata = None
    if tile.skip_nodata:
        nodata = tile.nodata if tile.nodata is not None else file_nodata(file)
        nodata = 0.0 if nodata is None else nodata
    if frames == 1 and has_regions(file):
        boxes = _scan_regions(file, tile, nodata)
        total = len(tile.boxes(*region_shape(file)[:2]))
        return tuple(Part(file, None, b) for b in boxes), total - len(boxes)
    parts, empty = [], 0
    for k in range(frames):
        arr = read_frame(file, k if frames > 1 else None, spec.window)
        boxes = tile.boxes(arr.shape[0], arr.shape[1])
        if not boxes:
            raise _too_small(arr.shape[0], arr.shape[1], tile)
        kept = _chips_of(arr, boxes, nodata)
        empty += len(boxes) - len(kept)
        parts += [Part(file, k if frames > 1 else None, b) for b in kept]
    return tuple(parts), empty


def _may_have_frames(path: Path) -> bool:
    return is_volume_file(path) or suffix(path) in DICOM_EXTENSIONS or not path.suffix


def _is_dicom(path: Path) -> bool:
    return suffix(path) in DICOM_EXTENSIONS or (not path.suffix and is_dicom_file(path))


def _find_series(files: Sequence[Path], labels: Sequence[int]) -> dict[int, list[tuple[int, SliceHeader]]]:
    """``{index of a series' first file: (index, header) of its files}`` for the single-frame DICOM files of
    ``files``, grouped by (label, SeriesInstanceUID); files whose header does not read are left out here
    (read as files, they are counted with the unreadable ones)."""
    groups: dict[tuple[int, str], list[tuple[int, SliceHeader]]] = {}
    for i, (path, label) in enumerate(zip(files, labels, strict=True)):
        if not _is_dicom(path):
            continue
        try:
            head = slice_header(path)
        except ReadError:
            continue
        if head.image and head.frames == 1:
            groups.setdefault((label, head.series or f"file {path}"), []).append((i, head))
    return {members[0][0]: members for members in groups.values()}


def _read_slices(paths: Sequence[Path], window) -> tuple[list[Path], list[np.ndarray], list[Path]]:
    """The slices of ``paths`` that read (with their arrays), and those that do not."""
    kept, arrays, unread = [], [], []
    for path in paths:
        try:
            arrays.append(read_array(path, window))
        except ReadError:
            unread.append(path)
            continue
        kept.append(path)
    return kept, arrays, unread


@functools.lru_cache(maxsize=256)
def _series_parts(
    heads: tuple[SliceHeader, ...], _stamps: tuple[tuple[int, int], ...], spec: ItemSpec
) -> tuple[tuple[Item, ...], int, tuple[str, ...]]:
    """``(samples of one DICOM series, empty slices / nodata chips left out, a reason per file left out)``
    (:mod:`mimkit.data.series`): its slices, and as plain files those whose pixels do not read (the
    folder's decoding skips and counts them by reason)."""
    ordered, _ = order_series(heads)
    name = ordered[0].series or ordered[0].path.name
    vol_spec, tile = spec.volume, spec.tile
    if len(ordered) < vol_spec.stride:
        n = len(ordered)
        return (), 0, (f"a series of {n} slice(s), fewer than data.volume.stride={vol_spec.stride}",)
    place = {s.path: k for k, s in enumerate(ordered)}
    chosen = [s.path for s in ordered[:: vol_spec.stride]]
    if not (vol_spec.skip_empty or vol_spec.percentiles or tile):
        return tuple(Part(p, series_index=place[p]) for p in chosen), 0, ()
    # every slice when the series' percentiles are asked for, else the chosen ones
    readable, arrays, unread = _read_slices([s.path for s in ordered] if vol_spec.percentiles else chosen,
                                            spec.window)  # fmt: skip
    wanted = set(chosen)
    unread = tuple(p for p in unread if p in wanted)
    if not readable:
        return unread, 0, ()
    volume = stack_slices(arrays, name)
    levels = volume_levels(readable[0], volume, None, vol_spec.percentiles) if vol_spec.percentiles else None
    keep = dict(zip(readable, range(len(readable)), strict=True))
    kept = [p for p in chosen if p in keep]
    empty = 0
    if vol_spec.skip_empty:
        above = nonempty_slices(volume, 2, background(volume, levels))
        empty = sum(not above[keep[p]] for p in kept)
        kept = [p for p in kept if above[keep[p]]]
    if tile is None:
        return (*unread, *(Part(p, levels=levels, series_index=place[p]) for p in kept)), empty, ()
    parts = []
    nodata = (0.0 if tile.nodata is None else tile.nodata) if tile.skip_nodata else None
    for p in kept:
        plane = apply_levels(volume[:, :, keep[p]], levels)
        boxes = tile.boxes(plane.shape[0], plane.shape[1])
        if not boxes:
            raise _too_small(plane.shape[0], plane.shape[1], tile)
        chips = _chips_of(plane, boxes, nodata)
        empty += len(boxes) - len(chips)
        parts += [Part(p, None, b, levels=levels, series_index=place[p]) for b in chips]
    return (*unread, *parts), empty, ()


def expand(
    files: Sequence[Path], labels: Sequence[int], spec: ItemSpec | None = None, where: str = ""
) -> tuple[list[Item], list[int]]:
    """The samples of ``files`` (each with its file's label), in file order; see the module docstring.

    Files that cannot be cut (unreadable, smaller than a chip, fewer slices than the stride) are left out,
    counted in one warning line with the first reasons; the empty slices and nodata chips left out are
    counted in one info line.

    Raises:
        ValueError: files were given and none gives a sample (the first reason in the message).
    """
    spec = spec or ItemSpec()
    items: list[Item] = []
    out_labels: list[int] = []
    failed: list[str] = []
    lost_files = 0
    cut, made, empty, series = 0, 0, 0, 0

    def name(path: Path) -> str:
        return os.path.relpath(path, where) if where else path.name

    in_series = _find_series(files, labels) if spec.volume.series else {}
    member = {k for members in in_series.values() for k, _ in members}
    for i, (path, label) in enumerate(zip(files, labels, strict=True)):
        if i in in_series:
            heads = tuple(head for _, head in in_series[i])
            paths = tuple(h.path for h in heads)
            try:
                stamps = tuple((st.st_size, st.st_mtime_ns) for st in map(os.stat, paths))
                parts, skipped, lost = _series_parts(heads, stamps, spec)
            except Exception as err:  # noqa: BLE001 - the series is left out, its files counted
                lost = (str(err).splitlines()[0] if str(err) else type(err).__name__,)
                parts, skipped = (), 0
            if lost:  # one line for the series: its first file and how many it has
                others = f" and {len(paths) - 1} more file(s) of its series" if len(paths) > 1 else ""
                failed.append(f"{name(paths[0])}{others}: {lost[0]}")
                lost_files += len(paths)
                continue
            sliced = sum(isinstance(x, Part) for x in parts)
            series, made, empty = series + bool(sliced), made + sliced, empty + skipped
            items += parts
            out_labels += [label] * len(parts)
            continue
        if i in member:
            continue
        if spec.tile is None and not _may_have_frames(path):
            items.append(path)
            out_labels.append(label)
            continue
        try:
            stat = os.stat(path)
            parts, skipped = _file_parts(str(path), (stat.st_size, stat.st_mtime_ns), spec)
        except Exception as err:  # noqa: BLE001 - any reader failure: this file is left out, counted
            failed.append(f"{name(path)}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
            lost_files += 1
            continue
        if not (len(parts) == 1 and isinstance(parts[0], Path)):
            cut, made = cut + 1, made + len(parts)
        empty += skipped
        items += parts
        out_labels += [label] * len(parts)
    where = f" under {where}" if where else ""
    if failed:
        more = f" (and {len(failed) - _SHOWN} more)" if len(failed) > _SHOWN else ""
        logger.warning("left out %d of %d file(s)%s: %s%s", lost_files, len(files), where,
                       "; ".join(failed[:_SHOWN]), more)  # fmt: skip
    if files and not items:
        why = failed[0] if failed else "every slice or chip empty"
        raise ValueError(f"no sample left of the {len(files)} file(s){where}: {why}")
    if cut or series:
        what = "chips" if spec.tile is not None else "slices"
        left = "empty or nodata" if spec.tile is not None else "empty"
        cut_from = " and ".join(
            part
            for part in (f"{cut} file(s)" if cut else "", f"{series} DICOM series" if series else "")
            if part
        )
        line = f"{cut_from}{where} cut into {made} {what} ({empty} {left} left out)"
        if line not in _SAID:  # a folder is listed again for each split and protocol: said once
            _SAID.add(line)
            logger.info(line)
    return items, out_labels
