"""What the explorer shows, without the web server: a run's encoder (and method, when it has a decoder), its
data's held-out and training images, their embeddings, and the pictures the page asks for as PNG bytes.

    explorer = Explorer("runs/mae", ExploreOptions(test_limit=500))
    shown = explorer.reconstruction("test", 0, seed=0, mask=[0, 1, ...])   # {"mask", "panels", "loss"}
    explorer.neighbours("test", 0, k=8)                                      # itself first, distance 0
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mimkit.data import build_dataset, build_eval_transform
from mimkit.data.transforms import denormalize
from mimkit.eval.frozen import Split, features
from mimkit.eval.saved import is_classifier_run
from mimkit.eval_sources import (
    DataChoice,
    EncoderChoice,
    FeatureOptions,
    cache_dir_for,
    encoders,
    load_encoder,
    settle,
)
from mimkit.masking import random_token_mask
from mimkit.pretrain import load_pretrained
from mimkit.viz import DEFAULT_STRETCH, attention_maps, display_bands, reconstruct, stretch_range

log = logging.getLogger("mimkit")

SPLITS = ("test", "train")  # the held-out split first


@dataclass(frozen=True)
class ExploreOptions:
    """What the explorer loads.

    Attributes:
        encoder_name: the architecture of an encoder-only file (no decoder: no reconstruction).
        data_root: read the images from here instead of the run's data root.
        train_limit, test_limit: the first N images of each split are browsed and embedded.
        pool: the embedding of the neighbour search (``"token"`` or ``"avg"``), as kNN's ``--pool``.
        device: where the model runs (``"auto"``: a GPU when there is one).
        use_cache: read and write the run's feature cache (``<run>/eval/feature_cache``, kNN's).
    """

    encoder_name: str | None = None
    data_root: str | None = None
    train_limit: int | None = 2000
    test_limit: int | None = 1000
    pool: str = "token"
    device: str = "auto"
    use_cache: bool = True


class Explorer:
    """A run loaded once for the explorer page; every method is safe to call from several threads.

    Args:
        run: a run directory or checkpoint (pretraining or fine-tuning), or an encoder file with
            ``options.encoder_name``.
        options: see :class:`ExploreOptions`.

    Raises:
        FileNotFoundError: no such run or checkpoint.
        ValueError: a file without an encoder, limits that are not positive.
    """

    def __init__(self, run: str, options: ExploreOptions | None = None):
        options = options or ExploreOptions()
        data_choice = DataChoice(
            root=options.data_root, train_limit=options.train_limit, test_limit=options.test_limit
        )
        loaded = load_encoder(EncoderChoice(str(run), options.encoder_name), data_choice)
        self.method, self.no_reconstruction = _method_with_decoder(loaded, options.encoder_name)
        if self.method is not None:  # one copy of the weights: the method's encoder
            loaded = dataclasses.replace(loaded, encoder=self.method.encoder)
        else:
            log.info("explore: reconstruction is off: %s", self.no_reconstruction)
        self.name = str(run)
        self.encoder = loaded.encoder
        train_cfg = dataclasses.replace(loaded.data, limit=options.train_limit)
        test_cfg = dataclasses.replace(loaded.data, limit=options.test_limit)
        train = build_dataset(train_cfg, "train")
        test = build_dataset(test_cfg, "test", train_dataset=train)
        self.splits = {"test": Split(test, test_cfg), "train": Split(train, train_cfg)}
        feature_options = FeatureOptions(
            pool=options.pool, device=options.device, use_cache=options.use_cache
        )
        self.run = settle(feature_options, cache_dir_for(loaded, feature_options))
        self.device = self.run.device
        self.encoder.eval().to(self.device)
        if self.method is not None:
            self.method.eval().to(self.device)
        self.transform = build_eval_transform(train).to(self.device)
        self.stretch = None if train.dtype == torch.uint8 else DEFAULT_STRETCH
        self.bands = display_bands(train.channels, None)[0]
        self.grid = tuple(self.encoder.grid_size)
        self.patch_size = int(self.encoder.patch_size)
        self._lock = threading.Lock()  # one model call at a time: the server answers from a thread pool
        self.no_attention = None
        try:  # the maps of one image say whether the encoder has them (a Swin has no class token)
            attention_maps(self.encoder, self._image("test", 0), -1)
        except ValueError as err:
            self.no_attention = str(err)
            log.info("explore: attention maps are off: %s", err)
        entry = encoders(loaded, False, 0)[0]  # the key kNN caches the features under
        bank, self.bank_rows = [], []
        for name in SPLITS:
            feats, _ = features(entry, self.splits[name], self.run, (options.pool,))[options.pool]
            bank.append(F.normalize(feats.float(), dim=1))
            self.bank_rows += [(name, i) for i in range(feats.shape[0])]
        self.bank = torch.cat(bank)  # [test + train, D], unit rows
        self.offsets = {"test": 0, "train": len(test)}

    # ------------------------------------------------------------------ what the page asks for

    def info(self) -> dict[str, Any]:
        """The run, the data and what is on: ``grid`` ``[gh, gw]``, ``depth``, ``heads``, split sizes, the
        reasons reconstruction or attention are off (None when on)."""
        encoder, test = self.encoder, self.splits["test"].dataset
        blocks = getattr(encoder, "blocks", None)
        return {
            "run": self.name,
            "method": type(self.method).__name__ if self.method is not None else None,
            "encoder": type(encoder).__name__,
            "img_size": list(test.img_size),
            "grid": list(self.grid),
            "patch_size": self.patch_size,
            "depth": len(blocks) if blocks is not None else 0,
            "heads": blocks[0].attn.num_heads if self.no_attention is None else 0,
            "splits": {name: len(self.splits[name].dataset) for name in SPLITS},
            "classes": list(test.classes),
            "no_reconstruction": self.no_reconstruction,
            "no_attention": self.no_attention,
        }

    def picture(self, split: str, index: int) -> bytes:
        """The image as a PNG, at its own size (the page scales it)."""
        return png(self._display(self._image(split, index))[0])

    def draw_mask(self, ratio: float, seed: int) -> list[int]:
        """A patch mask hiding ``ratio`` of the patches, drawn from ``seed`` (MAE's draw: ``int(L * (1 -
        ratio))`` patches kept), as ``L`` 0/1 values, row by row."""
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")
        length = self.grid[0] * self.grid[1]
        if ratio == 0:
            return [0] * length
        noise = torch.rand(1, length, generator=torch.Generator().manual_seed(int(seed)))
        return random_token_mask(1, length, ratio, noise=noise).mask[0].long().tolist()

    def reconstruction(
        self, split: str, index: int, seed: int = 0, mask: Sequence[int] | None = None, ratio: float = 0.75
    ) -> dict[str, Any]:
        """The method's reconstruction of one image with ``mask`` (``L`` 0/1 values, 1 = hidden; None: one
        drawn by :meth:`draw_mask`), random fills from ``seed``.

        Returns:
            ``{"mask": [L], "panels": {name: PNG bytes} for the method's panels (``masked`` or
            ``corrupted``, ``reconstruction``, ``pasted``), "loss": float or None}``.

        Raises:
            ValueError: no decoder (the reason), a mask of the wrong length or values.
        """
        if self.method is None:
            raise ValueError(f"reconstruction is off: {self.no_reconstruction}")
        mask = list(self.draw_mask(ratio, seed) if mask is None else mask)
        grid_mask = torch.tensor(mask, dtype=torch.float32).view(1, -1)
        if grid_mask.shape[1] != self.grid[0] * self.grid[1]:
            raise ValueError(
                f"mask must have {self.grid[0] * self.grid[1]} values (one per patch), got {len(mask)}"
            )
        image = self._image(split, index)
        with self._lock:
            out = reconstruct(self.method, image, seed, mask=grid_mask.to(self.device))
        names = [name for name in ("masked", "corrupted", "reconstruction", "pasted") if name in out]
        shown = self._display(image, *(out[name] for name in names))[1:]
        loss = next((out[k] for k in ("loss", "loss_recon") if k in out), None)
        loss = float(loss) if loss is not None and math.isfinite(float(loss)) else None
        panels = dict(zip(names, map(png, shown), strict=True))
        return {"mask": [int(v) for v in mask], "panels": panels, "loss": loss}

    def attention(self, split: str, index: int, block: int) -> list[bytes]:
        """The class token's attention in ``block`` over the image: PNGs of the mean over heads, then each
        head, each map scaled to its own maximum (one square per patch)."""
        if self.no_attention is not None:
            raise ValueError(f"attention maps are off: {self.no_attention}")
        image = self._image(split, index)
        with self._lock:
            maps = attention_maps(self.encoder, image, block)[0].cpu()  # [heads, h, w]
        grey = self._display(image)[0].astype(np.float32).mean(axis=-1) / 255.0  # [H, W]
        return [png(heat_overlay(grey, m)) for m in [maps.mean(dim=0), *maps]]

    def neighbours(self, split: str, index: int, k: int = 8) -> list[dict[str, Any]]:
        """The ``k`` images nearest to this one in embedding space (cosine distance ``1 - cos``, over both
        splits), nearest first: ``{"split", "index", "distance", "label"}``."""
        self._check(split, index)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(self.bank_rows):
            raise ValueError(f"k must be in [1, {len(self.bank_rows)}], got {k!r}")
        query = self.bank[self.offsets[split] + index]
        distance = (1 - self.bank @ query).clamp_min(0)  # [test + train]
        found = torch.topk(distance, k, largest=False)  # sorted, nearest first
        rows = []
        for d, row in zip(found.values.tolist(), found.indices.tolist(), strict=True):
            name, i = self.bank_rows[row]
            rows.append({"split": name, "index": i, "distance": d, "label": self._label(name, i)})
        return rows

    # ------------------------------------------------------------------ helpers

    def _check(self, split: str, index: int) -> None:
        if split not in self.splits:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        size = len(self.splits[split].dataset)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
            raise ValueError(f"index must be in [0, {size - 1}] for the {split} split, got {index!r}")

    def _image(self, split: str, index: int) -> torch.Tensor:
        """One image, normalised, ``[1, C, H, W]`` on the model's device."""
        self._check(split, index)
        image = self.splits[split].dataset[index][0]
        return self.transform(image.unsqueeze(0).to(self.device))

    def _label(self, split: str, index: int) -> str | None:
        dataset = self.splits[split].dataset
        label = int(dataset.labels[index])
        return dataset.classes[label] if 0 <= label < len(dataset.classes) else None

    def _display(self, image: torch.Tensor, *others: torch.Tensor) -> list[np.ndarray]:
        """``image`` and ``others`` (normalised ``[1, C, H, W]``) as uint8 ``[H, W, 1 or 3]`` pictures with
        the same grey levels; 16-bit and float data stretched to the image's 1-99% percentiles."""
        dataset = self.splits["test"].dataset
        pictures = [
            denormalize(t[0].float().cpu(), dataset.mean, dataset.std, clamp=False) for t in (image, *others)
        ]
        if self.stretch is not None:
            lo, hi = stretch_range(pictures[0].unsqueeze(0), *self.stretch)
            pictures = [(p - lo) / (hi - lo) for p in pictures]
        return [(p[self.bands].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy() for p in pictures]


def _method_with_decoder(loaded, encoder_name: str | None) -> tuple[torch.nn.Module | None, str | None]:
    """The run's method when it has a decoder to reconstruct with, else ``(None, why not)``."""
    if encoder_name is not None or loaded.run_dir is None:
        return None, f"{loaded.checkpoint} holds an encoder alone, without the decoder a reconstruction needs"
    if is_classifier_run(loaded.checkpoint):
        return None, (
            f"{loaded.run_dir} is a fine-tuning run: it keeps the encoder and a classifier head, not the "
            "pretraining decoder (explore its pretraining run to see reconstructions)"
        )
    method, cfg, _ = load_pretrained(loaded.checkpoint)
    if not hasattr(method, "reconstruct"):
        return None, f"method {cfg.method['name']!r} has no reconstruction"
    return method, None


def heat_overlay(grey: np.ndarray, heat: torch.Tensor) -> np.ndarray:
    """A ``[h, w]`` map over a grey ``[H, W]`` picture (values 0-1): nearest upsampling (one square per
    patch), scaled to its maximum, the inferno colour map at 60% over the picture; uint8 ``[H, W, 3]``."""
    from matplotlib import colormaps

    size = grey.shape
    up = F.interpolate(heat[None, None].float(), size=size, mode="nearest")[0, 0]
    up = (up / up.max().clamp_min(1e-12)).numpy()
    colour = colormaps["inferno"](up)[..., :3]  # [H, W, 3] in 0-1
    mixed = 0.4 * grey[..., None] + 0.6 * colour
    return (mixed * 255).round().astype(np.uint8)


def png(picture: np.ndarray) -> bytes:
    """uint8 ``[H, W, 1 or 3]`` -> PNG bytes (grey or RGB)."""
    array = picture[..., 0] if picture.shape[-1] == 1 else picture
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()
