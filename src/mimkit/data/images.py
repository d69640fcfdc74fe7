"""Finding image files in folders and decoding them to uint8 tensors of one size and channel count."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm",
)  # fmt: skip
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


def list_images(folder: Path, exclude: tuple[str, ...] = ()) -> list[Path]:
    """Every image file under ``folder`` (recursively, following links once), sorted by relative path.

    Hidden files and folders (``.name``), ``__MACOSX`` and the top-level sub-folders in ``exclude`` are
    left out.
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
        found.extend(Path(dirpath) / f for f in filenames if is_image_file(f))
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


def image_size(path: Path) -> tuple[int, int, int]:
    """``(H, W, native channels)`` of an image file, from its header (EXIF rotation applied)."""
    with Image.open(path) as img:
        w, h = img.size
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
            w, h = h, w
        return h, w, native_channels(img)


def decode_image(
    path: Path, channels: int, size: tuple[int, int], resize_mode: str = "center_crop"
) -> torch.Tensor:
    """Decode one file to a uint8 tensor ``[channels, H, W]`` at ``size = (H, W)`` (bicubic resampling).

    ``resize_mode="center_crop"`` scales the shorter side to fit and crops the centre (keeps the aspect
    ratio); ``"stretch"`` resizes to ``size`` directly.

    Raises:
        UnreadableImageError: the file could not be decoded; the message names it and why.
    """
    out_h, out_w = size
    try:
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
    except Exception as err:  # noqa: BLE001 - any decoder failure means "unreadable", never fatal
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UnreadableImageError(path, reason) from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # [C, H, W]
