"""Datasets of images at their own bit depth: IDX files and image folders, in memory or decoded on the fly.

``build_dataset(cfg, split)`` is the entry point. Every dataset gives ``([C, H, W], label)`` items (label
-1 when unlabeled) stored as uint8 (8-bit data: today's memory and speed), uint16 (16-bit data) or float32
(float data, DICOM values), and carries what the rest of mimkit needs to know about it: ``classes``,
``channels``, ``img_size``, the value range clipped to (``clip``), the normalisation ``mean`` / ``std``
(always those of the *training* split) and the files it had to skip.

Corrupt files: a folder small enough to hold in memory (``DataConfig.in_memory``) is decoded once,
when the dataset is built, so every unreadable file is found, counted and reported up front; a larger
folder is decoded on the fly, and a file found unreadable then is dropped from its batch by the loader,
added to ``skipped_files`` and reported. Neither is ever fatal, unless no image at all can be read.

Length: the two sources (IDX files, image folders) and their two modes (in memory, decoded on the fly)
share the dataset class and its bookkeeping of skipped files; decoding is in :mod:`mimkit.data.images`,
statistics in :mod:`mimkit.data.stats`; a labeled folder's held-out part drawn by pretraining is read from
its split file (:mod:`mimkit.data.splits`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mimkit.data.arrays import skipped_by_reason
from mimkit.data.config import DataConfig
from mimkit.data.idx import find_idx_file, load_idx, read_idx
from mimkit.data.images import (
    IMAGE_EXTENSIONS,
    DecodeOptions,
    ImageInfo,
    ImageSet,
    UnreadableImageError,
    decode_image,
    decode_setup,
    image_info,
    is_image_file,
    list_images,
)
from mimkit.data.items import ItemSpec, expand, spec_of
from mimkit.data.parts import Item
from mimkit.data.shards import ShardSet
from mimkit.data.splits import (
    drawn_split,
    folder_layout,
    labeled_view,
    no_test_split,
    split_part,
    without_labeled_test,
)
from mimkit.data.stats import apply_clip, channel_stats, normalization, resolve_clip, sample_indices
from mimkit.plain import pair

logger = logging.getLogger(__name__)

SPLITS = ("train", "test", "pretrain")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
MNIST_CLASSES = [str(i) for i in range(10)]


class ImageDataset(ImageSet, Dataset):
    """Images as ``[C, H, W]`` tensors (uint8, uint16 or float32) with an int label (-1 when unlabeled).

    In memory (``images`` is a tensor ``[N, C, H, W]``: the loader slices whole batches out of it) or
    decoded from ``files`` on the fly (``images`` is None).

    Attributes:
        images: ``[N, C, H, W]``, or None for a dataset decoded on the fly.
        labels: int64 ``[N]``, -1 where unlabeled.
        files: the samples (folders): an image file, or a part of one (:class:`~mimkit.data.parts.Part`:
            a volume's slice, a scene's chip), one per item; None for IDX data.
        classes: class names, index = label; empty when unlabeled.
        channels: C.
        img_size: ``(H, W)``.
        mean, std: per-channel normalisation, in unit scale (uint8 / 255, uint16 / 65535, float as is;
            the training split's).
        decode: how files are decoded (bands, storage dtype, DICOM window).
        clip: per-channel ``(lows, highs)`` in stored units that values are clipped to, or None.
        skipped_files: files that could not be decoded (grows while a lazy dataset is read).
        root: the folder or directory the split was read from.
        split: ``"train"``, ``"test"`` or ``"pretrain"``.
    """

    def __init__(
        self,
        labels: torch.Tensor,
        classes: Sequence[str],
        channels: int,
        img_size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        images: torch.Tensor | None = None,
        files: Sequence[Item] | None = None,
        resize_mode: str = "center_crop",
        skipped_files: Sequence[str] = (),
        root: str = "",
        split: str = "train",
        decode: DecodeOptions | None = None,
        clip: tuple[Sequence[float], Sequence[float]] | None = None,
    ):
        assert images is not None or files is not None, "give the images in memory or their files"
        n = images.shape[0] if images is not None else len(files)
        assert labels.shape == (n,), f"{labels.shape} labels for {n} images"
        self.images = images
        self.files = list(files) if files is not None else None
        self.labels = labels
        self.classes = list(classes)
        self.channels = channels
        self.img_size = img_size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.resize_mode = resize_mode
        self.skipped_files = list(skipped_files)
        self.root = root
        self.split = split
        dtype = images.dtype if images is not None else torch.uint8
        self.decode = decode or DecodeOptions(dtype=dtype)
        self.clip = None if clip is None else (tuple(map(float, clip[0])), tuple(map(float, clip[1])))

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """``([C, H, W], label)``. Raises UnreadableImageError for a corrupt file (lazy datasets)."""
        if self.images is not None:
            return self.images[index], int(self.labels[index])
        image = decode_image(self.files[index], self.channels, self.img_size, self.resize_mode, self.decode)
        return apply_clip(image, self.clip), int(self.labels[index])

    def add_skipped(self, files: Sequence[str]) -> list[str]:
        """Record files found unreadable while loading; returns those not recorded before."""
        new = [f for f in dict.fromkeys(files) if f not in set(self.skipped_files)]
        self.skipped_files.extend(new)
        return new

    def __repr__(self) -> str:
        where = "in memory" if self.in_memory else "decoded on the fly"
        return (
            f"ImageDataset({self.split!r} from {self.root!r}: {len(self)} images {self.channels}x"
            f"{self.img_size[0]}x{self.img_size[1]} {str(self.dtype).removeprefix('torch.')} {where}, "
            f"{self.num_classes} classes, "
            f"{self.skipped} skipped)"
        )


def build_dataset(
    cfg: DataConfig, split: str = "train", train_dataset: ImageDataset | None = None
) -> ImageDataset:
    """The ``split`` ("train" / "test" / "pretrain") of the data ``cfg`` describes.

    A labeled folder without ``test/`` or ``val/`` splits into the two parts its ``cfg.split_file`` lists.
    With ``cfg.labeled_root``, "train" and "test" are that folder's.

    Args:
        cfg: the data config.
        split: ``"train"`` (to fit), ``"test"`` (to score) or ``"pretrain"`` (what pretraining reads: the
            same as "train", except that with ``labeled_root`` it is ``root`` with the labeled folder's
            held-out images left out wherever they are, and ``holdout_in_pretraining`` adds them).
        train_dataset: the training split already built from ``cfg``: its normalisation, classes, channels
            and size are reused (otherwise building the test split reads the training split's statistics).

    Raises:
        FileNotFoundError: the root, or a file the source needs, does not exist.
        ValueError: a bad split, an empty folder, no readable image, classes that do not match.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if cfg.labeled_root and split != "pretrain":
        cfg = labeled_view(cfg)
    if cfg.source == "folder":
        return _build_folder(cfg, split, train_dataset)
    split = "train" if split == "pretrain" else split
    if cfg.source == "shards":
        if split != "train":
            raise ValueError(
                "data.source=shards holds the images for pretraining only; evaluate on a folder "
                "(data.source=folder) or an IDX source"
            )
        return ShardSet(cfg)
    return _build_idx(cfg, split, train_dataset)


# ----------------------------------------------------------------------------- IDX


def _adapt_tensor(
    images: torch.Tensor, channels: int, size: tuple[int, int], chunk: int = 4096
) -> torch.Tensor:
    """Grey uint8 ``[N, 1, h, w]`` -> uint8 ``[N, channels, H, W]`` (bicubic, antialiased when shrinking)."""
    if tuple(images.shape[-2:]) != size:
        shrink = size[0] < images.shape[-2] or size[1] < images.shape[-1]
        out = torch.empty((images.shape[0], 1, *size), dtype=torch.uint8)
        for start in range(0, images.shape[0], chunk):
            x = images[start : start + chunk].float()
            y = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=shrink)
            out[start : start + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
        images = out
    if channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    elif channels == 4:
        images = torch.cat([images.expand(-1, 3, -1, -1), torch.full_like(images, 255)], dim=1)
    return images


def _load_idx_split(cfg: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``[N, C, H, W]`` at the configured size and channels, and int64 labels (the first ``limit``)."""
    images, labels = load_idx(cfg.root, split, require_labels=cfg.source != "idx")
    if cfg.limit is not None:
        images, labels = images[: cfg.limit], labels[: cfg.limit]
    size = pair(cfg.img_size, "data.img_size") if cfg.img_size is not None else tuple(images.shape[-2:])
    images = _adapt_tensor(images, cfg.channels or 1, size)
    return images.contiguous(), labels.clone()


def _idx_classes(cfg: DataConfig) -> list[str]:
    if cfg.source == "fashion_mnist":
        return list(FASHION_MNIST_CLASSES)
    if cfg.source == "mnist":
        return list(MNIST_CLASSES)
    label_file = find_idx_file(cfg.root, "train", "labels")  # plain IDX: classes "0".."max label"
    if label_file is None:
        return []
    return [str(i) for i in range(int(read_idx(label_file).max()) + 1)]


def _build_idx(cfg: DataConfig, split: str, train: ImageDataset | None) -> ImageDataset:
    images, labels = _load_idx_split(cfg, split)
    classes = train.classes if train is not None else _idx_classes(cfg)
    if classes and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(
            f"{cfg.root}: {split} labels range over {int(labels.min())}..{int(labels.max())}, "
            f"expected 0..{len(classes) - 1} for source {cfg.source!r}"
        )
    if not classes:
        labels.fill_(-1)

    def train_stats() -> tuple[tuple[float, ...], tuple[float, ...]]:
        return channel_stats(images if split == "train" else _load_idx_split(cfg, "train")[0])

    if train is not None:
        mean, std = train.mean, train.std
    else:
        mean, std = normalization(cfg, images.shape[1], train_stats)
    root = str(cfg.root)
    logger.info(
        "%s %s split: %d images %s from %s", cfg.source, split, len(labels), tuple(images.shape[1:]), root
    )
    return ImageDataset(
        labels,
        classes,
        images.shape[1],
        tuple(images.shape[-2:]),
        mean,
        std,
        images=images,
        root=root,
        split=split,
    )


# ----------------------------------------------------------------------------- folders


def holdout_folder(cfg: DataConfig) -> tuple[Path, list[Item], list[int], list[str]] | None:
    """The labeled folder a held-out part is drawn in, with its samples, their labels and the class
    names: ``cfg.labeled_root``, else a folder ``cfg.root``. None when there is none to draw: IDX or shards
    without ``labeled_root``, a folder with ``test/`` or ``val/`` of its own, or unlabeled images."""
    if cfg.labeled_root:
        cfg = labeled_view(cfg)
    elif cfg.source != "folder":
        return None
    train_dir, exclude, test_dir = folder_layout(Path(cfg.root).expanduser())
    if test_dir is not None:
        return None
    files, labels, classes = scan_folder(train_dir, cfg.labeled, exclude, spec=spec_of(cfg))
    return (train_dir, files, labels, classes) if classes else None


_DEPTHS = {torch.uint8: "8-bit", torch.uint16: "16-bit", torch.float32: "float"}


def check_labeled_kind(
    cfg: DataConfig, channels: int, dtype: torch.dtype, size: tuple[int, int] | None = None
) -> None:
    """A one-line ValueError when ``cfg.labeled_root`` holds images of another kind than the pretraining
    images (``channels`` bands stored as ``dtype``, ``size = (H, W)``): another bit depth, or, while
    ``cfg.channels`` is native, another band count. (Grey, RGB and RGBA would convert into each other:
    setting ``data.channels`` asks for it, so it is never silent.) Another native size is said in a line:
    the labeled images are resized to the run's."""
    if not cfg.labeled_root:
        return
    view = labeled_view(cfg)
    folder, exclude, _ = folder_layout(Path(view.root).expanduser())
    files = list_images(folder, exclude)
    if not files:
        raise _no_images(folder)
    files = expand(files, [-1] * len(files), spec_of(view), str(folder))[0]
    window = tuple(cfg.window) if isinstance(cfg.window, list) else cfg.window
    info = _first_image_info(files, folder, window)
    theirs, _, options = decode_setup(view, info)
    example = files[0].relative_to(folder)
    if options.dtype != dtype:
        raise ValueError(
            f"the labeled folder {folder} holds {_DEPTHS[options.dtype]} images ({example}, ...), the "
            f"pretraining images are {_DEPTHS[dtype]}: give labeled images of the same bit depth"
        )
    if size is not None and cfg.img_size is None and (info.height, info.width) != tuple(size):
        logger.info("the labeled images (%s: %dx%d) are resized to the run's %dx%d (%s)",
                    example, info.height, info.width, *size, cfg.resize_mode)  # fmt: skip
    if cfg.channels is None and theirs != channels:
        fix = (
            f"set data.channels={channels} to convert them (grey, RGB and RGBA convert into each other)"
            if {theirs, channels} <= {1, 3, 4}
            else "give labeled images with the same bands (data.bands picks bands from each file)"
        )
        raise ValueError(
            f"the labeled folder {folder} holds {theirs}-channel images ({example}, ...), the pretraining "
            f"images have {channels}: {fix}"
        )


def _no_images(folder: Path) -> ValueError:
    return ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}")


def scan_folder(
    folder: Path,
    labeled: str | bool,
    exclude: tuple[str, ...] = (),
    classes: list[str] | None = None,
    spec: ItemSpec | None = None,
) -> tuple[list[Item], list[int], list[str]]:
    """The samples of one split (files, or the parts ``spec`` cuts them into: :func:`~mimkit.data.items.
    expand`), their labels (-1 if unlabeled) and the class names.

    ``classes`` given (test split): the sub-folders must be among them and keep their indices.
    """
    children = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    direct = [p for p in children if p.is_file() and is_image_file(p.name)]
    subdirs = [p for p in children if p.is_dir() and p.name not in exclude and p.name != "__MACOSX"]
    if classes is not None:
        labeled = bool(classes)
    elif labeled == "auto":
        labeled = not direct and bool(subdirs)
    if not labeled:
        files = list_images(folder, exclude)
        if not files:
            raise _no_images(folder)
        return *expand(files, [-1] * len(files), spec, str(folder)), []
    if direct:
        raise ValueError(
            f"labeled data expects one sub-folder per class in {folder}, but it holds images directly "
            f"({direct[0].name}, ...); set data.labeled=false to use every image without labels"
        )
    per_class = {d.name: list_images(d) for d in subdirs}
    per_class = {name: found for name, found in per_class.items() if found}
    if not per_class:
        raise _no_images(folder)
    if classes is None:
        classes = sorted(per_class)
    unknown = sorted(set(per_class) - set(classes))
    if unknown:
        raise ValueError(
            f"{folder} has class folders {unknown} that the training split does not have "
            f"(training classes: {classes})"
        )
    files, labels = [], []
    for name, found in sorted(per_class.items()):
        files += found
        labels += [classes.index(name)] * len(found)
    return *expand(files, labels, spec, str(folder)), classes


def _first_image_info(files: Sequence[Path], folder: Path, window) -> ImageInfo:
    """Size, band count and storage dtype of the first file that can be read."""
    for path in files[:100]:
        try:
            return image_info(path, window)
        except Exception:  # noqa: BLE001 - unreadable: try the next one
            continue
    raise ValueError(f"none of the first {min(len(files), 100)} image files under {folder} can be read")


def _decode_many(
    files: Sequence[Path],
    channels: int,
    size: tuple[int, int],
    resize_mode: str,
    options: DecodeOptions | None = None,
) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """Decode ``files`` (threads: the decoders release the GIL) -> ([M, C, H, W], kept indices, failures)."""
    options = options or DecodeOptions()
    out = torch.empty((len(files), channels, *size), dtype=options.dtype)
    kept: list[int] = []
    failed: list[tuple[str, str]] = []

    def decode(path: Path) -> torch.Tensor | str:
        try:
            return decode_image(path, channels, size, resize_mode, options)
        except UnreadableImageError as err:
            return str(err)

    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, result in enumerate(pool.map(decode, files, chunksize=16)):
            if isinstance(result, str):
                failed.append((str(files[i]), result))
            else:
                out[len(kept)] = result
                kept.append(i)
    images = out[: len(kept)].clone() if failed else out
    return images, kept, failed


def warn_skipped(failures: Sequence[tuple[str, str]], where: str, total: int | None = None) -> None:
    """One warning line: how many files were skipped, counted by reason (:func:`skipped_by_reason`)."""
    if not failures:
        return
    count = f"{len(failures)} of {total}" if total is not None else f"{len(failures)}"
    logger.warning(
        "skipped %s unreadable image file(s) under %s: %s", count, where, skipped_by_reason(failures, where)
    )


def _stats_sample(
    files: Sequence[Path],
    channels: int,
    size: tuple[int, int],
    resize_mode: str,
    options: DecodeOptions,
    decoded: dict[Path, torch.Tensor],
) -> torch.Tensor:
    """Up to ``STATS_SAMPLE`` training images ``[M, C, H, W]``; ``decoded`` holds files already in memory."""
    sample = [files[i] for i in sample_indices(len(files))]
    missing = [p for p in sample if p not in decoded]
    if missing:
        images, kept, _ = _decode_many(missing, channels, size, resize_mode, options)
        decoded = {**decoded, **{missing[k]: images[j] for j, k in enumerate(kept)}}
    rows = [decoded[p] for p in sample if p in decoded]
    if not rows:
        raise ValueError(
            f"no readable image among the {len(sample)} sampled for the normalisation statistics"
        )
    return torch.stack(rows)


def _build_folder(cfg: DataConfig, split: str, train: ImageDataset | None) -> ImageDataset:
    root = Path(cfg.root).expanduser()
    train_dir, exclude, test_dir = folder_layout(root)
    drawn = drawn_split(cfg, split, test_dir)
    if split == "test" and test_dir is None and drawn is None:
        raise no_test_split(root)
    train_files: list[Path] = []
    train_labels: list[int] = []
    found: list[Path] | None = None
    if train is not None:
        classes, channels, size, options = train.classes, train.channels, train.img_size, train.decode
    else:
        found, train_labels, classes = scan_folder(train_dir, cfg.labeled, exclude, spec=spec_of(cfg))
        train_files = found
        if drawn is not None:  # the statistics are the training part's; "test" reports its own part
            own = split if split != "test" else "train"
            train_files, train_labels = split_part(cfg, drawn, train_dir, own, found, report=own == split)
            classes = list(drawn.classes)
        if split == "pretrain":
            train_files, train_labels = without_labeled_test(cfg, train_dir, train_files, train_labels)
        if cfg.limit is not None:
            train_files, train_labels = train_files[: cfg.limit], train_labels[: cfg.limit]
        window = tuple(cfg.window) if isinstance(cfg.window, list) else cfg.window
        try:
            info = _first_image_info(train_files, train_dir, window)
        except ValueError:
            if cfg.channels is None or cfg.img_size is None:
                raise
            info = ImageInfo(0, 0, cfg.channels, torch.uint8)  # decoding them all reports what failed
        channels, size, options = decode_setup(cfg, info)
        logger.info(
            "%s: images stored as %d channel(s) of %s at %dx%d",
            train_dir, channels, str(info.dtype).removeprefix("torch."), *size,
        )  # fmt: skip
    folder = train_dir if split != "test" or drawn is not None else test_dir
    if split != "test" and train is None:
        files, labels = train_files, train_labels
    elif drawn is not None:
        found = found or scan_folder(train_dir, cfg.labeled, exclude, spec=spec_of(cfg))[0]
        files, labels = split_part(cfg, drawn, train_dir, split, found)
    else:
        leave_out = exclude if split != "test" else ()
        files, labels, _ = scan_folder(folder, cfg.labeled, leave_out, classes, spec_of(cfg))
    if cfg.limit is not None:
        files, labels = files[: cfg.limit], labels[: cfg.limit]

    nbytes = len(files) * channels * size[0] * size[1] * options.dtype.itemsize
    in_memory = cfg.in_memory if isinstance(cfg.in_memory, bool) else nbytes <= cfg.memory_limit_mb * 2**20
    images, skipped, decoded = None, [], {}
    if in_memory:
        images, kept, failures = _decode_many(files, channels, size, cfg.resize_mode, options)
        warn_skipped(failures, str(folder), len(files))
        if not kept:
            raise ValueError(
                f"none of the {len(files)} image files under {folder} could be read ({failures[0][1]})"
            )
        skipped = [path for path, _ in failures]
        files, labels = [files[i] for i in kept], [labels[i] for i in kept]
        if split != "test":
            decoded = dict(zip(files, images, strict=True))

    if train is not None:
        mean, std, clip = train.mean, train.std, train.clip
    else:
        sampled: list[torch.Tensor] = []

        def sample() -> torch.Tensor:  # decoded once, for the clip and the statistics
            if not sampled:
                sampled.append(_stats_sample(train_files, channels, size, cfg.resize_mode, options, decoded))
            return sampled[0]

        clip = resolve_clip(cfg, channels, sample)
        mean, std = normalization(cfg, channels, lambda: channel_stats(apply_clip(sample(), clip)))
    if images is not None:
        images = apply_clip(images, clip)
    part = f" ({'held-out' if split == 'test' else 'training'} part of {cfg.split_file})" if drawn else ""
    logger.info(
        "folder %s split: %d images from %s%s, %s, %d classes",
        split, len(files), folder, part, "in memory" if in_memory else "decoded on the fly", len(classes),
    )  # fmt: skip
    return ImageDataset(
        torch.tensor(labels, dtype=torch.int64),
        classes,
        channels,
        size,
        mean,
        std,
        images=images,
        files=files,
        resize_mode=cfg.resize_mode,
        skipped_files=skipped,
        root=str(folder),
        split=split,
        decode=options,
        clip=clip,
    )
