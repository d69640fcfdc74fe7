"""The encoder in other libraries' formats: transformers (ViT, ViTMAE), timm and ONNX, with a model card.

``mimkit export RUN OUT_DIR --format transformers timm onnx`` writes, under ``OUT_DIR``:

- ``transformers/vit``: a ``ViTModel`` (the encoder) and ``transformers/vit_mae``: a ``ViTMAEForPreTraining``
  (encoder and decoder, MAE runs only), each ``from_pretrained``-ready with an image processor that
  normalises as the run did. Built with the installed transformers (its own module names), loaded back and
  compared with mimkit's output on export.
- ``timm``: ``model.safetensors`` (mimkit's ViT names are timm's) and ``config.json`` (architecture,
  ``model_args``, ``pretrained_cfg``) for ``timm.create_model(arch, pretrained=True,
  pretrained_cfg_overlay=dict(file=...), **model_args)``.
- ``onnx``: ``encoder.onnx``, the encoder's ``forward_features`` (tokens ``[N, 1 + L, D]``) with a dynamic
  batch, checked against onnxruntime on export.
- ``README.md``: a model card (architecture, data and normalisation, recipe, the run's evaluations, how to
  load each format).

Only ViT encoders go to transformers and timm (mimkit's Swin keeps the original release's names, not
timm's current ones: it exports as ``safetensors`` and ``onnx``). The names: :mod:`mimkit.models.hf_names`.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mimkit.eval.saved import is_classifier_run
from mimkit.logs import quiet
from mimkit.models import hf_names
from mimkit.models.vit import VisionTransformer
from mimkit.pretrain import load_pretrained, resolve_checkpoint
from mimkit.weights import export_encoder_safetensors

log = logging.getLogger(__name__)

FORMATS = ("transformers", "timm", "onnx")
ONNX_OPSET = 18
_TOLERANCE = 1e-4  # max |difference| accepted on export checks (fp32, features of unit scale)


def _require(module: str, extra: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"this export needs {module}: pip install 'mimkit[{extra}]'") from None


def _vit(encoder: nn.Module, fmt: str) -> VisionTransformer:
    if not isinstance(encoder, VisionTransformer):
        raise ValueError(
            f"format {fmt!r} takes ViT encoders; this run's encoder is a {type(encoder).__name__}: "
            "export it with --format onnx, or as .safetensors (mimkit export RUN OUT.safetensors)"
        )
    return encoder


@torch.no_grad()
def _compare(name: str, ours: torch.Tensor, theirs: torch.Tensor, tolerance: float = _TOLERANCE) -> float:
    """The max |difference| of two outputs; a RuntimeError above ``tolerance`` (relative, at least of 1)."""
    diff = float((ours.float() - theirs.float()).abs().max())
    scale = float(ours.abs().max())
    log.info("%s: max |difference| from mimkit %.2e (values up to %.2f)", name, diff, scale)
    if not diff <= tolerance * max(1.0, scale):
        raise RuntimeError(f"{name} does not reproduce mimkit's output: max |difference| {diff:.2e}")
    return diff


def _probe(vit: nn.Module, n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, vit.in_chans, *vit.img_size, generator=g)


def _image_processor(
    out: Path, vit: VisionTransformer, stats: dict[str, Any], rescale: float | None = 1 / 255
) -> None:
    """``preprocessor_config.json``: resize to the run's size, scale to [0, 1] (``rescale``: 1 / 255 for
    8-bit images, 1 / 65535 for 16-bit, None for float values), normalise as the run."""
    h, w = vit.img_size
    config = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True, "size": {"height": h, "width": w}, "resample": 3,
        "do_rescale": rescale is not None, "rescale_factor": rescale or 1.0,
        "do_normalize": True, "image_mean": list(stats["mean"]), "image_std": list(stats["std"]),
    }  # fmt: skip
    (out / "preprocessor_config.json").write_text(json.dumps(config, indent=2) + "\n")


@torch.no_grad()
def export_transformers(method: nn.Module, stats: dict[str, Any], out: Path) -> dict[str, float]:
    """``out/vit`` (ViTModel) and, for MAE, ``out/vit_mae`` (ViTMAEForPreTraining); each loaded back and
    checked: the ViT's hidden states, the ViTMAE's loss for the same noise. Returns the differences."""
    _require("transformers", "transformers")
    from transformers import ViTConfig, ViTMAEConfig, ViTMAEForPreTraining, ViTModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one line per check, not bars per file

    vit = _vit(method.encoder if hasattr(method, "encoder") else method, "transformers").eval()
    x = _probe(vit)
    checks = {}
    model = ViTModel(ViTConfig(**hf_names.hf_config_args(vit)), add_pooling_layer=False)
    model.load_state_dict(hf_names.vit_to_hf(vit, set(model.state_dict())), strict=True)
    model.save_pretrained(out / "vit")
    _image_processor(out / "vit", vit, stats)
    loaded = ViTModel.from_pretrained(out / "vit", add_pooling_layer=False).eval()  # as its README loads it
    checks["transformers ViTModel"] = _compare(
        "transformers ViTModel", vit.forward_features(x), loaded(pixel_values=x).last_hidden_state
    )
    if type(method).__name__ == "MAE":
        dec = method.decoder
        config = ViTMAEConfig(
            **hf_names.hf_config_args(vit),
            decoder_hidden_size=dec.embed.out_features, decoder_num_hidden_layers=len(dec.blocks),
            decoder_num_attention_heads=dec.blocks[0].attn.num_heads if len(dec.blocks) else 1,
            decoder_intermediate_size=dec.blocks[0].mlp.fc1.out_features if len(dec.blocks) else 1,
            mask_ratio=method.mask_ratio, norm_pix_loss=bool(method.norm_pix_loss),
        )  # fmt: skip
        mae = ViTMAEForPreTraining(config)
        keys = set(mae.state_dict())
        state = hf_names.vit_to_hf(vit, keys, "vit.") | hf_names.mae_decoder_to_hf(dec, keys)
        mae.load_state_dict(state, strict=True)
        mae.save_pretrained(out / "vit_mae")
        _image_processor(out / "vit_mae", vit, stats)
        loaded = ViTMAEForPreTraining.from_pretrained(out / "vit_mae").eval()
        noise = torch.rand(x.shape[0], vit.num_patches, generator=torch.Generator().manual_seed(1))
        method.eval()
        checks["transformers ViTMAEForPreTraining loss"] = _compare(
            "transformers ViTMAEForPreTraining loss", method(x, noise=noise)["loss"][None],
            loaded(pixel_values=x, noise=noise).loss[None],
        )  # fmt: skip
    return checks


def _timm_arch(vit: VisionTransformer) -> str:
    """A timm ViT architecture name of the same width (every dimension is passed as ``model_args`` too)."""
    size = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge"}.get(vit.embed_dim, "base")
    return f"vit_{size}_patch16_224"


def timm_config(
    vit: VisionTransformer, stats: dict[str, Any], classes: list[str] | None = None
) -> dict[str, Any]:
    """timm's ``config.json`` of a mimkit ViT: the encoder (no head, class-token pooling), or with
    ``classes`` a classifier with its head, pooling and ``fc_norm`` as built, and ``label_names`` in
    ``pretrained_cfg``."""
    head: dict[str, Any] = {"global_pool": "token", "num_classes": 0}
    if classes is not None:
        head = {"global_pool": vit.global_pool, "fc_norm": not isinstance(vit.fc_norm, nn.Identity),
                "num_classes": len(classes)}  # fmt: skip
    model_args = {
        "img_size": list(vit.img_size), "patch_size": vit.patch_size, "in_chans": vit.in_chans,
        "embed_dim": vit.embed_dim, "depth": vit.depth, "num_heads": vit.num_heads,
        "mlp_ratio": hf_names.mlp_dim(vit) / vit.embed_dim, "qkv_bias": True, "class_token": True, **head,
    }  # fmt: skip
    return {
        "architecture": _timm_arch(vit),
        "num_classes": head["num_classes"],
        "num_features": vit.embed_dim,
        "global_pool": head["global_pool"],
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": [vit.in_chans, *vit.img_size],
            "mean": list(stats["mean"]),
            "std": list(stats["std"]),
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "num_classes": head["num_classes"],
            **({"label_names": list(classes)} if classes is not None else {}),
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        },  # fmt: skip
    }


def export_timm(method: nn.Module, stats: dict[str, Any], out: Path) -> dict[str, Any]:
    """``out/timm/model.safetensors`` + ``config.json`` in the layout timm's hub loader reads."""
    vit = _vit(getattr(method, "encoder", method), "timm")
    folder = out / "timm"
    export_encoder_safetensors(vit, folder / "model.safetensors")
    config = timm_config(vit, stats)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config


class _Features(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_features(images)


@torch.no_grad()
def export_onnx(method: nn.Module, out: Path) -> float:
    """``out/onnx/encoder.onnx``: the encoder's tokens (:func:`write_onnx`); returns the max |difference|."""
    encoder = getattr(method, "encoder", method).eval()
    return write_onnx(_Features(encoder), encoder, out / "onnx" / "encoder.onnx", "tokens")


@torch.no_grad()
def write_onnx(
    module: nn.Module, encoder: nn.Module, path: Path, output: str, tolerance: float = _TOLERANCE
) -> float:
    """``module`` (images ``[N, C, H, W]`` of ``encoder``'s input -> one tensor named ``output``) as ONNX at
    ``path`` (torch.onnx's dynamo exporter, opset 18, dynamic batch), run back with onnxruntime on a batch
    of another size than the traced one and compared within ``tolerance``; returns the max |difference|."""
    _require("onnx", "onnx")
    ort = _require("onnxruntime", "onnx")
    module.eval()
    if hasattr(encoder, "set_fused_attn"):
        encoder.set_fused_attn(False)  # the plain-math attention exports to standard ops
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # the exporter's optimiser logs each rewrite at INFO, its registry warns of torchvision's ops it cannot
    # find (none is used here), and torch's pytree warns of its own deprecations (torch 2.13)
    with quiet("onnxscript", "onnx_ir", "torch.onnx", level=logging.ERROR), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            module, (_probe(encoder, 2),), str(path), dynamo=True,
            opset_version=ONNX_OPSET, input_names=["images"], output_names=[output],
            dynamic_shapes=({0: batch},), external_data=False, verbose=False,
        )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _probe(encoder, 3)
    (theirs,) = session.run(None, {"images": x.numpy()})
    return _compare("onnxruntime", module(x), torch.from_numpy(theirs), tolerance)


# ----------------------------------------------------------------------------- model card

_LOADING = {
    "transformers": """```python
from transformers import AutoImageProcessor, ViTModel  # ViTMAEForPreTraining: transformers/vit_mae
model = ViTModel.from_pretrained("transformers/vit", add_pooling_layer=False)  # no pooler was trained
processor = AutoImageProcessor.from_pretrained("transformers/vit")
```
""",
    "timm": """```python
import json, timm
cfg = json.load(open("timm/config.json"))
model = timm.create_model(cfg["architecture"], pretrained=True,
                          pretrained_cfg_overlay=dict(file="timm/model.safetensors"), **cfg["model_args"])
```
""",
    "onnx": """```python
import onnxruntime
session = onnxruntime.InferenceSession("onnx/encoder.onnx")
(tokens,) = session.run(None, {"images": normalised_batch})  # float32 [N, C, H, W] -> [N, 1 + L, D]
```
""",
}


def model_card(cfg: Any, stats: dict[str, Any], run: Path | None, formats: list[str], arch: str) -> str:
    """``README.md`` of an export: what the model is, its data, recipe and results, how to load it."""
    evals = []
    if run is not None and run.is_dir():
        for path in sorted(run.rglob("*.json")):
            if path.name in ("finetune.json", "knn.json", "linear.json", "results.json"):
                evals.append(
                    f"- `{path.relative_to(run)}`: " + json.dumps(json.loads(path.read_text()))[:300]
                )
    enc, method, data, train = cfg.encoder, cfg.method, cfg.data, cfg.train
    lines = [
        "---", "library_name: mimkit", "tags: [masked-image-modeling, vision-transformer, mimkit]", "---", "",
        f"# {method['name'].upper()} pretrained {enc['name']}", "",
        f"Self-supervised {method['name']} pretraining with mimkit; encoder: {arch}.", "",
        "## Architecture", "", "```json", json.dumps({"encoder": enc, "method": method}, indent=1), "```", "",
        "## Data and input", "",
        f"- source: `{data.source}` at `{data.root}`; input {stats['channels']} channel(s) at "
        f"{stats['img_size'][0]}x{stats['img_size'][1]}",
        f"- normalisation (per channel, on [0, 1] values): mean {stats['mean']}, std {stats['std']}",
        *([f"- clipped to {stats['clip']} (stored units) before normalising"] if stats.get("clip") else []),
        "", "## Recipe", "",
        f"epochs {train.epochs}, batch {train.batch_size} x {train.accum_steps} accumulation per process, "
        f"blr {train.blr}, weight decay {train.weight_decay}, warm-up {train.warmup_epochs} epochs, "
        f"precision {train.precision}.", "",
        "## Evaluations of this run", "", *(evals or ["None recorded next to the checkpoint."]), "",
        "## Loading", "",
    ]  # fmt: skip
    lines += [_LOADING[fmt] for fmt in FORMATS if fmt in formats]
    return "\n".join(lines) + "\n"


def check_formats(formats: list[str]) -> None:
    """A ValueError naming any unknown format (or none given)."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"unknown export format(s) {unknown}; choose from {', '.join(FORMATS)}")


def prepare_out_dir(out: str | Path, force: bool) -> Path:
    """``out`` as a directory to write into: absent or empty, or emptied with ``force`` (else ValueError)."""
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise ValueError(f"{out_dir} exists and is not empty; choose another or pass --force")
        shutil.rmtree(out_dir)
    return out_dir


def export_run(checkpoint: str, out: str, formats: list[str], force: bool = False) -> dict[str, Any]:
    """Write a run's encoder in ``formats`` under ``out`` with a model card; returns what was checked."""
    check_formats(formats)
    if is_classifier_run(checkpoint):
        raise ValueError(
            f"{checkpoint} is a fine-tuning run: its classifier exports with "
            "mimkit.interop_classifier.export_classifier_run (what mimkit export runs for it)"
        )
    out_dir = prepare_out_dir(out, force)
    method, cfg, stats = load_pretrained(checkpoint)
    method.eval()
    encoder = getattr(method, "encoder", method)
    for fmt in formats:  # refuse before writing anything
        if fmt in ("transformers", "timm"):
            _vit(encoder, fmt)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    for fmt in formats:
        if fmt == "transformers":
            report.update(export_transformers(method, stats, out_dir / "transformers"))
        elif fmt == "timm":
            report["timm architecture"] = export_timm(method, stats, out_dir)["architecture"]
        else:
            report["onnxruntime"] = export_onnx(method, out_dir)
    run = Path(resolve_checkpoint(checkpoint)).parent
    arch = f"{type(encoder).__name__} ({sum(p.numel() for p in encoder.parameters()) / 1e6:.1f}M parameters)"
    (out_dir / "README.md").write_text(model_card(cfg, stats, run, formats, arch))
    return report
