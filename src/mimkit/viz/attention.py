"""Class-token attention maps of a ViT: where the class token looks in each block, per head.

The blocks attend with a fused kernel (``scaled_dot_product_attention``) that never forms the attention
weights, so they are computed here, beside the model: a forward pre-hook on each probed block's
``attn`` module takes its input (the block's normalised tokens) and forms ``softmax(q_cls k^T / sqrt(d))``
from the module's own ``qkv`` projection, in float32, in a no-grad pass. The model's forward (and its
training path) is untouched.

    maps = attention_maps(encoder, images, block=-1)   # [B, heads, h, w], each over the patch grid
    save_attention_picture(image, maps_per_block, [11], "attention.png", mean, std)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mimkit.data.transforms import denormalize
from mimkit.viz.reconstruction import display_bands, save_figure


def vit_encoder(model: nn.Module) -> nn.Module:
    """The encoder of ``model`` (a method or classifier with ``.encoder``, or an encoder) if it has a class
    token and ViT blocks; else a one-line ValueError saying why there is no class-token map."""
    encoder = getattr(model, "encoder", model)
    name = type(encoder).__name__
    if getattr(encoder, "num_prefix_tokens", 0) < 1:
        raise ValueError(
            f"{name} has no class token (a Swin attends within shifted windows and averages its tokens): "
            "class-token attention maps need a ViT encoder"
        )
    if not isinstance(getattr(encoder, "blocks", None), nn.ModuleList):
        raise ValueError(f"{name} has no list of transformer blocks (.blocks) to read attention from")
    return encoder


def block_indices(model: nn.Module, block: int | str) -> list[int]:
    """``"all"`` -> every block; an index (negative from the end, ``-1``: the last) -> ``[index]``."""
    depth = len(vit_encoder(model).blocks)
    if block == "all":
        return list(range(depth))
    if isinstance(block, bool) or not isinstance(block, int) or not -depth <= block < depth:
        raise ValueError(
            f"block must be 'all' or an index in [{-depth}, {depth - 1}] ({depth} blocks), got {block!r}"
        )
    return [block % depth]


@torch.no_grad()
def class_token_attention(model: nn.Module, images: torch.Tensor, blocks: Sequence[int]) -> torch.Tensor:
    """The class token's attention weights in ``blocks``, from one forward pass.

    Args:
        model: a ViT encoder, or a module with one as ``.encoder`` (see :func:`vit_encoder`).
        images: ``[B, C, H, W]``, normalised as the model's input.
        blocks: block indices (``0 <= i < depth``).

    Returns:
        ``[len(blocks), B, heads, T]`` float32, ``T = 1 + L`` tokens (class token first, then the patches
        row by row); every row sums to 1.
    """
    encoder = vit_encoder(model)
    found: dict[int, torch.Tensor] = {}

    def probe(index: int):
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].float()  # [B, T, D]: the block's normalised tokens
            n, length, _ = x.shape
            qkv = F.linear(
                x, module.qkv.weight.float(), None if module.qkv.bias is None else module.qkv.bias.float()
            )
            qkv = qkv.view(n, length, 3, module.num_heads, module.head_dim)
            q, k = qkv[:, 0, 0], qkv[:, :, 1]  # [B, heads, head_dim] (class token), [B, T, heads, head_dim]
            scores = torch.einsum("bhd,bthd->bht", q, k) * module.scale  # [B, heads, T]
            found[index] = scores.softmax(dim=-1)

        return hook

    handles = [encoder.blocks[i].attn.register_forward_pre_hook(probe(i)) for i in blocks]
    training = encoder.training
    try:
        encoder.eval()
        with torch.autocast(images.device.type, enabled=False):
            encoder.forward_features(images)
    finally:
        encoder.train(training)
        for handle in handles:
            handle.remove()
    return torch.stack([found[i] for i in blocks])


def attention_maps(model: nn.Module, images: torch.Tensor, block: int) -> torch.Tensor:
    """Where the class token of block ``block`` (negative: from the end) looks, per head.

    Args:
        model: a ViT encoder, or a module with one as ``.encoder``.
        images: ``[B, C, H, W]``, normalised as the model's input.
        block: the block's index.

    Returns:
        ``[B, heads, h, w]`` over the patch grid ``(h, w)``: the class token's attention weight on each
        patch (its weight on itself left out, so a map sums to 1 minus that).

    Raises:
        ValueError: a model without a class token (Swin), or a block outside the encoder.
    """
    (index,) = block_indices(model, block)
    return on_patch_grid(model, class_token_attention(model, images, [index])[0])


def on_patch_grid(model: nn.Module, weights: torch.Tensor) -> torch.Tensor:
    """Class-token weights ``[..., 1 + L]`` -> the patches' ``[..., h, w]`` (the weight on itself left
    out)."""
    encoder = vit_encoder(model)
    h, w = encoder.grid_size
    return weights[..., encoder.num_prefix_tokens :].reshape(*weights.shape[:-1], h, w)


def save_attention_picture(
    image: torch.Tensor,
    maps: torch.Tensor,
    blocks: Sequence[int],
    path: str | os.PathLike,
    mean: Sequence[float],
    std: Sequence[float],
    title: str | None = None,
) -> Path:
    """PNG of one image's attention maps: a row per block, columns = the image, the mean over heads, each
    head; each map (upsampled to the image, nearest: one square per patch) over the image in grey.

    Args:
        image: ``[C, H, W]`` normalised with ``mean`` / ``std``.
        maps: ``[len(blocks), heads, h, w]``.
        blocks: the block index of each row.
    """
    from matplotlib.figure import Figure

    picture = denormalize(image.float().cpu(), mean, std)[display_bands(image.shape[0], None)[0]]
    grey = picture.mean(dim=0)  # [H, W] under the maps
    shown = picture.permute(1, 2, 0).squeeze(-1).numpy()
    size = tuple(image.shape[-2:])
    up = F.interpolate(maps.float().cpu(), size=size, mode="nearest")  # [rows, heads, H, W]
    heads = maps.shape[1]
    panels = [("image", None), ("mean of heads", up.mean(dim=1))] + [
        (f"head {h}", up[:, h]) for h in range(heads)
    ]
    fig = Figure(figsize=(1.6 * len(panels), 1.7 * len(blocks) + (0.4 if title else 0)))
    axes = fig.subplots(len(blocks), len(panels), squeeze=False)
    for r, block in enumerate(blocks):
        for c, (name, values) in enumerate(panels):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if values is None:
                ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1)
                ax.set_ylabel(f"block {block}")
            else:
                ax.imshow(grey.numpy(), cmap="gray", vmin=0, vmax=1)
                ax.imshow(values[r].numpy(), cmap="inferno", alpha=0.6)
            if r == 0:
                ax.set_title(name, fontsize=9)
    return save_figure(fig, path, title)
