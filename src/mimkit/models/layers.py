"""Transformer building blocks with timm's state-dict names (``attn.qkv``, ``mlp.fc1``, ...)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mimkit import rng


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: ``[N, C, H, W] -> [N, (H/p)*(W/p), D]``."""

    def __init__(self, img_size: tuple[int, int], patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        h, w = img_size
        if h % patch_size or w % patch_size:
            raise ValueError(
                f"image size {h}x{w} is not divisible by the patch size {patch_size}; "
                f"choose an img_size that is a multiple of {patch_size}"
            )
        self.img_size = (h, w)
        self.patch_size = patch_size
        self.grid_size = (h // patch_size, w // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(
                f"input is {tuple(x.shape[-2:])} but the model was built for {self.img_size}; "
                "resize the images or build the encoder with img_size=(H, W)"
            )
        return self.proj(x).flatten(2).transpose(1, 2)  # [N, L, D]


def use_fused_attention(x: torch.Tensor) -> bool:
    """The ``"auto"`` policy: SDPA everywhere except bf16 training on the CPU.

    Measured on 2 CPU cores (torch 2.13, MAE step of ViT-Tiny on 28x28, batch 256): under bf16 autocast
    the CPU flash kernel's backward took 45% of the step and the plain path ran 1.45x faster
    (282 vs 193 img/s); in fp32 and in inference SDPA is the faster one. On CUDA SDPA is always used.
    """
    return not (x.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu"))


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection (q, k, v in that order).

    ``fused=True`` uses :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient
    kernels where available); ``fused=False`` is the plain softmax(q k^T / sqrt(d)) v, kept as the
    reference the tests compare against; ``fused="auto"`` (default) picks per call with
    :func:`use_fused_attention`.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, fused: bool | str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused = fused
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def attention_path(self, device_type: str, precision: str) -> str:
        """What a training step runs on a device in a precision, in words (the trainer logs it for every
        module that says); ``fused="auto"``: what :func:`use_fused_attention` picks."""
        if self.fused == "auto" and device_type == "cpu" and precision in ("bf16", "fp16"):
            return (
                "plain softmax(q k^T) v (on the CPU under autocast it trains faster than SDPA's fused kernel)"
            )
        return "fused scaled_dot_product_attention" if self.fused else "plain softmax(q k^T) v"

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).view(n, length, 3, self.num_heads, self.head_dim)
        fused = use_fused_attention(x) if self.fused == "auto" else self.fused
        if fused:
            # Strided views are fine for SDPA; unbinding the "3" axis in place (not after a permute)
            # lets the backward write the qkv gradient in one pass.
            q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # [N, heads, L, head_dim] each
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:
            # One copy to [3, N, heads, L, head_dim] so that every product below reads contiguous memory
            # (cheaper on CPU than letting each matmul copy its own strided operand).
            q, k, v = qkv.permute(2, 0, 3, 1, 4).contiguous().unbind(0)  # [N, heads, L, head_dim] each
            # The scale goes on the smaller of q [N, heads, L, head_dim] and the scores [N, heads, L, L].
            if length < self.head_dim:
                attn = (q @ k.transpose(-2, -1)) * self.scale  # [N, heads, L, L]
            else:
                attn = (q * self.scale) @ k.transpose(-2, -1)
            if attn_mask is not None:
                if attn_mask.dtype == torch.bool:
                    attn = attn.masked_fill(~attn_mask, float("-inf"))
                else:
                    attn = attn + attn_mask
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(n, length, dim))


class Mlp(nn.Module):
    """``fc1 -> GELU -> fc2``."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        # per sample, keyed in training (mimkit.rng): a sample keeps its branch on any number of processes
        mask = (rng.rand(x.shape[0], device=x.device) < keep).to(x.dtype)
        return x * mask.view((x.shape[0],) + (1,) * (x.ndim - 1)) / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    fsdp_unit = True  # sharded on its own under train.strategy=fsdp (mimkit.engine.fsdp)

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        fused_attn: bool | str = "auto",
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, fused=fused_attn)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_weights_mae(module: nn.Module) -> None:
    """MAE's init: xavier-uniform Linear weights with zero bias, LayerNorm (1, 0)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
