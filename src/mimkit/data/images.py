"""Finding image files in folders and decoding them to tensors of one size, band count and storage dtype.

The storage dtype keeps a file's bit depth: ``uint8`` for 8-bit images (the fast path, through Pillow),
``uint16`` for 16-bit ones, ``float32`` for float data (and DICOM modality values). A folder's images are
stored in its first readable image's kind; others are converted keeping the unit scale (8-bit 255 =
16-bit 65535 = float 1.0). The transforms turn every kind into float with the same rule
(:func:`mimkit.data.transforms.to_unit_float`).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from mimkit.data.config import DataConfig
from mimkit.data.items import ItemSpec, read_item, spec_of
from mimkit.data.parts import Item, Part
from mimkit.data.readers import (
    DICOM_EXTENSIONS,
    NUMPY_EXTENSIONS,
    ReadError,
    is_deep_colour_png,
    is_dicom_file,
    needs_array_reader,
    read_array,
    to_hwc,
)
from mimkit.data.volumes import VOLUME_EXTENSIONS, is_volume_file
from mimkit.plain import pair

IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm",
    *NUMPY_EXTENSIONS, *DICOM_EXTENSIONS, *VOLUME_EXTENSIONS,
)  # fmt: skip
STORE_DTYPES = {"uint8": torch.uint8, "uint16": torch.uint16, "float32": torch.float32}
UNIT_MAX = {torch.uint8: 255.0, torch.uint16: 65535.0, torch.float32: 1.0}  # the value that means 1.0
_SKIP_DIRS = {"__MACOSX"}
# Transparent pixels are laid over white, as a browser shows them.
ALPHA_BACKGROUND = 255
_GREY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


class UnreadableImageError(ValueError):
    """A file with an image extension that could not be decoded (corrupt, truncated, not an image)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(str(path), reason)  # both in args: the error pickles across worker processes
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _is_listed(dirpath: str, name: str) -> bool:
    if is_image_file(name):
        return True
    return not name.startswith(".") and "." not in name and is_dicom_file(Path(dirpath) / name)


def list_images(folder: Path, exclude: tuple[str, ...] = ()) -> list[Path]:
    """Every image file under ``folder`` (recursively, following links once), sorted by relative path.

    Image files are known by their extension (:data:`IMAGE_EXTENSIONS`); a file without one is listed when
    it is DICOM. Hidden files and folders (``.name``), ``__MACOSX`` and the top-level sub-folders in
    ``exclude`` are left out.
    """
    found: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link loop
            dirnames[:] = []
            continue
        seen.add(real)
        top = Path(dirpath) == Path(folder)
        dirnames[:] = [
            d
            for d in dirnames
            if not d.startswith(".") and d not in _SKIP_DIRS and not (top and d in exclude)
        ]
        found.extend(Path(dirpath) / f for f in filenames if _is_listed(dirpath, f))
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float grey images scaled to 8-bit ``L`` (PIL's own conversion clips them)."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        top = 1.0 if arr.max(initial=0.0) <= 1.0 else 255.0
    else:
        top = 65535.0 if arr.max(initial=0.0) > 255 else 255.0
    return Image.fromarray(np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8), "L")


def convert_channels(img: Image.Image, channels: int) -> Image.Image:
    """Convert a PIL image of any mode to ``L`` (1), ``RGB`` (3) or ``RGBA`` (4).

    Grey from colour uses ITU-R 601-2 luma (L = 0.299 R + 0.587 G + 0.114 B, PIL's rule); alpha is
    composited over white when it is dropped; an added alpha channel is opaque.
    """
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if channels == 4:
        return img if img.mode == "RGBA" else img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (ALPHA_BACKGROUND,) * 3 + (255,))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def native_channels(img: Image.Image) -> int:
    """1 for grey images (grey palettes included), 3 for everything else (colour, with or without alpha)."""
    if img.mode in _GREY_MODES or img.mode.startswith("I;16"):
        return 1
    if img.mode in ("P", "PA"):
        palette = img.getpalette() or []
        rgb = [palette[i : i + 3] for i in range(0, len(palette) - 2, 3)]
        return 1 if rgb and all(r == g == b for r, g, b in rgb) else 3
    return 3


@dataclass(frozen=True)
class ImageInfo:
    """What the first image of a folder says about the data: size, band count, storage dtype."""

    height: int
    width: int
    channels: int
    dtype: torch.dtype


def store_dtype(arr: np.ndarray) -> torch.dtype:
    """The storage dtype that holds an array's values: uint8, uint16, else float32."""
    if arr.dtype == np.uint8 or arr.dtype == np.bool_:
        return torch.uint8
    if arr.dtype == np.uint16:
        return torch.uint16
    return torch.float32


def image_info(path: Item, window: Sequence[float] | str | None = None) -> ImageInfo:
    """Size, native band count and storage dtype of an image file or a part of one (EXIF rotation applied).

    8-bit Pillow files are read from their header only; other formats and parts are decoded.
    """
    if isinstance(path, Part) or is_volume_file(path):
        arr = read_item(path, window)
        return ImageInfo(arr.shape[0], arr.shape[1], arr.shape[2], store_dtype(arr))
    if not needs_array_reader(path) and not is_deep_colour_png(path):
        with Image.open(path) as img:
            w, h = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
                w, h = h, w
            deep = img.mode in ("I", "F") or img.mode.startswith("I;16")
            if not deep:
                return ImageInfo(h, w, native_channels(img), torch.uint8)
    arr = read_array(path, window)
    return ImageInfo(arr.shape[0], arr.shape[1], arr.shape[2], store_dtype(arr))


def image_size(path: Path) -> tuple[int, int, int]:
    """``(H, W, native channels)`` of an image file, from its header (EXIF rotation applied)."""
    info = image_info(path)
    return info.height, info.width, info.channels


def to_store(arr: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Values of any kind in ``dtype``'s units (8-bit 255 = 16-bit 65535 = float 1.0); float values
    going into an integer store are clipped to [0, 1] first, signed integers to the store's range."""
    target = {torch.uint8: np.uint8, torch.uint16: np.uint16, torch.float32: np.float32}[dtype]
    if arr.dtype == target:
        return arr
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    top = UNIT_MAX[dtype]
    if arr.dtype in (np.uint8, np.uint16):
        unit = arr.astype(np.float64) / (255.0 if arr.dtype == np.uint8 else 65535.0)
    elif dtype == torch.float32:
        return arr.astype(np.float32)  # raw values (signed integers, floats): no unit scale to apply
    elif arr.dtype.kind == "f":
        unit = np.clip(arr.astype(np.float64), 0.0, 1.0)
    else:
        unit = np.clip(arr.astype(np.float64), 0.0, top) / top
    if dtype == torch.float32:
        return unit.astype(np.float32)
    return np.rint(unit * top).astype(target)


_LUMA = np.array([0.299, 0.587, 0.114])


def fit_bands(arr: np.ndarray, channels: int, bands: Sequence[int] | None, dtype: torch.dtype) -> np.ndarray:
    """Select ``bands`` (0-based), then convert to ``channels``: grey <-> RGB <-> RGBA as Pillow does (luma
    ITU-R 601-2, alpha over white, added alpha opaque); any other change of band count is refused."""
    n = arr.shape[2]
    if bands is not None:
        bad = [b for b in bands if not 0 <= b < n]
        if bad:
            raise ReadError(f"band index {bad[0]} out of range (the file has {n} band(s): 0-{n - 1})")
        arr = arr[:, :, list(bands)]
        n = arr.shape[2]
    if n == channels:
        return arr
    if n not in (1, 3, 4) or channels not in (1, 3, 4):
        raise ReadError(
            f"another band count ({n} band(s), the data has {channels}: mixed channel counts in one folder)"
        )
    top = UNIT_MAX[dtype]
    x = arr.astype(np.float64)
    if n == 4:  # alpha over white
        alpha = x[:, :, 3:] / top
        x = x[:, :, :3] * alpha + top * (1 - alpha)
        n = 3
    if channels == 1:
        x = (x @ _LUMA)[:, :, None] if n == 3 else x
    else:
        x = np.repeat(x, 3, axis=2) if n == 1 else x
        if channels == 4:
            x = np.concatenate([x, np.full_like(x[:, :, :1], top)], axis=2)
    return np.rint(x).astype(arr.dtype) if arr.dtype.kind in "iu" else x.astype(arr.dtype)


def resize_array(arr: np.ndarray, size: tuple[int, int], resize_mode: str) -> torch.Tensor:
    """``[H, W, C]`` -> tensor ``[C, *size]`` of the same dtype: bicubic (antialiased when shrinking);
    ``center_crop`` crops the centre to the target's aspect ratio first (whole pixels)."""
    t = torch.from_numpy(np.require(arr, requirements=["C", "W"])).permute(2, 0, 1)  # writable: no warning
    h, w = t.shape[-2:]
    if (h, w) == tuple(size):
        return t.contiguous()
    if resize_mode == "center_crop":
        scale = max(size[1] / w, size[0] / h)
        ch, cw = min(h, round(size[0] / scale)), min(w, round(size[1] / scale))
        top, left = (h - ch) // 2, (w - cw) // 2
        t = t[:, top : top + ch, left : left + cw]
    dtype = t.dtype
    x = t.to(torch.int32 if dtype == torch.uint16 else dtype).float()[None]
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    y = F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False, antialias=shrink)[0]
    if dtype in (torch.uint8, torch.uint16):
        y = y.round_().clamp_(0, UNIT_MAX[dtype]).to(torch.int32).to(dtype)
    return y.to(dtype).contiguous()


@dataclass(frozen=True)
class DecodeOptions:
    """How every file of a dataset is decoded: bands, storage dtype, DICOM window; ``items``: how files
    were cut into samples (volumes, tiles), for whoever reads new files the same way."""

    bands: tuple[int, ...] | None = None
    dtype: torch.dtype = torch.uint8
    window: tuple[float, float] | str | None = None
    items: ItemSpec | None = None


class ImageSet:
    """What a dataset tells the rest of mimkit, shared by ImageDataset and ShardSet (which set ``classes``,
    ``channels``, ``img_size``, ``mean`` / ``std``, ``clip``, ``decode`` and ``skipped_files``)."""

    classes: list[str]
    skipped_files: list[str]
    decode: DecodeOptions

    @property
    def dtype(self) -> torch.dtype:
        """The storage dtype of the images: uint8, uint16 or float32."""
        return self.decode.dtype

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def skipped(self) -> int:
        """How many files could not be decoded (so far, for a dataset decoded on the fly)."""
        return len(self.skipped_files)


def decode_setup(cfg: DataConfig, info: ImageInfo) -> tuple[int, tuple[int, int], DecodeOptions]:
    """``(channels, (H, W), decode options)`` the images are stored with: the config's, else what the first
    image (``info``) says; the bands picked first."""
    native = len(cfg.bands) if cfg.bands else info.channels
    size = pair(cfg.img_size, "data.img_size") if cfg.img_size is not None else (info.height, info.width)
    window = tuple(cfg.window) if isinstance(cfg.window, list) else cfg.window
    return (
        cfg.channels or native,
        size,
        DecodeOptions(tuple(cfg.bands) if cfg.bands else None, info.dtype, window, spec_of(cfg)),
    )


def decode_image(
    path: Item,
    channels: int,
    size: tuple[int, int],
    resize_mode: str = "center_crop",
    options: DecodeOptions | None = None,
) -> torch.Tensor:
    """Decode one file, or a part of one (:class:`~mimkit.data.parts.Part`: a slice, a frame, a chip), to a
    tensor ``[channels, H, W]`` at ``size = (H, W)`` (bicubic resampling), in
    ``options.dtype`` (uint8 by default), after picking ``options.bands``.

    ``resize_mode="center_crop"`` scales the shorter side to fit and crops the centre (keeps the aspect
    ratio); ``"stretch"`` resizes to ``size`` directly. 8-bit files into a uint8 store take Pillow's path.

    Raises:
        UnreadableImageError: the file could not be decoded; the message names it and why.
    """
    options = options or DecodeOptions()
    try:
        if isinstance(path, Part) or is_volume_file(path):
            arr = to_store(read_item(path, options.window), options.dtype)
        elif _takes_pillow(options, channels, path, path):
            return _decode_pillow(path, channels, size, resize_mode)
        else:
            arr = to_store(read_array(path, options.window), options.dtype)
        return resize_array(fit_bands(arr, channels, options.bands, options.dtype), size, resize_mode)
    except Exception as err:  # noqa: BLE001 - any decoder failure means "unreadable", never fatal
        raise _unreadable(path, err) from None


def _takes_pillow(options: DecodeOptions, channels: int, path: Path, source: Path | bytes) -> bool:
    """8-bit files into a uint8 store, no band pick, grey / RGB / RGBA: Pillow's path."""
    fits = options.dtype == torch.uint8 and options.bands is None and channels in (1, 3, 4)
    return fits and not needs_array_reader(path) and not is_deep_colour_png(source)


def _unreadable(path: str | os.PathLike, err: Exception) -> UnreadableImageError:
    return UnreadableImageError(path, str(err).splitlines()[0] if str(err) else type(err).__name__)


def decode_bytes(
    data: bytes,
    name: str,
    channels: int,
    size: tuple[int, int],
    resize_mode: str = "center_crop",
    options: DecodeOptions | None = None,
) -> torch.Tensor:
    """:func:`decode_image` for a file's bytes (a member of a tar shard) named ``name``.

    8-bit Pillow formats and ``.npy`` arrays decode from memory; the others (TIFF, DICOM, 16-bit PNG:
    readers that take a path) go through a temporary file.
    """
    options = options or DecodeOptions()
    fake = Path(name)
    if fake.suffix.lower() == ".npy":  # a chip or slice packed by `mimkit shards make`: [H, W, C]
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
            if arr.dtype.kind not in "biuf":
                raise ValueError(f".npy of dtype {arr.dtype}; expected bool, integer or float values")
            arr = to_hwc(arr, "the .npy array", guess_axis=True)
            arr = to_store(arr, options.dtype)
            return resize_array(fit_bands(arr, channels, options.bands, options.dtype), size, resize_mode)
        except Exception as err:  # noqa: BLE001 - any decoder failure means "unreadable", never fatal
            raise _unreadable(fake, err) from None
    if _takes_pillow(options, channels, fake, data):
        try:
            return _decode_pillow(io.BytesIO(data), channels, size, resize_mode)
        except Exception as err:  # noqa: BLE001 - any decoder failure means "unreadable", never fatal
            raise _unreadable(fake, err) from None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, fake.name)
        path.write_bytes(data)
        try:
            return decode_image(path, channels, size, resize_mode, options)
        except UnreadableImageError as err:
            raise UnreadableImageError(fake, err.reason) from None


def _decode_pillow(
    path: Path | io.BytesIO, channels: int, size: tuple[int, int], resize_mode: str
) -> torch.Tensor:
    """8-bit files to uint8 through Pillow (its bicubic resize with a fractional centre box)."""
    out_h, out_w = size
    with Image.open(path) as img:
        if img.format == "JPEG":  # let the JPEG decoder downscale by 2/4/8 when the image is much larger
            img.draft(img.mode, (max(size), max(size)))  # max: EXIF may rotate it afterwards
        img.load()
        img = ImageOps.exif_transpose(img)
        img = convert_channels(img, channels)
        w, h = img.size
        if (w, h) != (out_w, out_h):
            box = (0.0, 0.0, float(w), float(h))
            if resize_mode == "center_crop":
                scale = max(out_w / w, out_h / h)
                cw, ch = out_w / scale, out_h / scale
                box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
            img = img.resize((out_w, out_h), Image.Resampling.BICUBIC, box=box)
        arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # [C, H, W]
