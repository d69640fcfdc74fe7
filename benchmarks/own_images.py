"""Folders of real images that are not Fashion-MNIST, made offline, for the own-images measurements.

Each kind is a folder of class sub-folders without a train/test split, as a user arrives with it; a class
is one source picture, an image a random crop of it (side 12-45% of the picture's shorter side, a random
place, flipped half the time), resized to ``--size``:

- ``photos``: RGB crops of scikit-image's and scikit-learn's example photographs (astronaut, cat, coffee,
  rocket, motorcycle, retina, immunohistochemistry, Hubble deep field, China palace, flower): 10 classes.
- ``textures``: grey crops of scikit-image's grey pictures (brick, grass, gravel, camera, moon, coins,
  page, text, microaneurysms): 9 classes.
- ``scans16``: 16-bit grey PNGs made from those grey pictures (a random gamma and gain per image, sensor
  noise, values over the 16-bit range as a scanner writes them), 9 classes.
- ``lfw``: scikit-image's 200 LFW crops (100 faces, 100 non-faces; 25x25 grey), 2 classes.

Needs ``scikit-image`` and ``scikit-learn`` (``pip install scikit-image scikit-learn``); nothing is
downloaded: every picture ships inside those packages.

    python benchmarks/own_images.py photos runs/imgs/photos --per-class 100 --size 64
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

RGB_SOURCES = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg",
    "ihc.png", "hubble_deep_field.jpg",
)  # fmt: skip
GREY_SOURCES = (
    "brick.png", "grass.png", "gravel.png", "camera.png", "moon.png", "coins.png", "page.png", "text.png",
    "microaneurysms.png",
)  # fmt: skip
KINDS = ("photos", "textures", "scans16", "lfw")


def _sources(kind: str) -> dict[str, np.ndarray]:
    """The source pictures by class name: the files scikit-image ships in ``skimage/data`` (read with
    Pillow, no fetcher) and, for photos, scikit-learn's two sample photographs."""
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    mode = "RGB" if kind == "photos" else "L"
    names = RGB_SOURCES if kind == "photos" else GREY_SOURCES
    pictures = {Path(n).stem: np.asarray(Image.open(folder / n).convert(mode)) for n in names}
    if kind == "photos":
        from sklearn.datasets import load_sample_images

        pictures.update(zip(("china", "flower"), load_sample_images().images, strict=True))
    return pictures


def _crop(picture: np.ndarray, size: int, rng: np.random.Generator) -> Image.Image:
    h, w = picture.shape[:2]
    side = int(min(h, w) * rng.uniform(0.12, 0.45))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = picture[top : top + side, left : left + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    mode = "RGB" if crop.ndim == 3 else "L"
    return Image.fromarray(np.ascontiguousarray(crop), mode).resize((size, size), Image.BICUBIC)


def _scan16(crop: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A grey crop as a 16-bit scanner would store it: its own gamma and gain, noise, values up to 4095 *
    16 (a 12-bit sensor scaled to 16 bits)."""
    x = np.asarray(crop, np.float64) / 255.0
    x = x ** rng.uniform(0.6, 1.8) * rng.uniform(0.5, 1.0)
    x = x + rng.normal(0.0, 0.01, x.shape)
    values = np.clip(np.round(x * 4095), 0, 4095).astype(np.uint16) * 16
    return Image.fromarray(values)  # uint16 -> a 16-bit grey PNG


def make(kind: str, out: Path, per_class: int, size: int, seed: int) -> int:
    """Write ``per_class`` crops of every source picture into ``out/<class>/``; returns the image count."""
    rng = np.random.default_rng(seed)
    if kind == "lfw":
        from skimage import data

        faces = data.lfw_subset()  # [200, 25, 25] float in [0, 1]: 100 faces then 100 non-faces
        for i, face in enumerate(faces):
            folder = out / ("face" if i < 100 else "not_face")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(face * 255).astype(np.uint8), "L").save(folder / f"{i:03d}.png")
        return len(faces)
    count = 0
    for name, picture in _sources(kind).items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            crop = _crop(picture, size, rng)
            if kind == "scans16":
                crop = _scan16(crop, rng)
            crop.save(folder / f"{name}_{i:04d}.png")
            count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n = make(args.kind, args.out, args.per_class, args.size, args.seed)
    print(f"{args.kind}: {n} images in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
