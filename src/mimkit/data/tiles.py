"""Reading a region of a large image without reading the rest: tiled and striped TIFF, NumPy arrays.

- **TIFF** (one 2-D image, tiled or in strips, any band count; GeoTIFF included): only the TIFF tiles or
  strips that intersect the region are read (``os.pread`` at the offsets the file lists). Uncompressed
  segments are read row range by row range, straight into the region; compressed ones (deflate, LZW,
  JPEG, ...) are decoded whole by tifffile's own decoder (with ``imagecodecs``), and the last few
  decoded segments of a file (up to :data:`SEGMENT_CACHE_MB`) are kept, as neighbouring chips share
  them. Other TIFF layouts (several pages in one series, volumes in a page) are read whole.
- **.npy**: memory-mapped for the read and unmapped after it, so only the region's pages are touched.

The files' layouts stay open per process (the last :data:`OPEN_FILES`); reads are positionless
(``pread``), so loader worker processes forked from the parent share them safely. A GeoTIFF's own
nodata value (GDAL's ``GDAL_NODATA`` tag, 42113) is read by :func:`file_nodata`.
"""

from __future__ import annotations

import collections
import functools
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mimkit.data.readers import NUMPY_EXTENSIONS, TIFF_EXTENSIONS, ReadError, suffix, to_hwc

SEGMENT_CACHE_MB = 32
OPEN_FILES = 8
Box = tuple[int, int, int, int]  # top, left, height, width


def has_regions(path: Path) -> bool:
    """A file whose regions can be read alone: a TIFF whose first series is one 2-D page, or a .npy."""
    ext = suffix(path)
    if ext in NUMPY_EXTENSIONS:
        return True
    return ext in TIFF_EXTENSIONS and _tiff_layout(path) is not None


@dataclass
class _TiffLayout:
    """Where a TIFF page's segments (tiles or strips) are and how to read them."""

    file: Any  # the file, open for reading (its descriptor serves pread)
    tif: Any  # tifffile.TiffFile: its page decodes compressed segments
    height: int
    width: int
    samples: int
    dtype: np.dtype  # the file's byte order
    planes: int  # samples stored as separate planes (planar configuration 2), else 1
    seg_h: int
    seg_w: int
    offsets: tuple[int, ...]
    counts: tuple[int, ...]
    raw: bool  # uncompressed, whole bytes per sample: rows read straight from the file
    nodata: float | None
    decoded: collections.OrderedDict = field(default_factory=collections.OrderedDict)
    decoded_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def across(self) -> int:
        return math.ceil(self.width / self.seg_w)

    @property
    def down(self) -> int:
        return math.ceil(self.height / self.seg_h)


def _gdal_nodata(page) -> float | None:
    tag = page.tags.get(42113)
    if tag is None:
        return None
    try:
        return float(str(tag.value).strip().strip("\x00"))
    except ValueError:
        return None


@functools.lru_cache(maxsize=OPEN_FILES)
def _open_tiff(path: str, _stamp: tuple[int, int]) -> _TiffLayout | None:
    import tifffile

    tif = tifffile.TiffFile(path)
    page, series = tif.pages[0], tif.series[0]
    single = len(series.pages) == 1 and series.pages[0] is page and page.imagedepth == 1
    if not single or page.dtype is None or page.is_subsampled or not (page.is_tiled or page.rowsperstrip):
        tif.close()
        return None
    h, w, s = page.imagelength, page.imagewidth, page.samplesperpixel
    planes = s if page.planarconfig == 2 and s > 1 else 1
    seg_h, seg_w = (page.tilelength, page.tilewidth) if page.is_tiled else (min(page.rowsperstrip, h), w)
    dtype = np.dtype(page.dtype).newbyteorder(tif.byteorder)
    raw = page.compression == 1 and page.bitspersample == dtype.itemsize * 8 and page.fillorder == 1
    return _TiffLayout(
        open(path, "rb"), tif, h, w, s, dtype, planes, seg_h, seg_w,
        tuple(page.dataoffsets), tuple(page.databytecounts), raw, _gdal_nodata(page),
    )  # fmt: skip


def _tiff_layout(path: Path) -> _TiffLayout | None:
    stat = os.stat(path)
    try:
        return _open_tiff(str(path), (stat.st_size, stat.st_mtime_ns))
    except ImportError:
        return None
    except Exception as err:  # noqa: BLE001 - tifffile's TiffFileError, a truncated header
        raise ReadError(f"not a readable TIFF file ({str(err).splitlines()[0]})") from None


def file_nodata(path: Path) -> float | None:
    """A GeoTIFF's own nodata value (``GDAL_NODATA``), else None."""
    if suffix(path) not in TIFF_EXTENSIONS:
        return None
    layout = _tiff_layout(path)
    return layout.nodata if layout is not None else None


def region_shape(path: Path) -> tuple[int, int, int]:
    """``(H, W, bands)`` of a file that :func:`has_regions`, from its header."""
    if suffix(path) in NUMPY_EXTENSIONS:
        arr = _npy(path)
        return arr.shape[0], arr.shape[1], arr.shape[2]
    layout = _tiff_layout(path)
    return layout.height, layout.width, layout.samples


def _npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as err:
        raise ReadError(f"not a plain numeric .npy array ({str(err).splitlines()[0]})") from None
    if arr.dtype.kind not in "biuf":
        raise ReadError(f".npy of dtype {arr.dtype}; expected bool, integer or float values")
    return to_hwc(arr, "the .npy array", guess_axis=True)  # a view: nothing read yet


def read_region(path: Path, box: Box) -> np.ndarray:
    """The pixels ``[h, w, bands]`` of ``box = (top, left, h, w)`` of a file that :func:`has_regions`, at
    the file's dtype (native byte order)."""
    top, left, h, w = box
    if suffix(path) in NUMPY_EXTENSIONS:
        arr = _npy(path)
        _check_box(box, arr.shape[0], arr.shape[1])
        out = np.array(arr[top : top + h, left : left + w])
        del arr  # unmapped: only the region's pages were touched
        return out
    layout = _tiff_layout(path)
    _check_box(box, layout.height, layout.width)
    out = np.empty((h, w, layout.samples), dtype=layout.dtype.newbyteorder("="))
    bands = layout.samples // layout.planes
    for plane in range(layout.planes):
        for ty in range(top // layout.seg_h, (top + h - 1) // layout.seg_h + 1):
            for tx in range(left // layout.seg_w, (left + w - 1) // layout.seg_w + 1):
                y0, x0 = ty * layout.seg_h, tx * layout.seg_w
                r0, r1 = max(top, y0) - y0, min(top + h, y0 + layout.seg_h, layout.height) - y0
                c0, c1 = max(left, x0) - x0, min(left + w, x0 + layout.seg_w, layout.width) - x0
                index = plane * layout.down * layout.across + ty * layout.across + tx
                seg = _segment_rows(layout, index, r0, r1)  # [r1 - r0, seg_w, bands]
                b0 = plane * bands
                out[y0 + r0 - top : y0 + r1 - top, x0 + c0 - left : x0 + c1 - left, b0 : b0 + bands] = seg[
                    :, c0:c1
                ]
    return out


def _check_box(box: Box, height: int, width: int) -> None:
    top, left, h, w = box
    if top < 0 or left < 0 or h < 1 or w < 1 or top + h > height or left + w > width:
        raise ReadError(f"region {box} (top, left, height, width) outside the {height}x{width} image")


def _segment_rows(layout: _TiffLayout, index: int, r0: int, r1: int) -> np.ndarray:
    """Rows ``r0:r1`` of segment ``index`` as ``[r1 - r0, seg_w, bands]``."""
    bands = layout.samples // layout.planes
    offset, count = layout.offsets[index], layout.counts[index]
    if count == 0:  # a sparse file's empty segment
        return np.zeros((r1 - r0, layout.seg_w, bands), dtype=layout.dtype)
    if layout.raw:
        row = layout.seg_w * bands * layout.dtype.itemsize
        data = os.pread(layout.file.fileno(), (r1 - r0) * row, offset + r0 * row)
        if len(data) < (r1 - r0) * row:
            raise ReadError(f"TIFF segment {index} is truncated")
        return np.frombuffer(data, dtype=layout.dtype).reshape(r1 - r0, layout.seg_w, bands)
    with layout.lock:
        seg = layout.decoded.get(index)
        if seg is not None:
            layout.decoded.move_to_end(index)
    if seg is None:
        data = os.pread(layout.file.fileno(), count, offset)
        page = layout.tif.pages[0]
        decoded = page.decode(data, index, jpegtables=page.jpegtables)[0]
        seg = np.asarray(decoded).reshape(-1, layout.seg_w, bands)  # [rows, seg_w, bands]
        with layout.lock:
            layout.decoded[index] = seg
            layout.decoded_bytes += seg.nbytes
            while layout.decoded_bytes > SEGMENT_CACHE_MB * 2**20 and len(layout.decoded) > 1:
                layout.decoded_bytes -= layout.decoded.popitem(last=False)[1].nbytes
    return seg[r0:r1]
