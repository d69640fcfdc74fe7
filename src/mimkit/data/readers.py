"""Reading one image file to an array at its full bit depth: ``[H, W, C]`` with C any number of bands.

Formats and the library that reads each:

- ``.npy``: NumPy arrays ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]``: channels-first when the first axis
  is shorter than both others (``[13, 64, 64]``), else channels-last (``[64, 64, 13]``, and a cube
  ``[C, C, C]``); bool, integer or float values, never pickled objects.
- ``.tif`` / ``.tiff``: ``tifffile`` (``pip install 'mimkit[field]'``; with ``imagecodecs`` for compressed
  files) reads any band count and bit depth; without it Pillow reads 1/3/4-band 8/16-bit files.
- ``.dcm`` / ``.dicom`` (and extension-less files with DICOM's preamble): :mod:`mimkit.data.dicom`
  (pydicom and its decoder plugins, ``mimkit[dicom]``): modality values, a window if asked (``[center,
  width]``, ``"voi"`` or a preset name), compressed transfer syntaxes, frame ``k`` of a multi-frame file.
- 16-bit colour PNG: ``imagecodecs`` (Pillow would read it at 8 bits); any other file: Pillow (the
  8-bit fast path in :mod:`mimkit.data.images` handles 8-bit files without coming here).

Written here rather than taken whole from one library: no single well-kept reader covers NumPy, TIFF,
DICOM and PNG with the band-axis and DICOM-window rules above, so each format goes to its own library and
only the glue (axis order, window, refusals) is ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mimkit.data.arrays import ReadError, to_hwc
from mimkit.data.dicom import read_dicom

NUMPY_EXTENSIONS = (".npy",)
TIFF_EXTENSIONS = (".tif", ".tiff")
DICOM_EXTENSIONS = (".dcm", ".dicom")
FIELD_HINT = "pip install 'mimkit[field]'"


def suffix(path: Path) -> str:
    return path.suffix.lower()


def is_dicom_file(path: Path) -> bool:
    """A file with DICOM's preamble (``DICM`` at byte 128): DICOM folders often have no extensions."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def needs_array_reader(path: Path) -> bool:
    """Files Pillow cannot read at full depth: NumPy, TIFF (any band count), DICOM (extension-less too)."""
    return suffix(path) in NUMPY_EXTENSIONS + TIFF_EXTENSIONS + DICOM_EXTENSIONS or not path.suffix


def read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as err:  # object arrays need pickle: refused, a hostile file must not run code
        raise ReadError(f"not a plain numeric .npy array ({str(err).splitlines()[0]})") from None
    if arr.dtype.kind not in "biuf":
        raise ReadError(f".npy of dtype {arr.dtype}; expected bool, integer or float values")
    return np.ascontiguousarray(to_hwc(np.asarray(arr), "the .npy array", guess_axis=True))


def read_tiff(path: Path) -> np.ndarray:
    try:
        import tifffile
    except ImportError:
        return read_pillow(path)
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        arr, axes = series.asarray(), series.axes
    # keep the image axes (Y, X) and one band axis (S samples, or C channels); drop singleton others
    keep = [i for i, a in enumerate(axes) if a in "YXSC" or arr.shape[i] > 1]
    arr = arr.reshape([arr.shape[i] for i in keep]) if len(keep) < arr.ndim else arr
    axes = "".join(axes[i] for i in keep)
    if arr.ndim == 3 and axes.index("Y") > 0:  # bands first (planar): move them last
        arr = np.moveaxis(arr, 0, 2)
    if arr.ndim not in (2, 3):
        raise ReadError(f"TIFF of shape {tuple(arr.shape)} (axes {axes}): not one 2-D image")
    return to_hwc(arr, "the TIFF image") if arr.ndim == 2 else arr


def _png_bit_depth(head: bytes) -> tuple[int, int] | None:
    """``(bit depth, colour type)`` from the first 26 bytes of a PNG, or None for another format."""
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def is_deep_colour_png(source: Path | bytes) -> bool:
    """A 16-bit colour PNG (colour types 2 and 6), from a file or its bytes: Pillow would decode it at
    8 bits."""
    if isinstance(source, bytes):
        head = source[:26]
    else:
        with open(source, "rb") as f:
            head = f.read(26)
    header = _png_bit_depth(head)
    return header is not None and header[0] == 16 and header[1] in (2, 6)


def read_deep_png(path: Path) -> np.ndarray:
    try:
        import imagecodecs
    except ImportError:
        raise ReadError(
            f"a 16-bit colour PNG; reading it at full depth needs imagecodecs ({FIELD_HINT})"
        ) from None
    return to_hwc(imagecodecs.png_decode(path.read_bytes()), "the PNG image")


def read_pillow(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif img.mode in ("1", "LA", "La", "PA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("RGBA" if "A" in img.mode or "a" in img.mode else "RGB")
        arr = np.asarray(img)
    if arr.dtype.kind in "iu" and arr.dtype.itemsize > 2:  # mode "I": 32-bit ints, usually 16-bit data
        arr = arr.astype(np.uint16) if 0 <= arr.min(initial=0) and arr.max(initial=0) <= 65535 else arr
    return to_hwc(arr, "the image")


def read_array(
    path: Path, window: Sequence[float] | str | None = None, frame: int | None = None
) -> np.ndarray:
    """Any supported file as ``[H, W, C]`` at its own dtype (see the module docstring); ``frame``: frame
    ``k`` of a multi-frame DICOM (:func:`mimkit.data.dicom.read_dicom`), 0 or None for other files."""
    ext = suffix(path)
    if ext in DICOM_EXTENSIONS or (not ext and is_dicom_file(path)):
        return read_dicom(path, window, frame)
    if frame not in (None, 0):
        raise ReadError(f"frame {frame!r} of a file that holds one image (only DICOM has frames here)")
    if ext in NUMPY_EXTENSIONS:
        return read_npy(path)
    if ext in TIFF_EXTENSIONS:
        return read_tiff(path)
    if is_deep_colour_png(path):
        return read_deep_png(path)
    return read_pillow(path)
