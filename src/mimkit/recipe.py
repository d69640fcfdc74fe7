"""A pretraining recipe chosen from the images and the machine: ``mimkit pretrain DIR``.

Two steps, kept apart as nnU-Net keeps its dataset fingerprint apart from its plan: :func:`fingerprint`
reads facts from the folder (how many images, their size, aspect, bands, bit depth, labels) and
:func:`plan` turns facts, the machine (:func:`machine`) and the time budget into config values, each with
its reason. :func:`choose` does both and returns the config; the run directory keeps the facts and the
reasons (``recipe.json``) next to the config they produced, and a run directory that already has a
config is resumed with it rather than planned again. Every value is an ordinary config key, so a dotted
override on the command line wins over the plan (and is listed as the user's choice).

The constants below were measured (docs/own-images.md): on 2-core CPUs a ViT-Tiny-wide encoder at
64-96 px is what a few minutes buy, and the budget decides how many epochs run.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mimkit.choices import Choice, as_overrides, flatten, table
from mimkit.data.datasets import scan_folder
from mimkit.data.images import image_info
from mimkit.data.items import ItemSpec, item_spec
from mimkit.data.splits import held_out_count
from mimkit.engine.config import PretrainConfig, _build, merge, parse_overrides
from mimkit.engine.dist import resolve_device
from mimkit.engine.precision import auto_to_native

log = logging.getLogger("mimkit")

SAMPLED = 200  # images whose headers are read for the size / band / depth facts
CPU_MAX_SIZE = 96  # largest side the CPU plan trains at (tokens, and so time, grow with its square)
GPU_MAX_SIZE = 224  # the papers' ImageNet size
CPU_MINUTES = 10.0  # the default budget: the plan prints it, train.max_minutes changes it
GPU_MINUTES = 60.0
MAX_EPOCHS = 800  # MAE's longest schedule: small folders stop here before the budget does
WARMUP_STEPS = 200  # lr warm-up, in optimizer steps (then rounded up to whole epochs)
# MAE's base lr (lr = blr * batch / 256) by encoder: the paper's 1.5e-4 for ViT-B; the Fashion-MNIST
# recipe's 1e-3 for ViT-Tiny (short schedules on small encoders want more)
BLRS = {"vit_tiny_patch16": 1e-3, "vit_small_patch16": 5e-4, "vit_base_patch16": 1.5e-4}
SIT_MAX_IMAGES = 50_000  # on a CPU, folders under this size get SiT (see _method)
MIN_STEPS_PER_EPOCH = 8  # the batch is cut so that an epoch has at least this many steps
RECIPE_RECORD = "recipe.json"  # in the run directory: the facts, the machine and each choice with its reason


@dataclass(frozen=True)
class Fingerprint:
    """Facts about a folder of images, read once (recorded in the run's ``recipe.json``).

    Attributes:
        root: the folder (its ``train/`` part when it has one).
        images: image files found.
        classes: images per class sub-folder; empty when unlabeled.
        height, width: median size of the sampled images, pixels.
        short_side: 10th percentile of their shorter side (what most images can give without upsampling).
        channels: band count of the first sampled image (1 grey, 3 colour, N multispectral).
        bit_depth: 8, 16 or 32 (float) bits per value.
        has_test: a ``test/`` or ``val/`` folder holds the held-out images already.
        held_out: images the run's split will hold out of pretraining (labeled folders without a test
            part: ``data.holdout`` of each class, :func:`mimkit.data.splits.held_out_count`).
    """

    root: str
    images: int
    classes: dict[str, int]
    height: int
    width: int
    short_side: int
    channels: int
    bit_depth: int
    has_test: bool
    held_out: int = 0

    @property
    def pretrain_images(self) -> int:
        """The images pretraining reads: the folder less its held-out part."""
        return self.images - self.held_out


@dataclass(frozen=True)
class Machine:
    """What the plan reads of the hardware: device, its native precision, memory, cores."""

    device: str
    precision: str
    memory_gb: float
    cores: int


def fingerprint(
    root: str | os.PathLike,
    labeled: str | bool = "auto",
    holdout: float | int | None = 0.2,
    items: ItemSpec | None = None,
) -> Fingerprint:
    """Read the facts of an image folder: file counts per class and the headers of up to
    :data:`SAMPLED` images spread over it (no image is decoded whole unless its format needs it).
    ``holdout``: the run's ``data.holdout`` (None: nothing held out); ``items``: how volumes and large
    images are cut into samples (slices, chips: then the facts are theirs)."""
    folder = Path(root)
    if not folder.is_dir():
        raise ValueError(f"no such folder of images: {str(folder)!r}")
    has_test = any((folder / name).is_dir() for name in ("test", "val"))
    train = folder / "train" if (folder / "train").is_dir() else folder
    exclude = ("test", "val") if train == folder else ()
    files, labels, classes = scan_folder(train, labeled, exclude, spec=items)
    stride = max(1, len(files) // SAMPLED)
    infos = []
    for path in files[::stride][:SAMPLED]:
        try:
            infos.append(image_info(path))
        except Exception:  # noqa: BLE001 - an unreadable file is counted and skipped by the dataset later
            continue
    if not infos:
        raise ValueError(f"none of the sampled image files under {folder} can be read")
    counts = {name: 0 for name in classes}
    for label in labels:
        if label >= 0:
            counts[classes[label]] += 1
    shorts = sorted(min(i.height, i.width) for i in infos)
    depth = {torch.uint8: 8, torch.uint16: 16}.get(infos[0].dtype, 32)
    return Fingerprint(
        root=str(train),
        images=len(files),
        classes=counts,
        height=int(statistics.median(i.height for i in infos)),
        width=int(statistics.median(i.width for i in infos)),
        short_side=shorts[len(shorts) // 10],
        channels=infos[0].channels,
        bit_depth=depth,
        has_test=has_test,
        held_out=0
        if has_test or holdout is None
        else sum(held_out_count(n, holdout) for n in counts.values() if n >= 2),
    )


def machine(device: str = "auto") -> Machine:
    """The device the run will use, its native precision and memory (GPU memory, else host memory)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        memory = torch.cuda.get_device_properties(dev).total_memory / 2**30
    else:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return Machine(dev.type, auto_to_native("auto", dev), round(memory, 1), os.cpu_count() or 1)


def _size_and_patch(fp: Fingerprint, hw: Machine) -> tuple[int, int, str]:
    """Training size, patch size and why: the images' own size up to the device's cap, rounded to the
    patch, with a patch that gives a grid of 8-14 tokens a side (the papers' 14x14 at 224 px)."""
    cap = GPU_MAX_SIZE if hw.device == "cuda" else CPU_MAX_SIZE
    side = min(fp.short_side, cap)
    patch = 4 if side <= 40 else 8 if side <= 112 else 16
    size = max(2 * patch, side // patch * patch)
    why = f"most images are >= {fp.short_side} px on their shorter side"
    if fp.short_side > cap:
        why += f"; {cap} px is the {hw.device.upper()} plan's largest (time grows with the square)"
    return size, patch, why + f"; {patch} px patches give a {size // patch}x{size // patch} token grid"


# encoder -> MAE decoder (width, depth, heads): the paper's 512 x 8 for ViT-B and up; narrower encoders get
# a decoder about as wide as themselves (the Fashion-MNIST recipe's 128 x 4 for ViT-Tiny)
DECODERS = {
    "vit_tiny_patch16": (128, 4, 4),
    "vit_small_patch16": (256, 4, 8),
    "vit_base_patch16": (512, 8, 16),
}


def _encoder(fp: Fingerprint, hw: Machine) -> tuple[str, str]:
    if hw.device == "cuda" and fp.images >= 100_000:
        return "vit_base_patch16", f"{fp.images:,} images on a GPU: the MAE paper's ViT-B"
    if hw.device == "cuda" and fp.images >= 10_000:
        return "vit_small_patch16", f"{fp.images:,} images on a GPU: ViT-S (ViT-B wants 100,000+)"
    return "vit_tiny_patch16", "ViT-Tiny's width and depth (patch size below): what a CPU budget can train"


def _batch(fp: Fingerprint, hw: Machine) -> tuple[int, str]:
    top = 256
    batch = top
    while batch > 16 and fp.pretrain_images // batch < MIN_STEPS_PER_EPOCH:
        batch //= 2
    if batch == top:
        return batch, "the recipes' batch"
    steps = fp.pretrain_images // batch
    if steps < MIN_STEPS_PER_EPOCH:  # the smallest batch the plan goes to
        return (
            batch,
            f"{fp.pretrain_images:,} images to pretrain on: the smallest batch, {steps} steps per epoch",
        )
    return (
        batch,
        f"{fp.pretrain_images:,} images to pretrain on: at least {MIN_STEPS_PER_EPOCH} steps per epoch",
    )


def _method_choices(method: str, encoder: str, patch: int) -> list[Choice]:
    """Each method's own settings: the papers' where they fit a small encoder, else the Fashion-MNIST
    recipes' (configs/), which were tuned for ViT-Tiny on 2 CPU cores."""
    if method == "mae":
        width, depth, heads = DECODERS.get(encoder, DECODERS["vit_tiny_patch16"])
        return [
            Choice("method.mask_ratio", 0.75, "the MAE paper's"),
            Choice("method.decoder_dim", width, f"a light decoder for {encoder.split('_')[1]}"),
            Choice("method.decoder_depth", depth, "see method.decoder_dim"),
            Choice("method.decoder_heads", heads, "see method.decoder_dim"),
            Choice("method.norm_pix_loss", True, "the paper's per-patch normalised targets"),
            Choice("data.augment", "mae", "random resized crops (20-100% of the image) and flips"),
            Choice("train.blr", BLRS.get(encoder, BLRS["vit_tiny_patch16"]), "MAE's, scaled for the width"),
            Choice("train.betas", [0.9, 0.95], "the MAE paper's"),
            Choice("train.clip_grad", 3.0, "bf16 safety, as in the configs/ recipes"),
        ]
    if method == "simmim":
        return [
            Choice("method.mask_ratio", 0.6, "the SimMIM paper's"),
            Choice(
                "method.mask_patch_size", 2 * patch, "masked cells of 2x2 patches (the paper: 32 px at 16)"
            ),
            Choice("data.augment", "simmim", "SimMIM's milder crops (67-100%) and flips"),
            Choice("train.blr", 5e-4, "the SimMIM Fashion-MNIST recipe's"),
            Choice("train.betas", [0.9, 0.999], "the SimMIM paper's"),
            Choice("train.clip_grad", 5.0, "the SimMIM paper's"),
        ]
    if method == "sit":
        return [
            Choice("encoder.depth", 6, "SiT encodes 4 views per image: half the blocks keeps it affordable"),
            Choice(
                "method.recon_hidden_dim", 512, "heads sized for ViT-Tiny (the paper's 2048 / 4096 for ViT-B)"
            ),
            Choice("method.proj_hidden_dim", 512, "see method.recon_hidden_dim"),
            Choice("method.proj_dim", 256, "the SiT paper's"),
            Choice("data.augment", "none", "SiT makes its own two views of each image"),
            Choice("train.blr", 5e-4, "the SiT paper's"),
            Choice("train.betas", [0.9, 0.999], "the SiT paper's"),
            Choice("train.weight_decay", 0.04, "the SiT paper's"),
            Choice("train.clip_grad", 3.0, "the SiT paper's"),
        ]
    return []


def _method(fp: Fingerprint, hw: Machine) -> tuple[str, str]:
    if fp.channels not in (1, 3):
        return "mae", (
            f"{fp.channels} bands: MAE, as multispectral pretraining does (SatMAE); SiT's photometric views "
            "were made for RGB"
        )
    if hw.device == "cuda" or fp.images >= SIT_MAX_IMAGES:
        return "mae", "MAE (He et al., 2021): the paper's method at scale, and the one to fine-tune from"
    return "sit", (
        f"under {SIT_MAX_IMAGES:,} images on a CPU: SiT's frozen features beat a random init on small "
        "folders (+5.5 kNN points on photo crops) where MAE's fell below it (-8): docs/own-images.md"
    )


def plan(fp: Fingerprint, hw: Machine, given: dict[str, Any] | None = None) -> list[Choice]:
    """The config values for pretraining on the fingerprinted folder, each with its reason.

    ``given``: values the user set (flat dotted keys); the choices that follow from them use them (the
    warm-up from the batch given, the decoder from the encoder given, ...).
    """
    given = given or {}
    size, patch, why_size = _size_and_patch(fp, hw)
    patch = given.get("encoder.patch_size", patch)
    encoder, why_encoder = _encoder(fp, hw)
    encoder = given.get("encoder.name", encoder)
    method, why_method = _method(fp, hw)
    method = given.get("method.name", method)
    batch, why_batch = _batch(fp, hw)
    # about WARMUP_STEPS of warm-up, and at most a tenth of a schedule the user shortened
    warmup = math.ceil(WARMUP_STEPS / max(1, fp.pretrain_images // given.get("train.batch_size", batch)))
    warmup = min(warmup, max(1, round(given.get("train.epochs", MAX_EPOCHS) / 10)))
    minutes = given.get("train.max_minutes")
    budget = minutes if minutes is not None else GPU_MINUTES if hw.device == "cuda" else CPU_MINUTES
    bits = {8: "8-bit", 16: "16-bit", 32: "float"}[fp.bit_depth]
    kind = {1: "grey", 3: "colour"}.get(fp.channels, f"{fp.channels}-band")
    device = hw.device.upper()
    held = f", {fp.held_out:,} held out for evaluation" if fp.held_out else ""
    choices = [
        Choice("data.source", "folder", f"{fp.images:,} {bits} {kind} images in {fp.root}{held}"),
        Choice("data.img_size", size, why_size),
        Choice("data.channels", fp.channels, f"the images' own {fp.channels} band(s)"),
        Choice("encoder.name", encoder, why_encoder),
        Choice("encoder.patch_size", patch, "see data.img_size"),
        Choice("method.name", method, why_method),
        *_method_choices(method, encoder, patch),
    ]
    # a window or per-volume percentiles map the values to [0, 1] already: clipping them again at the
    # folder's percentiles would flatten rare bright structures (a lesion, bone) into the tissue around them
    levelled = "data.window" in given or "data.volume.percentiles" in given
    if fp.bit_depth > 8 and not levelled:
        choices.append(
            Choice("data.clip", [0.5, 99.5], f"{bits} values: clip each band's 0.5-99.5th percentiles")
        )
    return choices + [
        Choice("train.batch_size", batch, why_batch),
        Choice("train.max_minutes", budget, f"the default budget on a {device}: the schedule fits it"),
        Choice("train.epochs", MAX_EPOCHS, "an upper bound: the budget usually ends the run first"),
        Choice("train.warmup_epochs", warmup, f"about {WARMUP_STEPS} steps of warm-up, at most a tenth"),
        Choice("train.precision", hw.precision, f"native on this {device}"),
    ]


def default_run_dir(root: str | os.PathLike) -> str:
    """Where a run on the folder ``root`` lives unless ``output_dir`` says so: ``runs/<folder name>``."""
    return str(Path("runs") / Path(root).resolve().name)


def choose(root: str | os.PathLike, overrides: list[str]) -> tuple[PretrainConfig, dict[str, Any]]:
    """The planned config for pretraining on ``root`` with the user's ``key=value`` overrides on top, and
    the record of how it was chosen (``{"fingerprint", "machine", "choices"}``)."""
    given = parse_overrides(overrides)
    flat = flatten(given)
    data = given.get("data") if isinstance(given.get("data"), dict) else {}
    items = item_spec(data.get("volume"), data.get("tile"), data.get("window"))
    fp = fingerprint(root, flat.get("data.labeled", "auto"), flat.get("data.holdout", 0.2), items)
    hw = machine(flat.get("train.device", "auto"))
    choices = plan(fp, hw, flat)
    base = {"output_dir": default_run_dir(root), "data": {"root": str(root)}}
    cfg = _build(PretrainConfig, merge(merge(base, as_overrides(choices)), given), "")
    log.info("recipe chosen for %s (override any value with KEY=VALUE):\n%s", root, table(choices, flat))
    record = {"fingerprint": asdict(fp), "machine": asdict(hw), "choices": [asdict(c) for c in choices]}
    return cfg, record
