"""DICOM as archives hold it: compressed transfer syntaxes, multi-frame objects, windows by name.

``read_dicom(path, window, frame)`` returns one frame as ``[H, W, C]``: grey frames as float32 modality
values (rescale slope / intercept applied; RT dose scaled to its dose units), in [0, 1] when a window is
given; colour frames as RGB at their stored dtype (pydicom converts YBR). ``dicom_frame_count(path)``
reads only the header.

**Compressed pixel data** is decoded by pydicom's plugins (``pip install 'mimkit[dicom]'``, which
``mimkit[field]`` includes). The extra holds python-gdcm (Apache-2.0 in its package metadata; the GDCM
library it bundles is BSD-style): one package that decodes JPEG baseline and 8-bit extended, JPEG
lossless, JPEG-LS lossless and near-lossless and JPEG 2000; Pillow (already a dependency) decodes JPEG
baseline and JPEG 2000 too, and pydicom decodes RLE itself. pylibjpeg's plugins were weighed and left
out: pylibjpeg-openjpeg and -rle (MIT) add nothing on these syntaxes (HTJ2K aside, which only
pylibjpeg-openjpeg decodes), and pylibjpeg-libjpeg, its decoder for JPEG lossless and JPEG-LS, wraps a
GPL-3 library, which an Apache-2.0 package should not pull in. GDCM refuses 12-bit JPEG Extended
(process 4: lossy CT and NM archives), so ``mimkit.data.dicom_codecs`` decodes it through imagecodecs
(BSD-3-Clause, in both extras). A file whose syntax has no decoder installed is refused in one line
naming the extra. (python-gdcm's ``gdcm.py`` runs ``import dl``: a folder named ``dl`` on ``sys.path``,
such as the working directory, breaks pydicom's import; the files are then refused saying so.)

**Multi-frame objects** (RT dose grids, enhanced CT / MR, multi-frame colour) are read frame by frame:
``read_dicom(path, frame=k)``, with the rescale and window of the frame's own functional groups where an
enhanced object puts them (per-frame groups first, then the shared ones, then the top-level tags).
Without ``frame`` a multi-frame file is refused (one line): a folder reads one image per file.

**Windows**: ``[center, width]``, ``"voi"`` (the file's own WindowCenter / WindowWidth; the frame's in an
enhanced object) or a preset name from :data:`WINDOW_PRESETS` (CT, in HU).
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mimkit.data.arrays import ReadError, to_hwc

DICOM_HINT = "pip install 'mimkit[dicom]'"
# CT windows as (center, width) in Hounsfield units: the typical values Radiopaedia's "Windowing (CT)"
# article lists (radiopaedia.org/articles/windowing-ct), the settings radiology teaching commonly
# publishes; soft_tissue is its head-and-neck soft-tissue window (W 350-400, L 20-60) at W 400, L 40.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (50.0, 400.0),
    "liver": (30.0, 150.0),
    "soft_tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_setup_lock = threading.Lock()
_setup_done: list[bool] = []  # once per process: pydicom's logger, warnings and decoder registry


def dicom_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's linear VOI window (PS3.3 C.11.2.1.2.1) to [0, 1]: below ``c - 0.5 - (w - 1) / 2`` -> 0,
    above ``c - 0.5 + (w - 1) / 2`` -> 1, linear ``((x - (c - 0.5)) / (w - 1) + 0.5)`` between."""
    if width < 1:
        raise ReadError(f"a DICOM window width must be >= 1, got {width!r}")
    if width == 1:
        return (values > center - 0.5).astype(np.float32)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0).astype(np.float32)


def _first(value: Any) -> float:
    """A DICOM value that may be multi-valued (several windows): the first."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _setup_pydicom() -> None:
    """Once per process: pydicom's logger set to CRITICAL and its UserWarnings filtered out (it reports each
    odd file itself, with decoder tracebacks; mimkit counts and reports the files it skips:
    ``logging.getLogger("pydicom").setLevel(...)`` and ``warnings.resetwarnings()`` bring them back), and
    the 12-bit JPEG Extended decoder of ``mimkit.data.dicom_codecs`` added to pydicom's registry
    (pydicom's ``add_plugin`` is not thread-safe: a lock, as folders are decoded in threads)."""
    with _setup_lock:
        if _setup_done:
            return
        logging.getLogger("pydicom").setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
        from pydicom.pixels.decoders import JPEGExtended12BitDecoder

        try:
            JPEGExtended12BitDecoder.add_plugin(
                "mimkit-imagecodecs", ("mimkit.data.dicom_codecs", "decode_frame")
            )
        except ValueError:  # added already (this module imported anew)
            pass
        _setup_done.append(True)


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise ReadError(f"needs pydicom to read DICOM ({DICOM_HINT})") from None
    except Exception as err:  # noqa: BLE001 - a plugin that breaks pydicom's import (python-gdcm's `import dl`)
        raise ReadError(f"pydicom failed to import ({type(err).__name__}: {err})") from None
    _setup_pydicom()
    return pydicom


def _open(path: Path, header_only: bool):
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except Exception as err:  # noqa: BLE001 - pydicom's InvalidDicomError and friends
        raise ReadError(f"not a readable DICOM file ({str(err).splitlines()[0]})") from None


def _frames(ds) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise ReadError(f"a bad NumberOfFrames ({ds['NumberOfFrames'].value!r}, not a number)") from None


def dicom_header(path: Path):
    """The pydicom dataset of a DICOM file's header (no pixel data); ReadError when it is not readable."""
    return _open(path, header_only=True)


def dicom_frame_count(path: Path) -> int:
    """How many frames a DICOM file holds (NumberOfFrames, 1 when absent), from its header only
    (``stop_before_pixels``: whether it has pixel data at all, reading a frame says). Raises ReadError
    for a file pydicom cannot read or a NumberOfFrames that is not a number."""
    return _frames(_open(path, header_only=True))


def _group_item(ds, frame: int, sequence: str):
    """The first item of functional-group ``sequence`` for ``frame`` of an enhanced object: the frame's own
    (PerFrameFunctionalGroupsSequence), else the shared one, else None."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        inner = items[index].get(sequence) if items is not None and len(items) > index else None
        if inner:
            return inner[0]
    return None


def _decode(ds, frame: int | None) -> np.ndarray:
    """The stored pixels of ``frame`` (all frames when None), or a one-line ReadError saying why not."""
    from pydicom.pixels import get_decoder, pixel_array

    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None:
        raise ReadError("without a transfer syntax (its file meta has no TransferSyntaxUID)")
    name = syntax.keyword or str(syntax)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ReadError(f"compressed as {name}, which pydicom has no decoder for") from None
    if not decoder.is_available:
        raise ReadError(f"needs a decoder for {name} ({DICOM_HINT})")
    try:
        return pixel_array(ds, index=frame)
    except Exception as err:  # noqa: BLE001 - a corrupt stream, a plugin that refuses the file
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = "; ".join(lines[-2:] if len(lines) > 1 else lines) or type(err).__name__
        raise ReadError(f"pixel data not decodable ({name}: {detail})") from None


def read_dicom(
    path: Path, window: Sequence[float] | str | None = None, frame: int | None = None
) -> np.ndarray:
    """One DICOM frame as float32 ``[H, W, 1]`` (modality values; in [0, 1] with a ``window``) or
    ``[H, W, 3]`` RGB at its stored dtype.

    Args:
        path: the file.
        window: ``[center, width]``, ``"voi"`` (the frame's or file's window tags), a name from
            :data:`WINDOW_PRESETS`, or None (modality values).
        frame: ``k`` in ``0 .. NumberOfFrames - 1``; None reads a single-frame file (a multi-frame one is
            refused).

    Raises:
        ReadError: one line saying why the file cannot be read (no pixel data, a decoder to install, ...).
    """
    ds = _open(path, header_only=False)
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise ReadError(
            "without pixel data (a DICOM report, plan, directory or structured data: not an image)"
        )
    frames = _frames(ds)
    if frame is None and frames > 1:
        raise ReadError(f"multi-frame ({frames} frames: read them one by one with frame=0..{frames - 1})")
    if frame is not None and not (isinstance(frame, (int, np.integer)) and 0 <= frame < frames):
        raise ReadError(f"frame {frame!r} out of range: the file has {frames} frame(s) (0-{frames - 1})")
    pixels = _decode(ds, None if frames == 1 else int(frame))
    k = int(frame or 0)
    if int(ds.get("SamplesPerPixel", 1)) > 1:  # colour (RGB; pydicom converts YBR to RGB)
        return to_hwc(np.asarray(pixels), "the DICOM image")
    values = _modality(pixels, ds, k)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if window is not None:
        center, width = _window(ds, k, window)
        values = dicom_window(values, center, width)
        if photometric == "MONOCHROME1":  # low values are bright
            values = 1.0 - values
    elif photometric == "MONOCHROME1":
        values = -values
    return to_hwc(values, "the DICOM image")


def _modality(pixels: np.ndarray, ds, frame: int) -> np.ndarray:
    """Stored values -> modality values (float32): the frame's PixelValueTransformationSequence in an
    enhanced object, else pydicom's modality LUT (RescaleSlope / Intercept or a ModalityLUTSequence);
    RT dose times its DoseGridScaling."""
    from pydicom.pixels import apply_modality_lut

    item = _group_item(ds, frame, "PixelValueTransformationSequence")
    if item is not None and "RescaleSlope" in item:
        slope, intercept = float(item.RescaleSlope), float(item.get("RescaleIntercept", 0.0))
        values = pixels.astype(np.float64) * slope + intercept
    else:
        values = apply_modality_lut(pixels, ds)
    if "DoseGridScaling" in ds:
        values = np.asarray(values, dtype=np.float64) * float(ds.DoseGridScaling)
    return np.asarray(values, dtype=np.float32)


def _window(ds, frame: int, window: Sequence[float] | str) -> tuple[float, float]:
    """``(center, width)`` of ``window``: explicit, a preset name, or the frame's / file's own tags."""
    if isinstance(window, str) and window != "voi":
        if window not in WINDOW_PRESETS:
            raise ReadError(f"unknown DICOM window {window!r}; presets: {', '.join(WINDOW_PRESETS)}")
        return WINDOW_PRESETS[window]
    if window == "voi":
        tags = _group_item(ds, frame, "FrameVOILUTSequence")
        tags = tags if tags is not None and "WindowCenter" in tags and "WindowWidth" in tags else ds
        if "WindowCenter" not in tags or "WindowWidth" not in tags:
            raise ReadError("data.window='voi' but the file has no WindowCenter / WindowWidth tags")
        return _first(tags.WindowCenter), _first(tags.WindowWidth)
    return float(window[0]), float(window[1])
