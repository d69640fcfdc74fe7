"""Class-token attention maps for the explorer, behind the signature the ``mimkit attention`` work gives
them (``attention_maps(model, images, block) -> [B, heads, h, w]``): when that lands below the CLI, this
file is replaced by an import of it.

The blocks attend with a fused kernel that never forms the weights, so they are formed here from the
probed block's own ``qkv`` projection of its input, caught by a forward pre-hook; the model is untouched.
"""

from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def attention_maps(model: nn.Module, images: torch.Tensor, block: int) -> torch.Tensor:
    """Where the class token of block ``block`` (negative: from the end) looks, per head.

    Args:
        model: a ViT encoder, or a module holding one as ``.encoder`` (a method, a classifier).
        images: ``[B, C, H, W]`` normalised as the model's input.
        block: index of the block.

    Returns:
        ``[B, heads, h, w]`` float32 on the patch grid: the class token's softmax weight on each patch (its
        weight on the prefix tokens left out).

    Raises:
        ValueError: an encoder without a class token or blocks (Swin), a block outside the encoder.
    """
    encoder = getattr(model, "encoder", model)
    prefix = getattr(encoder, "num_prefix_tokens", 0)
    blocks = getattr(encoder, "blocks", None)
    if prefix < 1 or not isinstance(blocks, nn.ModuleList):
        raise ValueError(
            f"{type(encoder).__name__} has no class token attending over its patches (a ViT has one; a Swin "
            "attends within windows)"
        )
    if isinstance(block, bool) or not isinstance(block, int) or not -len(blocks) <= block < len(blocks):
        raise ValueError(f"block must be in [{-len(blocks)}, {len(blocks) - 1}], got {block!r}")
    attn = blocks[block].attn
    seen: list[torch.Tensor] = []
    handle = attn.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    training = encoder.training
    try:
        encoder.eval()
        encoder.forward_features(images)
    finally:
        handle.remove()
        encoder.train(training)
    x = seen[0].float()  # [B, T, D]: the block's normalised tokens
    b, t, _ = x.shape
    weight, bias = attn.qkv.weight.float(), None if attn.qkv.bias is None else attn.qkv.bias.float()
    qkv = nn.functional.linear(x, weight, bias).view(b, t, 3, attn.num_heads, attn.head_dim)
    query, keys = qkv[:, 0, 0], qkv[:, :, 1]  # [B, heads, d] of the class token, [B, T, heads, d]
    weights = (torch.einsum("bhd,bthd->bht", query, keys) * attn.scale).softmax(dim=-1)  # [B, heads, T]
    h, w = encoder.grid_size
    return weights[..., prefix:].reshape(b, attn.num_heads, h, w)
