"""The data section of a run's config, validated when it is made."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from mimkit.data.dicom import WINDOW_PRESETS
from mimkit.data.parts import tile_spec, volume_spec
from mimkit.plain import pair

SOURCES = ("fashion_mnist", "mnist", "idx", "folder", "shards")
NORMALIZE_NAMES = ("dataset", "imagenet", "none")
AUGMENT_PRESETS = ("mae", "simmim", "none")
RESIZE_MODES = ("center_crop", "stretch")
GROUPINGS = ("patient", "study", "series", "file")  # or a CSV file (data.group_by; mimkit.data.groups)
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


size_pair = pair  # the name src/mimkit/eval imports it by, until it imports mimkit.plain.pair


def check_range_pair(value: Any, name: str, low: float, high: float) -> tuple[float, float]:
    """A pair ``(a, b)`` with ``low < a <= b <= high``, else a ValueError naming ``name`` and the value."""
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(_is_number(v) for v in value)
        or not low < value[0] <= value[1] <= high
    ):
        raise ValueError(f"{name} must be a pair [a, b] with {low} < a <= b <= {high}, got {value!r}")
    return float(value[0]), float(value[1])


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared.

    Attributes:
        source: ``"fashion_mnist"`` / ``"mnist"`` (IDX files with those class names), ``"idx"`` (any IDX
            files: ``train-images-idx3-ubyte[.gz]``, ``t10k-...``; labels optional) or ``"folder"``
            (image files: class sub-folders, or flat / nested without labels) or ``"shards"`` (tar shards
            made by ``mimkit shards make``, streamed: :mod:`mimkit.data.shards`; pretraining only).
        root: directory holding the IDX files or the images. Folders: the train split is ``root/train``
            if it exists, else ``root``; the test split is ``root/test`` or ``root/val``, else (a labeled
            folder without them) the held-out part that ``split_file`` records.
        img_size: ``H = W`` or ``[H, W]`` the images are stored at. ``None``: 28x28 for IDX, the size of
            the first image for folders.
        channels: the band count images are stored with: any positive int, or ``None`` / ``"native"``
            (1 for IDX; for folders the first image's own: 1 for grey, 3 for colour, N for an N-band TIFF
            or array). Grey, RGB and RGBA convert into each other; other counts must match the files.
        bands: 0-based band indices picked from each file before anything else (``[3, 2, 1]``: an RGB
            composite of a multispectral tile); ``channels`` defaults to their number.
        window: DICOM and NIfTI: ``[center, width]`` (width >= 1) maps the modality values to [0, 1] with
            DICOM's linear window; a CT preset by name, ``(center, width)`` in HU (Radiopaedia's typical
            values, :data:`mimkit.data.dicom.WINDOW_PRESETS`): ``brain`` (40, 80), ``lung`` (-600, 1500),
            ``mediastinum`` (50, 350), ``abdomen`` (50, 400), ``liver`` (30, 150), ``soft_tissue``
            (40, 400), ``bone`` (400, 1800); ``"voi"`` takes each file's own WindowCenter / WindowWidth (an
            enhanced multi-frame object's per frame; a volume's cal_min / cal_max); ``None`` keeps the
            modality values (rescale slope / intercept applied).
        clip: values outside a range are clipped before the normalisation: ``[low, high]`` percentiles
            (e.g. ``[0.5, 99.5]``, per channel, from the sampled training images) or ``[[lows], [highs]]``
            per channel in stored units (what a run records in its ``data_stats``).
        labeled: folders only: ``"auto"`` (class sub-folders and no image directly in the split folder ->
            labeled; otherwise unlabeled, every image found recursively), ``True`` or ``False``.
        normalize: ``"dataset"`` (per-channel mean / std of the training images: all of them for IDX,
            up to 2000 sampled for folders), ``"imagenet"`` (3 channels), ``"none"`` (mean 0, std 1) or
            ``[[means], [stds]]`` in [0, 1] pixel units (one value, or one per channel).
        augment: pretraining augmentation preset: ``"mae"`` (RandomResizedCrop scale 0.2-1, bicubic,
            + horizontal flip), ``"simmim"`` (scale 0.67-1, ratio 3/4-4/3, + flip) or ``"none"``.
        crop_scale: ``[a, b]`` overriding the preset's crop area range (fractions of the image).
        crop_ratio: ``[a, b]`` overriding the preset's aspect-ratio range (default 3/4-4/3).
        hflip: random horizontal flips (p = 0.5) in the ``mae`` / ``simmim`` presets.
        limit: use only the first ``limit`` images of each split (sorted file order for folders).
        num_workers: loader worker processes for folders decoded on the fly and shards (in-memory data
            needs none).
        shuffle_buffer: shards only: images each loader worker holds to shuffle the stream.
        in_memory: folders only: decode every image once into one uint8 tensor (fast batches, corrupt
            files found up front). ``"auto"``: when the decoded split fits in ``memory_limit_mb``.
        memory_limit_mb: the size under which ``in_memory="auto"`` decodes a folder up front.
        resize_mode: folders only: how an image of another shape reaches ``img_size``: ``"center_crop"``
            (scale the shorter side, crop the centre: keeps the aspect ratio) or ``"stretch"``.
        holdout: the held-out part ``mimkit pretrain`` draws in a labeled folder without ``test/`` or
            ``val/``: a fraction in (0, 1) of each class (default 0.2) or a count of images per class (an
            int >= 1); ``None``: draw none (:mod:`mimkit.data.splits`).
        split_file: the JSON file that records the drawn parts (the run's ``split.json``); an existing
            one is read, never redrawn. Pretraining sets it; ``None`` before.
        labeled_root: a folder with one sub-folder per class that the evaluation uses instead of
            ``root`` (its train split to fit, its test split or held-out part to score), while
            pretraining reads ``root``: many unlabeled images and a small labeled set.
        holdout_in_pretraining: pretraining also reads the held-out images (without their labels); by
            default it leaves them out, so the scores are on images the encoder never saw.
        group_by: the unit of the held-out part (:mod:`mimkit.data.groups`): ``None`` (unset: each
            image, but the slices, frames or chips of one file by file), ``"none"`` (each sample, even
            parts of one file), ``"patient"``, ``"study"`` or ``"series"`` (the DICOM tags PatientID,
            StudyInstanceUID, SeriesInstanceUID of each file), ``"file"`` (a sample's source file: the
            slices of a volume, the chips of a scene) or the path of a ``.csv`` file with the columns
            ``file`` (relative to ``root``, or ``labeled_root`` when set) and ``group``. ``holdout`` then
            counts groups per class, every group lies on one side, and an explicit split (``test/`` or
            ``val/``, a ``split_file``) that puts a group on both sides is refused.
        volume: folders: how NIfTI volumes (``.nii``, ``.nii.gz``) become 2-D slices, a mapping (every key
            optional): ``axis`` (``x``, ``y`` or ``z``, RAS+ axes, default ``z``: axial), ``stride``
            (every ``stride``-th slice from the first, default 1; a volume with fewer slices is left
            out), ``skip_empty`` (leave out slices with no voxel above the background: the low level, or
            the volume's minimum; default true), ``percentiles`` (``[low, high]``: each volume's own
            percentiles, over the whole volume per band, map linearly to [0, 1]; default null: raw
            values). ``window`` (``[center, width]``, or ``"voi"``: the header's cal_min / cal_max) sets
            the levels for every volume instead. A 4-D volume's 4th axis is read as bands. Each slice's
            id is ``file#z=41`` (:mod:`mimkit.data.parts`). ``series: true`` reads the single-frame DICOM
            files of each series (SeriesInstanceUID) as one volume in its acquisition plane: its slices
            in order along the series' normal, with the same ``stride``, ``skip_empty`` and
            ``percentiles`` (over the whole series); each slice's id is ``file#slice=11``, and the
            held-out part is drawn by series unless ``group_by`` says otherwise
            (:mod:`mimkit.data.series`; default false: each file is an image of its own).
        tile: folders: cut every image (and every slice) into chips: ``64`` (64x64 chips, stride 64),
            ``[64, 32]`` (size 64, stride 32) or a mapping: ``size`` (int or ``[H, W]``), ``stride``
            (default the size), ``nodata`` (the value of missing pixels; default the GeoTIFF's own
            ``GDAL_NODATA``, else 0), ``skip_nodata`` (leave out chips that are nodata everywhere, default
            true). ``floor((H - size) / stride) + 1`` chips per axis, from the top-left corner; tiled TIFFs
            and ``.npy`` arrays are read a chip at a time; ``img_size`` defaults to the chip size. Each
            chip's id is ``file#tile=top,left``; an image smaller than a chip is left out (one line).
    """

    source: str = "fashion_mnist"
    root: str = FASHION_MNIST_ROOT
    img_size: int | list[int] | None = None
    channels: int | str | None = None
    bands: list[int] | None = None
    window: list[float] | str | None = None
    clip: list | None = None
    labeled: str | bool = "auto"
    normalize: str | list = "dataset"
    augment: str = "mae"
    crop_scale: list[float] | None = None
    crop_ratio: list[float] | None = None
    hflip: bool = True
    limit: int | None = None
    num_workers: int = 0
    shuffle_buffer: int = 1000
    in_memory: str | bool = "auto"
    memory_limit_mb: int = 2048
    resize_mode: str = "center_crop"
    holdout: float | int | None = 0.2
    split_file: str | None = None
    labeled_root: str | None = None
    holdout_in_pretraining: bool = False
    group_by: str | None = None
    volume: dict | None = None
    tile: int | list | dict | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"data.source must be one of {', '.join(SOURCES)}; got {self.source!r}")
        if isinstance(self.root, os.PathLike):
            self.root = os.fspath(self.root)
        if not isinstance(self.root, str) or not self.root:
            raise ValueError(f"data.root must be a directory path, got {self.root!r}")
        if self.source == "mnist" and os.path.normpath(self.root) == FASHION_MNIST_ROOT:
            raise ValueError(
                f"data.source='mnist' needs data.root set to a directory with the MNIST IDX files; "
                f"the default root {FASHION_MNIST_ROOT!r} holds Fashion-MNIST (use source='fashion_mnist')"
            )
        if self.img_size is not None:
            pair(self.img_size, "data.img_size")
        if self.channels == "native":
            self.channels = None
        if self.channels is not None and (not _is_int(self.channels) or self.channels < 1):
            raise ValueError(f"data.channels must be a positive int or 'native', got {self.channels!r}")
        self._check_bands_window_clip()
        if not (self.labeled == "auto" or isinstance(self.labeled, bool)):
            raise ValueError(f"data.labeled must be 'auto', true or false, got {self.labeled!r}")
        self._check_normalize()
        if not _is_int(self.shuffle_buffer) or self.shuffle_buffer < 1:
            raise ValueError(f"data.shuffle_buffer must be a positive int, got {self.shuffle_buffer!r}")
        if self.augment not in AUGMENT_PRESETS:
            raise ValueError(
                f"data.augment must be one of {', '.join(AUGMENT_PRESETS)}; got {self.augment!r}"
            )
        if self.crop_scale is not None:
            check_range_pair(self.crop_scale, "data.crop_scale", 0.0, 1.0)
        if self.crop_ratio is not None:
            check_range_pair(self.crop_ratio, "data.crop_ratio", 0.0, float("inf"))
        if (self.crop_scale is not None or self.crop_ratio is not None) and self.augment == "none":
            raise ValueError(
                "data.crop_scale / data.crop_ratio need a cropping preset, data.augment='mae' or 'simmim'; "
                "got augment='none'"
            )
        if not isinstance(self.hflip, bool):
            raise ValueError(f"data.hflip must be true or false, got {self.hflip!r}")
        if self.limit is not None and (not _is_int(self.limit) or self.limit < 1):
            raise ValueError(f"data.limit must be a positive int or None (all images), got {self.limit!r}")
        if not _is_int(self.num_workers) or self.num_workers < 0:
            raise ValueError(f"data.num_workers must be an int >= 0, got {self.num_workers!r}")
        if not (self.in_memory == "auto" or isinstance(self.in_memory, bool)):
            raise ValueError(f"data.in_memory must be 'auto', true or false, got {self.in_memory!r}")
        if not _is_int(self.memory_limit_mb) or self.memory_limit_mb < 0:
            raise ValueError(f"data.memory_limit_mb must be an int >= 0, got {self.memory_limit_mb!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(
                f"data.resize_mode must be one of {', '.join(RESIZE_MODES)}; got {self.resize_mode!r}"
            )
        self._check_holdout()
        if volume_spec(self.volume).percentiles is not None and self.window is not None:
            raise ValueError(
                f"data.volume.percentiles and data.window both set a volume's levels; keep one (window "
                f"{self.window!r}, percentiles {self.volume['percentiles']!r})"
            )
        tile_spec(self.tile)  # a one-line ValueError for a bad block

    def _check_holdout(self) -> None:
        h = self.holdout
        if h is not None and not ((isinstance(h, float) and 0 < h < 1) or (_is_int(h) and h >= 1)):
            raise ValueError(
                "data.holdout must be a fraction in (0, 1) of each class (e.g. 0.2), a count of images per "
                f"class >= 1 (e.g. 50), or null for no held-out part; got {h!r}"
            )
        for name in ("split_file", "labeled_root"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
                setattr(self, name, value)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"data.{name} must be a path or null, got {value!r}")
        if not isinstance(self.holdout_in_pretraining, bool):
            raise ValueError(
                f"data.holdout_in_pretraining must be true or false, got {self.holdout_in_pretraining!r}"
            )
        if isinstance(self.group_by, os.PathLike):
            self.group_by = os.fspath(self.group_by)
        by = self.group_by  # None: unset (the parts of a file are held out by file); "none": per sample
        if by not in (None, "none") and not (
            by in GROUPINGS or (isinstance(by, str) and by.lower().endswith(".csv"))
        ):
            raise ValueError(
                f"data.group_by must be none, {', '.join(GROUPINGS)} or a .csv file with the columns file "
                f"and group; got {by!r}"
            )

    def _check_bands_window_clip(self) -> None:
        bands = self.bands
        if bands is not None and (
            not isinstance(bands, (list, tuple)) or not bands or not all(_is_int(b) and b >= 0 for b in bands)
        ):
            raise ValueError(f"data.bands must be a non-empty list of band indices >= 0, got {bands!r}")
        window = self.window
        if window is not None and not (
            isinstance(window, str) and (window == "voi" or window in WINDOW_PRESETS)
        ):
            if not isinstance(window, (list, tuple)) or len(window) != 2 or not all(map(_is_number, window)):
                raise ValueError(
                    f"data.window must be [center, width], 'voi', a preset ({', '.join(WINDOW_PRESETS)}) "
                    f"or null, got {window!r}"
                )
            if window[1] < 1:
                raise ValueError(f"data.window width must be >= 1 (DICOM's rule), got {window!r}")
        clip = self.clip
        if clip is None:
            return
        if isinstance(clip, (list, tuple)) and len(clip) == 2 and all(map(_is_number, clip)):
            if not 0 <= clip[0] < clip[1] <= 100:
                raise ValueError(f"data.clip percentiles must satisfy 0 <= low < high <= 100, got {clip!r}")
            return
        ok = (
            isinstance(clip, (list, tuple))
            and len(clip) == 2
            and all(isinstance(v, (list, tuple)) and v for v in clip)
            and len(clip[0]) == len(clip[1])
            and all(_is_number(x) for v in clip for x in v)
            and all(lo <= hi for lo, hi in zip(clip[0], clip[1], strict=True))
        )
        if not ok:
            raise ValueError(
                "data.clip must be [low, high] percentiles or [[lows], [highs]] per channel, low <= high; "
                f"got {clip!r}"
            )

    def _check_normalize(self) -> None:
        value = self.normalize
        if isinstance(value, str):
            if value not in NORMALIZE_NAMES:
                raise ValueError(
                    f"data.normalize must be one of {', '.join(NORMALIZE_NAMES)} or [[means], [stds]]; "
                    f"got {value!r}"
                )
            return
        ok = (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(isinstance(v, (list, tuple)) and len(v) >= 1 for v in value)
            and len(value[0]) == len(value[1])
            and all(_is_number(x) for v in value for x in v)
        )
        if not ok or not all(s > 0 for s in value[1]):
            raise ValueError(
                "data.normalize must be 'dataset', 'imagenet', 'none' or [[means], [stds]] with one value or "
                f"one per channel each and every std > 0; got {value!r}"
            )
