"""Loading and exporting weights: mimkit checkpoints, reference MAE and SimMIM files, timm-style files.

Files are read with ``torch.load(weights_only=True)``: a checkpoint cannot run code. Loading is strict:
every missing, unexpected or mis-shaped key is named in one ``ValueError``. Position embeddings whose
patch grid differs from the target's are resampled bicubically, and so are Swin relative-position bias
tables whose window differs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mimkit.engine.checkpoint import load_checkpoint
from mimkit.models.hf_names import mae_decoder_from_hf, vit_from_hf
from mimkit.models.pos_embed import resample_pos_embed

log = logging.getLogger("mimkit")

# Reference MAE ('visualize' files) -> mimkit MAE names. Anything else in such a file is the encoder's.
_REFERENCE_DECODER_PREFIXES = {
    "decoder_embed.": "decoder.embed.",
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.pos_embed",
    "decoder_blocks.": "decoder.blocks.",
    "decoder_norm.": "decoder.norm.",
    "decoder_pred.": "decoder.pred.",
}


def is_model_dir(path: str | os.PathLike) -> bool:
    """A transformers (ViT / ViTMAE) or timm directory: ``config.json`` next to ``model.safetensors``."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def _read_model_dir(path: Path) -> dict[str, Any]:
    """A transformers ``ViTModel`` / ``ViTMAEForPreTraining`` directory in mimkit's names (an MAE's
    ``encoder.*`` and ``decoder.*`` for ViTMAE), or a timm directory (its names are mimkit's)."""
    from safetensors.torch import load_file

    try:
        config = json.loads((path / "config.json").read_text())
    except ValueError as err:
        raise ValueError(f"{path / 'config.json'} is not JSON ({err})") from None
    state = load_file(str(path / "model.safetensors"))
    kind = config.get("model_type")
    try:
        if kind == "vit":
            prefix = "vit." if any(k.startswith("vit.") for k in state) else ""
            return {
                "model": vit_from_hf(state, config["num_hidden_layers"], prefix),
                "source": "transformers",
            }
        if kind == "vit_mae":
            encoder = vit_from_hf(state, config["num_hidden_layers"], "vit.")
            model = {f"encoder.{k}": v for k, v in encoder.items()}
            if any(k.startswith("decoder.") for k in state):
                decoder = mae_decoder_from_hf(state, config["decoder_num_hidden_layers"])
                model |= {f"decoder.{k}": v for k, v in decoder.items()}
            return {"model": model, "source": "transformers"}
    except KeyError as err:
        raise ValueError(f"{path} is a transformers {kind} directory without the weight {err}") from None
    if "architecture" in config:  # timm
        return {"model": state, "source": "timm"}
    raise ValueError(
        f"{path} holds a {kind or 'non-transformers'} model; mimkit reads transformers ViT / ViTMAE and timm "
        "ViT directories"
    )


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``.pt``/``.pth`` (weights only) or ``.safetensors`` file into a dict; a transformers ViT /
    ViTMAE or timm directory (:func:`is_model_dir`) in mimkit's names."""
    path = Path(path)
    if is_model_dir(path):
        return _read_model_dir(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return {"model": load_file(str(path))}
    ckpt = load_checkpoint(path)  # one-line ValueError for unreadable or hostile files
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(ckpt).__name__}, not a dict of weights")
    return ckpt


def extract_state_dict(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: under ``model``, ``state_dict``, or the dict itself."""
    for key in ("model", "state_dict", "model_state"):
        if isinstance(ckpt.get(key), dict):
            state = ckpt[key]
            break
    else:
        state = ckpt
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError("the checkpoint holds no model weights (no 'model' or 'state_dict' of tensors)")
    if all(k.startswith("module.") for k in tensors):  # saved from a DDP-wrapped model
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


# Buffers that reference Swin checkpoints (SimMIM's, timm < 0.9) save but that follow from the
# architecture: mimkit recomputes them and does not save them.
_DERIVED_BUFFERS = ("relative_position_index", "relative_coords_table", "attn_mask")


_STAGE_DOWNSAMPLE = re.compile(r"^((?:encoder\.)?layers\.)(\d+)(\.downsample\..*)$")


def _swin_downsample_at_stage_ends(state: dict[str, torch.Tensor], target_keys) -> dict[str, torch.Tensor]:
    """timm >= 0.9 keeps a Swin stage's patch merging at the start of the *next* stage
    (``layers.{i+1}.downsample``); the reference Swin, SimMIM and mimkit keep it at the end of stage ``i``
    (``layers.{i}.downsample``). Files of the newer layout are moved to the reference one (and timm's
    ``head.fc`` to ``head``); others are returned as they are."""
    in_file = {m.group(2) for k in state if (m := _STAGE_DOWNSAMPLE.match(k))}
    in_target = {m.group(2) for k in target_keys if (m := _STAGE_DOWNSAMPLE.match(k))}
    if not in_file or "0" in in_file or "0" not in in_target:
        return state
    out = {}
    for key, value in state.items():
        m = _STAGE_DOWNSAMPLE.match(key)
        if m:
            key = f"{m.group(1)}{int(m.group(2)) - 1}{m.group(3)}"
        elif key.startswith("head.fc."):
            key = "head." + key[len("head.fc.") :]
        out[key] = value
    return out


def _is_reference_decoder_key(key: str) -> bool:
    return any(key.startswith(prefix) for prefix in _REFERENCE_DECODER_PREFIXES)


def _to_target_names(state: dict[str, torch.Tensor], target: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a file's keys to the target module's naming scheme."""
    target_keys = target.state_dict().keys()
    state = {
        k: v for k, v in state.items() if k in target_keys or k.rsplit(".", 1)[-1] not in _DERIVED_BUFFERS
    }
    state = _swin_downsample_at_stage_ends(state, target_keys)
    wants_method = any(k.startswith("encoder.") for k in target_keys)
    has_method = any(k.startswith("encoder.") for k in state)
    if "encoder.mask_token" in state and "encoder.mask_token" not in target_keys:
        # SimMIM's reference keeps the mask token in the encoder; mimkit's SimMIM holds it (the encoder
        # alone has no use for it).
        token = state.pop("encoder.mask_token")
        if "mask_token" in target_keys:
            state["mask_token"] = token
    if wants_method and not has_method:  # reference MAE file into a mimkit method
        renamed = {}
        for key, value in state.items():
            for old, new in _REFERENCE_DECODER_PREFIXES.items():
                if key.startswith(old):
                    renamed[new + key[len(old) :]] = value
                    break
            else:
                renamed["encoder." + key] = value
        return renamed
    if not wants_method and has_method:  # a method checkpoint into its encoder: take the encoder part
        return {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    if not wants_method:  # an encoder file (maybe a 'visualize' one) into an encoder
        state = {k: v for k, v in state.items() if not _is_reference_decoder_key(k)}
        if isinstance(getattr(target, "head", None), nn.Identity):  # no classifier: ignore the file's
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
    return state


def _is_patch_embed(key: str) -> bool:
    return key.endswith("patch_embed.proj.weight")


def _grid_of(module: nn.Module, key: str) -> tuple[int, int] | None:
    owner = module
    for part in key.split(".")[:-1]:
        owner = getattr(owner, part, None)
    return getattr(owner, "grid_size", None)


def adapt_patch_embed(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A patch-embedding weight ``[D, C, p, p]`` for ``channels`` input bands instead of C.

    When ``channels`` is a multiple of C the bands repeat the weight's channels in turn, rescaled by
    ``C / channels`` (timm's repeat-and-rescale rule for ``in_chans``; RGB -> 6 bands: R G B R G B); otherwise
    every new band gets the sum over the old channels divided by ``channels`` (RGB -> 1 band: the sum,
    as timm does for grey). Either way the defining property holds: an image whose bands are all equal
    to one grey image gives the same embedding as that grey image repeated over the C old channels.
    """
    old = weight.shape[1]
    if channels == old:
        return weight
    if channels % old == 0:
        return weight.repeat(1, channels // old, 1, 1) * (old / channels)
    return weight.sum(dim=1, keepdim=True).repeat(1, channels, 1, 1) / channels


def load_weights(
    module: nn.Module,
    path: str | os.PathLike | dict[str, Any],
    strict: bool = True,
    adapt_channels: bool = False,
) -> dict[str, Any]:
    """Load a checkpoint into an encoder or a method, strictly.

    Accepts mimkit checkpoints (a method's or an encoder's), reference MAE files ``{'model': ...}``
    (encoder-only ones into an encoder, 'visualize' ones with the decoder into an MAE), reference SimMIM
    Swin files (``encoder.*``, ``encoder.mask_token``, ``decoder.0.*``: into a SimMIM, or their encoder
    into a Swin), timm-style ViT / Swin state dicts (timm >= 0.9's Swin layout too) and ``.safetensors``
    exports. Position embeddings are resampled (bicubic) to the target's patch grid, Swin bias tables to
    the target's window; the index
    and attention-mask buffers that reference Swin files carry are recomputed, not read.

    Args:
        module: the encoder or method to fill.
        path: a checkpoint file, or a checkpoint dict already read with :func:`read_checkpoint`.
        strict: every key of the module must be in the file and vice versa.
        adapt_channels: a patch embedding trained on another channel count is adapted
            (:func:`adapt_patch_embed`) instead of refused; one log line says so.

    Returns:
        The checkpoint dict (for its other entries, such as the training config).

    Raises:
        ValueError: naming every missing, unexpected and mis-shaped key.
    """
    ckpt = path if isinstance(path, dict) else read_checkpoint(path)
    if isinstance(path, dict):
        path = "checkpoint"
    state = _to_target_names(extract_state_dict(ckpt), module)
    expected = module.state_dict()
    old_grid = ckpt.get("grid_size") if isinstance(ckpt.get("grid_size"), (list, tuple)) else None
    problems = []
    for key, value in list(state.items()):
        if key not in expected or expected[key].shape == value.shape:
            continue
        if adapt_channels and _is_patch_embed(key) and value.ndim == 4 and expected[key].ndim == 4:
            if value.shape[0] == expected[key].shape[0] and value.shape[2:] == expected[key].shape[2:]:
                state[key] = adapt_patch_embed(value, expected[key].shape[1])
                log.info("%s: patch embedding adapted from %d to %d input channels", key, value.shape[1],
                         expected[key].shape[1])  # fmt: skip
                continue
        if key.endswith("relative_position_bias_table") and value.ndim == 2:
            resized = _resample_bias_table(value, expected[key].shape)
            if resized is not None:
                state[key] = resized
                continue
        target_grid = _grid_of(module, key)
        if key.endswith("pos_embed") and value.ndim == 3 and target_grid is not None:
            n_new = expected[key].shape[1]
            prefix = n_new - target_grid[0] * target_grid[1]
            try:
                state[key] = resample_pos_embed(value, target_grid, old_grid, num_prefix_tokens=prefix)
                if state[key].shape == expected[key].shape:
                    continue
            except ValueError:
                pass
        problems.append(f"{key}: file {tuple(value.shape)} vs model {tuple(expected[key].shape)}")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if problems or (strict and (missing or unexpected)):
        lines = [f"{path}: the checkpoint does not fit this {type(module).__name__}"]
        if problems:
            lines.append("shape mismatches: " + "; ".join(problems))
        if strict and missing:
            lines.append(f"missing keys ({len(missing)}): " + ", ".join(_abbrev(missing)))
        if strict and unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(_abbrev(unexpected)))
        raise ValueError("\n  ".join(lines))
    module.load_state_dict(state, strict=strict)
    return ckpt


def _resample_bias_table(table: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """A Swin relative-position bias table ``[(2w - 1)^2, heads]`` resampled (bicubic) to another window.

    As SimMIM does when fine-tuning with a larger window than pretraining (192 px window 6 -> 224 px
    window 7). Returns None when the two tables are not both square grids with the same heads.
    """
    (n_old, heads), (n_new, heads_new) = table.shape, shape
    side_old, side_new = math.isqrt(n_old), math.isqrt(n_new)
    if heads != heads_new or side_old**2 != n_old or side_new**2 != n_new:
        return None
    grid = table.float().T.reshape(1, heads, side_old, side_old)
    grid = F.interpolate(grid, size=(side_new, side_new), mode="bicubic", align_corners=False)
    return grid.reshape(heads, n_new).T.contiguous().to(table.dtype)


def _abbrev(keys: list[str], limit: int = 12) -> list[str]:
    return keys if len(keys) <= limit else keys[:limit] + [f"... {len(keys) - limit} more"]


def export_encoder_safetensors(
    module: nn.Module, path: str | os.PathLike, config: dict | None = None
) -> Path:
    """Write the encoder's weights (standard ViT names) as ``.safetensors``.

    ``module`` may be a method (its ``.encoder`` is exported) or an encoder.
    """
    from safetensors.torch import save_file

    encoder = getattr(module, "encoder", module)
    state = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    metadata = {"format": "pt", "producer": "mimkit"}
    if config is not None:
        metadata["mimkit_config"] = json.dumps(config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return path
