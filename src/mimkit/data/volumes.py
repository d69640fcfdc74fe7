"""NIfTI volumes (``.nii``, ``.nii.gz``, through nibabel) read as 2-D slices.

Axes: the voxel grid is put in RAS+ order first (the closest canonical orientation of the file's affine,
by axis permutations and flips only, no resampling), so ``x`` runs to the subject's right, ``y`` to
anterior, ``z`` to superior: ``z`` slices are axial, ``y`` coronal, ``x`` sagittal, whatever order the
scanner wrote. A slice's rows run down the later of its two axes (top = superior, or anterior for axial
slices), its columns along the earlier one.

Values: the file's scaling (``scl_slope``, ``scl_inter``) applied (nibabel's rule: float when scaled,
the stored integer type otherwise). Intensity is set per **volume**, never per slice: a window
(``data.window = [center, width]``, DICOM's linear rule; ``"voi"``: the header's ``cal_min`` /
``cal_max``) or percentiles of the whole volume (``data.volume.percentiles``) give per-band levels that
map linearly to [0, 1]; NaN voxels read as the low level (0 without levels).

Dimensions: 3-D volumes; a 4-D volume's 4th axis (time points, or modalities as in the Medical
Segmentation Decathlon) becomes the slices' bands, so ``data.bands: [0]`` keeps the first volume; 2-D
images are one slice; 5-D and more are refused (one line).

A ``.nii.gz`` is decompressed whole on each read (gzip does not seek); the two last volumes read stay
in memory per process, so the slices of one volume read in a row cost one decompression. An
uncompressed ``.nii`` is memory-mapped: a slice reads only its own voxels.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mimkit.data.readers import FIELD_HINT, ReadError

VOLUME_EXTENSIONS = (".nii", ".nii.gz")


def is_volume_file(path: Path | str) -> bool:
    return str(path).lower().endswith(VOLUME_EXTENSIONS)


def _nibabel():
    try:
        import nibabel
    except ImportError:
        raise ReadError(f"a NIfTI volume; reading it needs nibabel ({FIELD_HINT})") from None
    return nibabel


def _open(path: Path):
    """The nibabel image of a NIfTI-1 / NIfTI-2 file (other formats, e.g. CIFTI, refused)."""
    nib = _nibabel()
    try:
        img = nib.load(path)
    except Exception as err:  # noqa: BLE001 - nibabel's ImageFileError, gzip and header errors
        raise ReadError(f"not a readable NIfTI file ({str(err).splitlines()[0]})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ReadError(f"a {type(img).__name__}, not a NIfTI volume of voxels")
    return img


def _orientation(img) -> np.ndarray:
    """``[3, 2]``: per voxel axis, its RAS axis and direction (+1 / -1); the identity when the affine says
    nothing usable."""
    ornt = _nibabel().io_orientation(img.affine)
    if ornt.shape != (3, 2) or np.isnan(ornt).any():
        return np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    return ornt


def _spatial_shape(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """``(X, Y, Z, bands)`` of a stored shape: 2-D gets Z = 1, 4-D's 4th axis is the bands; singleton
    axes after the 4th are dropped."""
    shape = list(shape)
    while len(shape) > 4 and shape[-1] == 1:
        shape.pop()
    if len(shape) > 4:
        raise ReadError(f"a {len(shape)}-D NIfTI (shape {tuple(shape)}): 3-D volumes, and 4-D with the 4th "
                        "axis read as bands, only")  # fmt: skip
    shape += [1] * (4 - len(shape))
    return shape[0], shape[1], shape[2], shape[3]


def volume_shape(path: Path) -> tuple[int, int, int, int]:
    """``(X, Y, Z, bands)`` in RAS+ order, from the header only."""
    img = _open(path)
    stored = _spatial_shape(img.shape)
    order = _orientation(img)[:, 0].astype(int)
    canonical = [0, 0, 0]
    for voxel_axis, ras_axis in enumerate(order):
        canonical[ras_axis] = stored[voxel_axis]
    return canonical[0], canonical[1], canonical[2], stored[3]


@functools.lru_cache(maxsize=2)
def _volume(path: str, _stamp: tuple[int, int]) -> np.ndarray:
    """The whole volume ``[X, Y, Z, B]`` in RAS+ order (a memory map for an unscaled ``.nii``), read-only.
    ``_stamp`` (size, mtime) makes a changed file a new cache entry."""
    img = _open(Path(path))
    try:
        data = np.asanyarray(img.dataobj)  # scaled by nibabel when the header says so
    except Exception as err:  # noqa: BLE001 - a truncated file, a gzip error
        raise ReadError(f"NIfTI voxel data not readable ({str(err).splitlines()[0]})") from None
    data = data.reshape(_spatial_shape(data.shape))
    ornt = _orientation(img)
    for voxel_axis in range(3):
        if ornt[voxel_axis, 1] < 0:
            data = np.flip(data, axis=voxel_axis)
    order = [int(np.flatnonzero(ornt[:, 0] == a)[0]) for a in range(3)]
    data = np.transpose(data, (*order, 3))
    if data.dtype.kind == "f" and data.dtype != np.float32:
        data = data.astype(np.float32)
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    data.flags.writeable = False
    return data


def read_volume(path: Path) -> np.ndarray:
    """The whole volume ``[X, Y, Z, B]`` in RAS+ order (cached: see the module docstring)."""
    stat = os.stat(path)
    return _volume(str(path), (stat.st_size, stat.st_mtime_ns))


def slice_plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice ``index`` along ``axis`` of a ``[X, Y, Z, B]`` volume as an image ``[H, W, B]`` (rows down the
    later remaining axis, reversed: superior / anterior at the top; columns along the earlier one)."""
    plane = np.take(volume, index, axis=axis)  # [A1, A2, B], A1 before A2
    return np.ascontiguousarray(np.transpose(plane, (1, 0, 2))[::-1])


def read_slice(
    path: Path, axis: int, index: int, levels: tuple[Sequence[float], Sequence[float]] | None = None
) -> np.ndarray:
    """Slice ``index`` along ``axis`` (0, 1, 2 = x, y, z) as ``[H, W, B]``: raw values, or float32 in [0, 1]
    through ``levels`` (per band lows, highs)."""
    volume = read_volume(path)
    if not 0 <= index < volume.shape[axis]:
        raise ReadError(f"slice {index} out of range: the volume has {volume.shape[axis]} along axis {axis}")
    return apply_levels(slice_plane(volume, axis, index), levels)


def apply_levels(arr: np.ndarray, levels: tuple[Sequence[float], Sequence[float]] | None) -> np.ndarray:
    """``[H, W, B]`` raw values -> float32 ``(x - low) / (high - low)`` clipped to [0, 1] per band (a step
    at ``low`` when high == low); NaN -> the low level. None: the values as they are, NaN -> 0."""
    if levels is None:
        return np.nan_to_num(arr, nan=0.0) if arr.dtype.kind == "f" else arr
    low = np.asarray(levels[0], dtype=np.float64)
    high = np.asarray(levels[1], dtype=np.float64)
    x = arr.astype(np.float64)
    width = high - low
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(width > 0, (x - low) / np.where(width > 0, width, 1.0), (x > low).astype(np.float64))
    return np.nan_to_num(np.clip(out, 0.0, 1.0), nan=0.0).astype(np.float32)


def volume_levels(
    path: Path,
    volume: np.ndarray,
    window: Sequence[float] | str | None,
    percentiles: tuple[float, float] | None,
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Per-band ``(lows, highs)`` for a whole ``[X, Y, Z, B]`` volume: ``window`` ``[center, width]``
    (DICOM's linear rule: ``c - 0.5 -/+ (w - 1) / 2``) or ``"voi"`` (the header's ``cal_min`` /
    ``cal_max``), else ``percentiles`` of each band's finite voxels; None when neither is given."""
    bands = volume.shape[3]
    if window == "voi":
        header = _open(path).header
        low, high = float(header["cal_min"]), float(header["cal_max"])
        if not high > low:
            raise ReadError("data.window='voi' but the volume's cal_min / cal_max do not set a range")
        return (low,) * bands, (high,) * bands
    if window is not None:
        center, width = float(window[0]), float(window[1])
        low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
        return (low,) * bands, (high,) * bands
    if percentiles is None:
        return None
    lows, highs = [], []
    for b in range(bands):
        values = np.asarray(volume[..., b], dtype=np.float32)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ReadError("a volume without a finite value")
        lo, hi = np.percentile(values, percentiles)
        lows.append(float(lo))
        highs.append(float(hi))
    return tuple(lows), tuple(highs)


def background(volume: np.ndarray, levels: tuple[Sequence[float], Sequence[float]] | None) -> np.ndarray:
    """Per band, the value at or below which a voxel is background: the low level, else the volume's
    minimum (finite voxels)."""
    if levels is not None:
        return np.asarray(levels[0], dtype=np.float64)
    flat = volume.reshape(-1, volume.shape[3])
    if flat.dtype.kind == "f":
        return np.nanmin(np.where(np.isfinite(flat), flat, np.nan), axis=0).astype(np.float64)
    return flat.min(axis=0).astype(np.float64)


def nonempty_slices(volume: np.ndarray, axis: int, floor: np.ndarray) -> np.ndarray:
    """bool ``[n]``: per slice along ``axis``, whether some voxel of some band is above its band's
    ``floor`` (the background; NaN voxels count as background)."""
    others = tuple(a for a in range(3) if a != axis)
    above = np.zeros(volume.shape[axis], dtype=bool)
    for b in range(volume.shape[3]):
        band = volume[..., b]
        if band.dtype.kind == "f":
            band = np.where(np.isfinite(band), band, -np.inf)
        above |= band.max(axis=others) > floor[b]
    return above
