"""A fine-tuned classifier in other libraries' formats: transformers, timm and ONNX, with a model card.

``mimkit export FT_RUN OUT_DIR --format transformers timm onnx`` on a fine-tuning run (the directory with
``classifier.json``, :mod:`mimkit.eval.saved`) writes, under ``OUT_DIR``:

- ``transformers``: a ``BeitForImageClassification`` with ``id2label`` / ``label2id`` from the class names
  and an image processor that normalises as the run did; ``AutoModelForImageClassification`` and the
  ``image-classification`` pipeline load it.
- ``timm``: ``model.safetensors`` and ``config.json`` with the head (``num_classes``, ``global_pool="avg"``,
  ``fc_norm``) and ``label_names`` in ``pretrained_cfg``: ``timm.create_model("local-dir:OUT_DIR/timm",
  pretrained=True)``.
- ``onnx``: ``classifier.onnx``, normalised images ``[N, C, H, W]`` -> logits ``[N, classes]``.
- ``README.md``: a model card with the classes, the input, the held-out scores and how each format loads.

Each format is loaded back on export and its logits compared with mimkit's classifier within
:func:`logit_tolerance` (timm's only where timm is installed; the card says when it was not checked).

Why BEiT and not ``ViTForImageClassification``: mimkit's classifier is MAE's fine-tuning model, the mean of
the patch tokens through ``fc_norm`` into the head. ``ViTForImageClassification`` classifies the class token
after the final per-token norm, and no choice of its weights computes a mean of the patch tokens: it cannot
hold this classifier. transformers' BEiT with mean pooling can: with absolute position embeddings and
neither layer scale nor relative position bias, a BEiT block is a ViT block, its pooler is the mean of the
patch tokens through a LayerNorm (``fc_norm``), and the one weight it lacks, the attention's key bias,
shifts every score of a query's row by the same amount, which the softmax cancels
(:func:`mimkit.models.hf_names.beit_classifier_to_hf`). The logits agree to fp32 rounding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mimkit.eval.records import at_chance
from mimkit.eval.saved import SavedClassifier, load_classifier
from mimkit.interop import (
    FORMATS,
    _compare,
    _image_processor,
    _probe,
    _require,
    check_formats,
    prepare_out_dir,
    timm_config,
    write_onnx,
)
from mimkit.models import hf_names
from mimkit.models.vit import VisionTransformer
from mimkit.weights import export_encoder_safetensors

_RESCALE = {"uint8": 1 / 255, "uint16": 1 / 65535, "float32": None}  # stored values -> [0, 1]
FP32_ROUNDOFF = 2.0**-24  # the unit roundoff u of float32


def logit_tolerance(vit: VisionTransformer) -> float:
    """The largest max |difference| in logits accepted between two fp32 implementations of ``vit``,
    relative to the logits' scale (at least 1).

    A dot product of length ``n`` summed in another order differs by at most ``n u`` of the sum of its
    terms' magnitudes (``u = 2^-24``, fp32's unit roundoff). The classifier chains ``2 depth + 2`` such
    products (the patch embedding, the attention and MLP branches of every block, the head), none longer
    than ``n = max(MLP width, C p^2, embed_dim)``: ``(2 depth + 2) n u``. A worst-case budget (rounding
    errors of opposite signs cancel in practice); layer norms rescale the error with the values.
    """
    c, (ph, pw) = vit.in_chans, vit.patch_embed.proj.kernel_size
    n = max(hf_names.mlp_dim(vit), c * ph * pw, vit.embed_dim)
    return (2 * vit.depth + 2) * n * FP32_ROUNDOFF


def _classifier_vit(saved: SavedClassifier, fmt: str) -> VisionTransformer:
    """The classifier's ViT, or a one-line ValueError naming the formats that take this classifier."""
    vit = saved.classifier.encoder
    if not isinstance(vit, VisionTransformer):
        raise ValueError(
            f"format {fmt!r} takes ViT classifiers; this run's is a {type(vit).__name__}: export it with "
            "--format onnx"
        )
    if fmt == "transformers":
        mean_pooled = vit.global_pool == "avg" and not isinstance(vit.fc_norm, nn.Identity)
        if not mean_pooled or vit.img_size[0] != vit.img_size[1]:
            what = "square images" if mean_pooled else "mean pooling through fc_norm"
            raise ValueError(
                f"format 'transformers' (BeitForImageClassification) holds classifiers with {what}; this "
                f"one is {vit.global_pool}-pooled at {vit.img_size[0]}x{vit.img_size[1]}: export it with "
                "--format timm onnx"
            )
    return vit


@torch.no_grad()
def export_classifier_transformers(saved: SavedClassifier, out: Path) -> float:
    """``out`` (``BeitForImageClassification`` + image processor), loaded back with
    ``AutoModelForImageClassification``; returns the max |difference| of its logits from mimkit's."""
    _require("transformers", "transformers")
    from transformers import AutoModelForImageClassification, BeitConfig, BeitForImageClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    vit, classes = _classifier_vit(saved, "transformers"), saved.classes
    args = {k: v for k, v in hf_names.hf_config_args(vit).items() if k != "qkv_bias"}  # BEiT: q, v biases
    config = BeitConfig(
        **args, use_absolute_position_embeddings=True, use_relative_position_bias=False,
        use_shared_relative_position_bias=False, layer_scale_init_value=0.0, use_mean_pooling=True,
        use_mask_token=False, drop_path_rate=0.0,
        id2label=dict(enumerate(classes)), label2id={name: i for i, name in enumerate(classes)},
    )  # fmt: skip
    model = BeitForImageClassification(config)
    model.load_state_dict(hf_names.beit_classifier_to_hf(vit, set(model.state_dict())), strict=True)
    model.save_pretrained(out)
    _image_processor(out, vit, saved.record, _RESCALE[saved.record["dtype"]])
    loaded = AutoModelForImageClassification.from_pretrained(out).eval()
    x = _probe(vit)
    theirs = loaded(pixel_values=x).logits
    name = f"transformers {type(loaded).__name__} logits"
    return _compare(name, saved.classifier(x), theirs, logit_tolerance(vit))


@torch.no_grad()
def export_classifier_timm(saved: SavedClassifier, out: Path) -> float | str:
    """``out/timm``: ``model.safetensors`` (timm's names) and ``config.json`` with the head and the class
    names; loaded back with timm where it is installed. Returns the max |difference| of the logits, or
    why they were not compared."""
    vit = _classifier_vit(saved, "timm")
    folder = out / "timm"
    export_encoder_safetensors(vit, folder / "model.safetensors")
    config = timm_config(vit, saved.record, saved.classes)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    try:
        import timm
    except ImportError:
        return "not checked: timm is not installed here"
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = _probe(vit)
    return _compare("timm logits", saved.classifier(x), loaded(x), logit_tolerance(vit))


def export_classifier_onnx(saved: SavedClassifier, out: Path) -> float:
    """``out/onnx/classifier.onnx`` (normalised images -> ``logits``), run back with onnxruntime."""
    encoder = saved.classifier.encoder
    tolerance = logit_tolerance(encoder) if isinstance(encoder, VisionTransformer) else 1e-4
    return write_onnx(saved.classifier, encoder, out / "onnx" / "classifier.onnx", "logits", tolerance)


_LOADING = {
    "transformers": """```python
from transformers import pipeline  # or AutoModelForImageClassification / AutoImageProcessor
classify = pipeline("image-classification", model="transformers")
classify("image.png")  # [{"label": ..., "score": ...}, ...], the 5 most probable
```
""",
    "timm": """```python
import timm
model = timm.create_model("local-dir:timm", pretrained=True).eval()
model.pretrained_cfg["label_names"], model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
```
""",
    "onnx": """```python
import onnxruntime
session = onnxruntime.InferenceSession("onnx/classifier.onnx")
(logits,) = session.run(None, {"images": normalised_batch})  # float32 [N, C, H, W] -> [N, classes]
```
""",
}


def _short(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def classifier_card(saved: SavedClassifier, formats: list[str], checks: dict[str, Any], arch: str) -> str:
    """``README.md`` of a classifier export: classes, input, held-out scores, checks, how to load it."""
    r, scores = saved.record, saved.record.get("scores") or {}
    classes, enc = saved.classes, r["encoder"]
    init = (saved.config.get("encoder") or {}).get("init", "?")
    start = saved.config.get("checkpoint")
    held = scores.get("test_images")
    chance = 100 / len(classes)
    verdict = " **at chance: the training loss ended at ln(classes)**" if at_chance(scores) else ""
    loss, at = scores.get("final_train_loss"), scores.get("chance_loss")
    ended = f"{loss:.4f} (ln {len(classes)} = {at:.4f}: chance)" if loss is not None and at else "not logged"
    h, w = r["img_size"]
    decoded = f", bands {r['bands']}" if r["bands"] else ""
    decoded += f", DICOM window {r['window']}" if r["window"] else ""
    lines = [
        "---", "library_name: mimkit", "pipeline_tag: image-classification",
        "tags: [image-classification, vision-transformer, mimkit]", "---", "",
        f"# {enc['name']} fine-tuned on {len(classes)} classes", "",
        f"Fine-tuned with mimkit ({arch}; start: {init}{f' from `{start}`' if start else ''}); "
        f"mean of the patch tokens -> fc_norm -> head.", "",
        "## Classes", "", ", ".join(f"{i}: `{name}`" for i, name in enumerate(classes)), "",
        "## Held-out scores", "",
        f"- top-1 {scores.get('test_top1', float('nan')):.2f}% on {held} held-out images (chance: "
        f"{chance:.2f}%){verdict}",
        f"- {scores.get('steps')} steps on {scores.get('train_images')} training images; final training loss "
        f"{ended}",
        "", "## Input", "",
        f"- {r['channels']} channel(s) of {r['dtype']} values at {h}x{w}; files are decoded at "
        f"{r['stored_size'][0]}x{r['stored_size'][1]} ({r['resize_mode']}){decoded}",
        *([f"- clipped to {r['clip']} (stored units) before normalising"] if r["clip"] else []),
        f"- normalisation per channel on [0, 1] values (8-bit / 255, 16-bit / 65535): mean "
        f"{_short(r['mean'])}, std {_short(r['std'])}",
        "", "## Network", "", "```json", json.dumps(enc), "```", "",
        "## Formats, checked on export", "",
        *(f"- {name}: " + (f"max |logit difference| from mimkit {v:.2e}" if isinstance(v, float) else str(v))
          for name, v in checks.items()),
        "",
    ]  # fmt: skip
    if "transformers" in formats:
        lines += [
            "transformers holds this classifier as a `BeitForImageClassification` (mean pooling, absolute "
            "position embeddings, no layer scale, no relative position bias): `ViTForImageClassification` "
            "classifies the class token and cannot compute the mean of the patch tokens. BEiT has no key "
            "bias in its attention; mimkit's adds the same value to every score of a query and cancels in "
            "the softmax.",
            "",
        ]
    lines += ["## Loading", "", *[_LOADING[fmt] for fmt in FORMATS if fmt in formats]]
    return "\n".join(lines) + "\n"


def export_classifier_run(run: str, out: str, formats: list[str], force: bool = False) -> dict[str, Any]:
    """Write a fine-tuning run's classifier in ``formats`` under ``out`` with a model card; returns what was
    checked (``{format: max |logit difference|, or why not checked}``).

    Raises:
        ValueError: an unknown format, a format that cannot hold this classifier (before anything is
            written), an ``out`` that is not empty without ``force``, or no fine-tuning run at ``run``.
    """
    check_formats(formats)
    saved = load_classifier(run)
    for fmt in formats:  # refuse before writing anything
        if fmt != "onnx":
            _classifier_vit(saved, fmt)
    out_dir = prepare_out_dir(out, force)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    for fmt in formats:
        if fmt == "transformers":
            report["transformers"] = export_classifier_transformers(saved, out_dir / "transformers")
        elif fmt == "timm":
            report["timm"] = export_classifier_timm(saved, out_dir)
        else:
            report["onnx"] = export_classifier_onnx(saved, out_dir)
    params = sum(p.numel() for p in saved.classifier.parameters())
    arch = f"{type(saved.classifier.encoder).__name__}, {params:,} parameters"
    (out_dir / "README.md").write_text(classifier_card(saved, formats, report, arch))
    return report
