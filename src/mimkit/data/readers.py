"""Reading one image file to an array at its full bit depth: ``[H, W, C]`` with C any number of bands.

Formats and the library that reads each:

- ``.npy``: NumPy arrays ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]``: channels-first when the first axis
  is shorter than both others (``[13, 64, 64]``), else channels-last (``[64, 64, 13]``, and a cube
  ``[C, C, C]``); bool, integer or float values, never pickled objects.
- ``.tif`` / ``.tiff``: ``tifffile`` (``pip install 'mimkit[field]'``; with ``imagecodecs`` for compressed
  files) reads any band count and bit depth; without it Pillow reads 1/3/4-band 8/16-bit files.
- ``.dcm`` / ``.dicom``: ``pydicom`` (``mimkit[field]``): the modality LUT (rescale slope / intercept)
  applied, then a window if asked (``[center, width]``, or ``"voi"`` for the file's own window tags),
  MONOCHROME1 inverted. Files without pixel data and multi-frame files are refused (one line, skipped and
  counted in a folder): a multi-frame series is a volume, not one image.
- 16-bit colour PNG: ``imagecodecs`` (Pillow would read it at 8 bits); any other file: Pillow (the
  8-bit fast path in :mod:`mimkit.data.images` handles 8-bit files without coming here).

Written here rather than taken whole from one library: no single well-kept reader covers NumPy, TIFF,
DICOM and PNG with the band-axis and DICOM-window rules above, so each format goes to its own library and
only the glue (axis order, window, refusals) is ours.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

NUMPY_EXTENSIONS = (".npy",)
TIFF_EXTENSIONS = (".tif", ".tiff")
DICOM_EXTENSIONS = (".dcm", ".dicom")
FIELD_HINT = "pip install 'mimkit[field]'"


class ReadError(ValueError):
    """A file that cannot be read as an image; the message is the reason (the caller names the file)."""


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


def to_hwc(arr: np.ndarray, what: str = "array", guess_axis: bool = False) -> np.ndarray:
    """``[H, W]`` -> ``[H, W, 1]``; ``[H, W, C]`` as it is, or, with ``guess_axis`` (arrays that do not say
    their layout), ``[C, H, W]`` -> ``[H, W, C]`` when the first axis is shorter than both others."""
    if arr.ndim == 2:
        return arr[:, :, None]
    if arr.ndim != 3:
        raise ReadError(f"{what} has shape {tuple(arr.shape)}; expected [H, W], [H, W, C] or [C, H, W]")
    if guess_axis and arr.shape[0] < min(arr.shape[1], arr.shape[2]):
        arr = np.moveaxis(arr, 0, 2)
    return arr


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


# ----------------------------------------------------------------------------- DICOM


def dicom_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's linear VOI window (PS3.3 C.11.2.1.2.1) to [0, 1]: below ``c - 0.5 - (w - 1) / 2`` -> 0,
    above ``c - 0.5 + (w - 1) / 2`` -> 1, linear ``((x - (c - 0.5)) / (w - 1) + 0.5)`` between."""
    if width < 1:
        raise ReadError(f"a DICOM window width must be >= 1, got {width!r}")
    if width == 1:
        return (values > center - 0.5).astype(np.float32)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0).astype(np.float32)


def _first(value) -> float:
    """A DICOM value that may be multi-valued (several windows): the first."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _quiet_pydicom() -> None:
    """pydicom reports each odd file itself (log lines with decoder tracebacks, UserWarnings about padding
    or VRs); mimkit counts and reports the files it skips, so on the first DICOM read pydicom's logger is
    set to CRITICAL and its UserWarnings are filtered out (``logging.getLogger("pydicom").setLevel(...)``
    and ``warnings.resetwarnings()`` bring them back)."""
    logger = logging.getLogger("pydicom")
    if not getattr(logger, "_mimkit_quiet", False):
        logger.setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
        logger._mimkit_quiet = True


def read_dicom(path: Path, window: Sequence[float] | str | None = None) -> np.ndarray:
    """One DICOM image as float32 ``[H, W, C]`` (modality values; in [0, 1] when ``window`` is given)
    or uint8 ``[H, W, 3]`` for colour files."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut
    except ImportError:
        raise ReadError(f"a DICOM file; reading it needs pydicom ({FIELD_HINT})") from None
    _quiet_pydicom()
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # noqa: BLE001 - pydicom's InvalidDicomError and friends
        raise ReadError(f"not a readable DICOM file ({str(err).splitlines()[0]})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ReadError("a DICOM file without pixel data (a report or structured data, not an image)")
    try:
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise ReadError(f"a DICOM NumberOfFrames that is not a number: {ds.NumberOfFrames!r}") from None
    if frames > 1:
        raise ReadError(f"a multi-frame DICOM ({frames} frames): a volume, not one image; refused")
    try:
        pixels = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - a compressed transfer syntax without its decoder
        raise ReadError(f"DICOM pixel data not decodable here ({str(err).splitlines()[0]})") from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if int(getattr(ds, "SamplesPerPixel", 1)) > 1:  # colour (RGB; pydicom converts YBR to RGB)
        return to_hwc(np.asarray(pixels), "the DICOM image")
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    if window == "voi":
        if "WindowCenter" not in ds or "WindowWidth" not in ds:
            raise ReadError("data.window='voi' but the file has no WindowCenter / WindowWidth tags")
        window = (_first(ds.WindowCenter), _first(ds.WindowWidth))
    if window is not None:
        values = dicom_window(values, float(window[0]), float(window[1]))
        if photometric == "MONOCHROME1":  # low values are bright
            values = 1.0 - values
    elif photometric == "MONOCHROME1":
        values = -values
    return to_hwc(values, "the DICOM image")


def read_array(path: Path, window: Sequence[float] | str | None = None) -> np.ndarray:
    """Any supported file as ``[H, W, C]`` at its own dtype (see the module docstring)."""
    ext = suffix(path)
    if ext in NUMPY_EXTENSIONS:
        return read_npy(path)
    if ext in TIFF_EXTENSIONS:
        return read_tiff(path)
    if ext in DICOM_EXTENSIONS or (not ext and is_dicom_file(path)):
        return read_dicom(path, window)
    if is_deep_colour_png(path):
        return read_deep_png(path)
    return read_pillow(path)
