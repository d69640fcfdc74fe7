"""transformers' ViT / ViTMAE state-dict and config names against mimkit's (timm's are mimkit's), and the
mimkit encoder a transformers or timm ``config.json`` describes. Written by hand (the fused ``qkv`` split
into query / key / value): the product's contract with those libraries, at the models' layer so that
loading (:mod:`mimkit.weights`) and exporting (:mod:`mimkit.interop`) both read it from below.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mimkit.models.vit import VisionTransformer


def mlp_dim(vit: VisionTransformer) -> int:
    """Hidden width of the ViT's MLPs (``mlp_ratio * embed_dim`` when built from a ratio)."""
    return vit.blocks[0].mlp.fc1.out_features if len(vit.blocks) else 4 * vit.embed_dim


def _hf_block(keys: set[str], prefix: str, i: int) -> dict[str, str]:
    """mimkit block-parameter suffix -> transformers name(s), for either naming of transformers (5.x
    ``layers.i.attention.q_proj``, 4.x ``encoder.layer.i.attention.attention.query``); ``qkv`` maps to the
    three names it is split into, joined by commas."""
    places = (f"{prefix}layers.{i}.", f"{prefix}encoder.layer.{i}.", f"{prefix}layer.{i}.")
    p = next((c for c in places if f"{c}layernorm_before.weight" in keys), None)
    if p is None:
        raise ValueError(f"no transformers block {i} under {prefix!r}: not a ViT / ViTMAE state dict")
    if f"{p}attention.q_proj.weight" in keys:
        names = {"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj",
                 "proj": "attention.o_proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}  # fmt: skip
    else:
        names = {"q": "attention.attention.query", "k": "attention.attention.key",
                 "v": "attention.attention.value", "proj": "attention.output.dense",
                 "fc1": "intermediate.dense", "fc2": "output.dense"}  # fmt: skip
    out = {f"norm1.{w}": f"{p}layernorm_before.{w}" for w in ("weight", "bias")}
    out |= {f"norm2.{w}": f"{p}layernorm_after.{w}" for w in ("weight", "bias")}
    for ours, theirs in (("attn.proj", names["proj"]), ("mlp.fc1", names["fc1"]), ("mlp.fc2", names["fc2"])):
        out |= {f"{ours}.{w}": f"{p}{theirs}.{w}" for w in ("weight", "bias")}
    for w in ("weight", "bias"):
        out[f"attn.qkv.{w}"] = ",".join(f"{p}{names[x]}.{w}" for x in "qkv")
    return out


def _blocks_to_hf(
    ours: dict[str, torch.Tensor], ours_prefix: str, depth: int, keys: set[str], prefix: str
) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(depth):
        for suffix, theirs in _hf_block(keys, prefix, i).items():
            value = ours[f"{ours_prefix}{i}.{suffix}"]
            names = theirs.split(",")
            for name, part in zip(names, value.chunk(len(names)), strict=True):
                out[name] = part.clone()
    return out


def _blocks_from_hf(
    theirs: dict[str, torch.Tensor], depth: int, prefix: str, ours_prefix: str
) -> dict[str, torch.Tensor]:
    keys = set(theirs)
    out = {}
    for i in range(depth):
        for suffix, names in _hf_block(keys, prefix, i).items():
            out[f"{ours_prefix}{i}.{suffix}"] = torch.cat([theirs[n] for n in names.split(",")])
    return out


# mimkit name -> transformers name, outside the blocks (the blocks: _hf_block)
_VIT_NAMES = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_DECODER_NAMES = {
    "mask_token": "decoder.mask_token",
    "pos_embed": "decoder.decoder_pos_embed",
    **{
        f"{ours}.{w}": f"decoder.decoder_{ours}.{w}"
        for ours in ("embed", "norm", "pred")
        for w in ("weight", "bias")
    },
}


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def vit_to_hf(encoder: VisionTransformer, keys: set[str], prefix: str = "") -> dict[str, torch.Tensor]:
    """A mimkit ViT's weights under transformers' ``ViTModel`` names (``keys``: that model's own)."""
    s = _state(encoder)
    out = {f"{prefix}{theirs}": s[ours] for ours, theirs in _VIT_NAMES.items()}
    return out | _blocks_to_hf(s, "blocks.", encoder.depth, keys, prefix)


# the attention's key bias under either naming of transformers (BEiT has none)
_KEY_BIAS = ("attention.k_proj.bias", "attention.attention.key.bias")


def beit_classifier_to_hf(classifier: VisionTransformer, keys: set[str]) -> dict[str, torch.Tensor]:
    """A mimkit ViT classifier (mean of the patch tokens -> ``fc_norm`` -> ``head``, no final per-token
    norm) under transformers' ``BeitForImageClassification`` names (``keys``: that model's own), for a BEiT
    with absolute position embeddings, mean pooling and neither layer scale nor relative position bias.

    BEiT's attention has no key bias: it is left out, exactly, since it adds ``q . b_k`` to every score of a
    query's row and the softmax over that row cancels a constant.

    Raises:
        ValueError: ``keys`` need a weight the classifier lacks, or lack one other than the key biases.
    """
    s = _state(classifier)
    out = {f"beit.{theirs}": s[ours] for ours, theirs in _VIT_NAMES.items() if not ours.startswith("norm.")}
    for w in ("weight", "bias"):
        out[f"beit.pooler.layernorm.{w}"] = s[f"fc_norm.{w}"]
        out[f"classifier.{w}"] = s[f"head.{w}"]
    out |= _blocks_to_hf(s, "blocks.", classifier.depth, keys, "beit.")
    extra = sorted(k for k in out if k not in keys and not k.endswith(_KEY_BIAS))
    missing = sorted(k for k in keys if k not in out)
    if extra or missing:
        raise ValueError(f"not a mean-pooled BEiT classifier: missing {missing[:4]}, unexpected {extra[:4]}")
    return {k: v for k, v in out.items() if k in keys}


def vit_from_hf(state: dict[str, torch.Tensor], depth: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """transformers ``ViTModel`` / ``ViTMAEModel`` weights (under ``prefix``) as a mimkit ViT state dict."""
    out = {ours: state[f"{prefix}{theirs}"] for ours, theirs in _VIT_NAMES.items()}
    return out | _blocks_from_hf(state, depth, prefix, "blocks.")


def _decoder_blocks_as_layers(key: str) -> str:
    """transformers' decoder blocks, ``decoder.decoder_layers.i`` in memory and
    ``decoder.decoder_encoder.layer.i`` in saved files, as ``decoder.layers.i``."""
    for name in ("decoder.decoder_layers.", "decoder.decoder_encoder.layer."):
        if key.startswith(name):
            return "decoder.layers." + key[len(name) :]
    return key


def mae_decoder_to_hf(decoder: nn.Module, keys: set[str]) -> dict[str, torch.Tensor]:
    """A mimkit MAE decoder's weights under ``ViTMAEForPreTraining``'s names (``keys``: that model's own)."""
    s = _state(decoder)
    out = {theirs: s[ours] for ours, theirs in _DECODER_NAMES.items()}
    hf = {_decoder_blocks_as_layers(k): k for k in keys}
    blocks = _blocks_to_hf(s, "blocks.", len(decoder.blocks), set(hf), "decoder.")
    return out | {hf[k]: v for k, v in blocks.items()}


def mae_decoder_from_hf(state: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """transformers ``ViTMAEForPreTraining`` decoder weights as a mimkit MAE decoder state dict."""
    s = {_decoder_blocks_as_layers(k): v for k, v in state.items()}
    out = {ours: s[theirs] for ours, theirs in _DECODER_NAMES.items()}
    return out | _blocks_from_hf(s, depth, "decoder.", "blocks.")


def hf_config_args(vit: VisionTransformer) -> dict[str, Any]:
    """transformers ``ViTConfig`` / ``ViTMAEConfig`` arguments of a mimkit ViT's architecture."""
    return {
        "image_size": list(vit.img_size) if vit.img_size[0] != vit.img_size[1] else vit.img_size[0],
        "patch_size": vit.patch_size,
        "num_channels": vit.in_chans,
        "hidden_size": vit.embed_dim,
        "num_hidden_layers": vit.depth,
        "num_attention_heads": vit.num_heads,
        "intermediate_size": mlp_dim(vit),
        "qkv_bias": True,
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }


def encoder_config(directory: str | Path) -> dict[str, Any]:
    """The mimkit encoder (name and overrides) of a transformers ViT / ViTMAE or timm directory's
    ``config.json``; the input size and channels are left to the caller (the data's)."""
    config = json.loads((Path(directory) / "config.json").read_text())
    if config.get("model_type") in ("vit", "vit_mae"):
        return {
            "name": "vit_base_patch16", "patch_size": config["patch_size"],
            "embed_dim": config["hidden_size"], "depth": config["num_hidden_layers"],
            "num_heads": config["num_attention_heads"],
            "mlp_ratio": config["intermediate_size"] / config["hidden_size"],
        }  # fmt: skip
    args = config.get("model_args")
    if isinstance(args, dict) and str(config.get("architecture", "")).startswith("vit_"):
        keys = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
        return {"name": "vit_base_patch16", **{k: args[k] for k in keys if k in args}}
    raise ValueError(
        f"{directory} describes no ViT that mimkit can build (transformers vit / vit_mae, timm vit_*); "
        "give --encoder NAME"
    )
