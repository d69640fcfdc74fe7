"""Swin Transformer encoder (Liu et al., 2021, "Swin Transformer: Hierarchical Vision Transformer using
Shifted Windows"), written for mimkit; the masked-encoder interface is SimMIM's (Xie et al., 2021).

Structure: a patch embedding (``Conv2d`` with stride ``patch_size``, then ``LayerNorm``), stages of blocks
that attend within non-overlapping ``window x window`` windows (with a learned relative position bias),
every second block shifting the windows by ``window // 2`` (cyclic roll plus an attention mask that keeps
apart tokens the roll brought together), and a patch merging between stages (2x2 neighbours concatenated,
``LayerNorm``, ``Linear(4C, 2C)``) that halves the resolution and doubles the width.

State-dict names follow the original Swin / SimMIM releases (and timm before 0.9): ``patch_embed.proj``,
``patch_embed.norm``, ``layers.{i}.blocks.{j}.{norm1, attn.qkv, attn.proj,
attn.relative_position_bias_table, norm2, mlp.fc1, mlp.fc2}``, ``layers.{i}.downsample.{norm, reduction}``
(the merging at the *end* of stage ``i``; timm >= 0.9 moved it to the start of stage ``i + 1``), ``norm``,
``head``. The derived ``relative_position_index`` and ``attn_mask`` are non-persistent buffers: drop them
from original checkpoint files before a strict load.

Deliberate choices:

- Per-axis windows: where a stage's feature map is no larger than the window along an axis, the window
  shrinks to the map and that axis is not shifted (the original rule, applied per axis as timm does for
  non-square inputs). Swin-B at 192 px with window 6 therefore has a 6x6 unshifted last stage.
- Padding: a feature map the window does not divide is zero-padded at the bottom/right before the roll and
  cropped after the attention. Padded positions form their own region in the attention mask, so real
  tokens never attend to padding (the detection code of the original lets them; masking makes the output
  independent of the amount of padding).
- Patch merging needs even maps: ``img_size`` must be a multiple of ``patch_size * 2 ** (stages - 1)``
  (the encoder's ``out_stride``), which also makes SimMIM's pixel-shuffle head return the input's size.

Small-image sizes (28x28 grey images such as Fashion-MNIST):

- ``swin_tiny_patch2_window4_32`` (recommended): pad or resize the images to 32x32. Patch 2 gives a 16x16
  map; window 4 tiles every stage exactly (16 -> 8 -> 4, i.e. 4x4, 2x2 and 1 window), so the shifted
  windows and the 2x2 merging both work without padding, the hierarchy keeps three stages, and
  ``out_stride`` is 8, so SimMIM's mask cells of 8 px match the encoder's output stride as the reference's
  32 px cells do for Swin at 224. Cost per image is close to ``vit_tiny_patch4_28``'s (0.30 vs 0.27 GMACs per
  image, ``torch.utils.flop_counter``), with 12.1M parameters (most in the 4x4 last stage).
- ``swin_tiny_patch2_window7_28``: native 28x28. 7 is prime, so the only windows that tile 28 / patch 2 =
  14 without padding are 7 and 14; window 7 gives 2x2 shifted windows in the first stage, then 7x7 is one
  window and cannot be merged again (7 is odd), so this variant has two stages and ``out_stride`` 4.

Length: one file for the whole encoder (windows, relative position bias, shifted-window mask, merging,
masked forward), as timm and the SimMIM release keep it; its parts only make sense together.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from mimkit.hub import Pretrained
from mimkit.models.layers import Attention, DropPath, Mlp, PatchEmbed, use_fused_attention
from mimkit.models.masked import replace_masked_tokens
from mimkit.models.registry import ENCODERS
from mimkit.plain import pair

# Value added to the attention logits of token pairs the mask separates (the reference's constant).
MASKED_LOGIT = -100.0


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """``[B, H, W, C] -> [B, nW, wh * ww, C]``, windows in row-major order, tokens row-major inside."""
    b, h, w, c = x.shape
    wh, ww = window
    x = x.view(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // wh) * (w // ww), wh * ww, c)


def window_reverse(windows: torch.Tensor, window: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``[B, nW, wh * ww, C] -> [B, H, W, C]``."""
    b, _, _, c = windows.shape
    wh, ww = window
    x = windows.view(b, height // wh, width // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, height, width, c)


def relative_position_index(window: tuple[int, int]) -> torch.Tensor:
    """``[T, T]`` index into the ``[(2 wh - 1) (2 ww - 1), heads]`` bias table, ``T = wh * ww``.

    Entry ``(i, j)`` encodes ``(dy, dx) = pos_i - pos_j`` as ``(dy + wh - 1) * (2 ww - 1) + (dx + ww - 1)``.
    """
    wh, ww = window
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(
        1
    )  # [2, T]
    rel = coords[:, :, None] - coords[:, None, :]  # [2, T, T]
    return (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)


def _axis_regions(length: int, real: int, window: int, shift: int) -> torch.Tensor:
    """Region id of each position of a padded, cyclically shifted axis: ``[length]``.

    After rolling by ``-shift``, the last window holds two runs that were not neighbours in the image
    (ids 1 and 2); the rest of the axis is id 0. Positions that hold padding get id 3.
    """
    ids = torch.zeros(length, dtype=torch.long)
    if shift > 0:
        ids[length - window : length - shift] = 1
        ids[length - shift :] = 2
    source = (torch.arange(length) + shift) % length  # index before the roll
    ids[source >= real] = 3
    return ids


def shifted_window_mask(
    resolution: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]
) -> torch.Tensor | None:
    """Additive attention mask for (shifted, padded) windows: ``[nW, T, T]``, 0 or ``MASKED_LOGIT``.

    Two tokens of a window may attend to each other only if they come from the same region: not split
    by the cyclic roll, and both real or both padding. ``None`` when nothing needs masking.

    Args:
        resolution: ``(H, W)`` of the feature map before padding.
        window: ``(wh, ww)``.
        shift: ``(sh, sw)``, each ``0 <= s < window``.
    """
    (h, w), (wh, ww), (sh, sw) = resolution, window, shift
    hp, wp = h + (-h) % wh, w + (-w) % ww
    if (hp, wp) == (h, w) and sh == 0 and sw == 0:
        return None
    regions = _axis_regions(hp, h, wh, sh)[:, None] * 4 + _axis_regions(wp, w, ww, sw)[None, :]  # [Hp, Wp]
    regions = window_partition(regions[None, :, :, None], window)[0, :, :, 0]  # [nW, T]
    separated = regions[:, :, None] != regions[:, None, :]  # [nW, T, T]
    return separated.float() * MASKED_LOGIT


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias.

    Args:
        dim: channels ``C``.
        num_heads: heads; must divide ``dim``.
        window: ``(wh, ww)``.
        qkv_bias: bias on the fused ``qkv`` projection.
        fused: ``True``: ``scaled_dot_product_attention``; ``False``: plain math; ``"auto"``: see
            :func:`mimkit.models.layers.use_fused_attention`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: tuple[int, int],
        qkv_bias: bool = True,
        fused: bool | str = "auto",
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"stage width {dim} is not divisible by its num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window = window
        self.fused = fused
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window[0] - 1) * (2 * window[1] - 1), num_heads)
        )
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def relative_position_bias(self) -> torch.Tensor:
        """``[heads, T, T]``."""
        t = self.window[0] * self.window[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # [T * T, heads]
        # contiguous: CUDA's fused SDPA kernels need an attn_mask whose last dimension has stride 1
        return bias.view(t, t, self.num_heads).permute(2, 0, 1).contiguous()

    attention_path = Attention.attention_path  # the same ``fused`` setting, the same words

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` [B, nW, T, C]; ``mask`` [nW, T, T] additive (or ``None``) -> [B, nW, T, C]."""
        b, nw, t, c = x.shape
        h, hd = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(b, nw, t, 3, h, hd).permute(3, 0, 1, 4, 2, 5)  # [3, B, nW, heads, T, hd]
        q, k, v = qkv.reshape(3, b, nw * h, t, hd).unbind(0)  # windows x heads as one axis: 4-D for SDPA
        bias = self.relative_position_bias().unsqueeze(0)  # [1, heads, T, T]
        bias = bias + mask.unsqueeze(1) if mask is not None else bias.expand(nw, -1, -1, -1)
        bias = bias.reshape(1, nw * h, t, t).to(q.dtype)  # broadcast over the batch
        fused = use_fused_attention(x) if self.fused == "auto" else self.fused
        if fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1) + bias  # [B, nW * heads, T, T]
            out = attn.softmax(dim=-1) @ v
        out = out.view(b, nw, h, t, hd).transpose(2, 3).reshape(b, nw, t, c)
        return self.proj(out)


class SwinBlock(nn.Module):
    """``x + attn(norm1(x))`` in (shifted) windows, then ``x + mlp(norm2(x))``.

    Args:
        dim: channels.
        resolution: ``(H, W)`` of the stage's feature map.
        num_heads: attention heads.
        window_size: target window side; shrinks per axis to the map where the map is not larger.
        shift: shift this block's windows by ``window_size // 2`` (on axes longer than the window).
        mlp_ratio, qkv_bias, drop_path, fused_attn: as in the ViT block.
    """

    fsdp_unit = True  # sharded on its own under train.strategy=fsdp (mimkit.engine.fsdp)

    def __init__(
        self,
        dim: int,
        resolution: tuple[int, int],
        num_heads: int,
        window_size: int,
        shift: bool,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        fused_attn: bool | str = "auto",
    ):
        super().__init__()
        self.resolution = resolution
        self.window_size = tuple(min(r, window_size) for r in resolution)
        self.shift_size = tuple(window_size // 2 if shift and r > window_size else 0 for r in resolution)
        # zeros added at the bottom / right so that the window tiles the map
        self.padding = tuple((-r) % w for r, w in zip(resolution, self.window_size, strict=True))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, self.window_size, qkv_bias, fused_attn)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer(
            "attn_mask", shifted_window_mask(resolution, self.window_size, self.shift_size), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H * W, C] -> [B, H * W, C]``."""
        b, length, c = x.shape
        (h, w), (ph, pw), (sh, sw) = self.resolution, self.padding, self.shift_size
        y = self.norm1(x).view(b, h, w, c)
        if ph or pw:
            y = F.pad(y, (0, 0, 0, pw, 0, ph))  # zeros at the bottom / right: [B, Hp, Wp, C]
        if sh or sw:
            y = torch.roll(y, shifts=(-sh, -sw), dims=(1, 2))
        y = self.attn(window_partition(y, self.window_size), self.attn_mask)  # [B, nW, T, C]
        y = window_reverse(y, self.window_size, h + ph, w + pw)
        if sh or sw:
            y = torch.roll(y, shifts=(sh, sw), dims=(1, 2))
        y = y[:, :h, :w].reshape(b, length, c)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbours -> one token: ``[B, H * W, C] -> [B, H/2 * W/2, 2C]``.

    The four neighbours are concatenated in the reference order ``(0, 0), (1, 0), (0, 1), (1, 1)``
    (row offset, column offset), normalised, and projected by ``reduction`` (no bias).
    """

    def __init__(self, dim: int, resolution: tuple[int, int]):
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        h, w = self.resolution
        x = x.view(b, h // 2, 2, w // 2, 2, c)  # [B, H/2, row offset, W/2, col offset, C]
        x = x.permute(0, 1, 3, 4, 2, 5).reshape(b, (h // 2) * (w // 2), 4 * c)  # col offset major
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """``depth`` blocks at one resolution (odd ones shifted), then an optional :class:`PatchMerging`."""

    def __init__(
        self,
        dim: int,
        resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: list[float],
        downsample: bool,
        fused_attn: bool | str,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                resolution,
                num_heads,
                window_size,
                j % 2 == 1,
                mlp_ratio,
                qkv_bias,
                drop_path[j],
                fused_attn,
            )
            for j in range(depth)
        )
        self.downsample = PatchMerging(dim, resolution) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class SwinPatchEmbed(PatchEmbed):
    """:class:`~mimkit.models.layers.PatchEmbed` followed by a ``LayerNorm`` (``patch_embed.norm``)."""

    def __init__(self, img_size: tuple[int, int], patch_size: int, in_chans: int, embed_dim: int):
        super().__init__(img_size, patch_size, in_chans, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W] -> [N, (H/p) * (W/p), D]``."""
        return self.norm(super().forward(x))


def _init_weights(module: nn.Module) -> None:
    """The reference init: truncated normal (std 0.02) Linear weights with zero bias, LayerNorm (1, 0)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, WindowAttention):
        nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)


class SwinTransformer(Pretrained, nn.Module):
    """Hierarchical encoder with shifted-window attention; no class token.

    ``CLASSIFIER_OPTIONS``: how fine-tuning builds the classifier (SimMIM's Swin: final per-token norm,
    mean of the tokens, head; no ``fc_norm``).

    Args:
        img_size: input ``H`` (square) or ``(H, W)``; multiples of ``patch_size * 2 ** (len(depths) - 1)``.
        patch_size: patch side in pixels (4 in the paper).
        in_chans: image channels.
        embed_dim: width of the first stage; stage ``i`` is ``embed_dim * 2 ** i`` wide.
        depths: blocks per stage.
        num_heads: heads per stage (same length as ``depths``).
        window_size: window side in tokens (7 at 224 px, 6 at 192 px in SimMIM).
        mlp_ratio: MLP hidden width over the stage width.
        qkv_bias: bias in the ``qkv`` projections.
        drop_path_rate: stochastic depth, rising linearly to this value over all blocks.
        global_pool: ``"avg"`` only (mean of the final tokens); kept for the ViT's option set.
        num_classes: 0 for no classification head.
        fc_norm: a ``LayerNorm`` after pooling, before the head (the ViT fine-tuning option; the
            reference Swin has only the per-token final ``norm``).
        fused_attn: ``True`` / ``False`` / ``"auto"``, as for the ViT.

    Attributes:
        grid_size: the patch-embedding grid ``(H / p, W / p)``.
        num_features: width of the final stage.
        out_stride: total downsampling of the encoder, in pixels.
        depth: total number of blocks.
        num_prefix_tokens: 0 (no class token); ``patch_size``, ``in_chans``, ``embed_dim`` and ``img_size``
            are the constructor's.
    """

    CLASSIFIER_OPTIONS: ClassVar[dict[str, Any]] = {"global_pool": "avg"}
    drops_tokens: ClassVar[bool] = False  # masked-encoder contract: windows need every token (no MAE)

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        num_classes: int = 0,
        fc_norm: bool = False,
        fused_attn: bool | str = "auto",
    ):
        super().__init__()
        depths, num_heads = tuple(depths), tuple(num_heads)
        if not depths or len(depths) != len(num_heads):
            raise ValueError(
                f"depths {depths} and num_heads {num_heads} must be non-empty and of the same length "
                "(one entry per stage)"
            )
        if not all(isinstance(d, int) and d >= 1 for d in depths):
            raise ValueError(f"depths must be positive ints, got {depths}")
        if not isinstance(window_size, int) or window_size < 1:
            raise ValueError(f"window_size must be a positive int, got {window_size!r}")
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
        if global_pool != "avg":
            raise ValueError(
                f"Swin pools by averaging tokens: global_pool must be 'avg', got {global_pool!r}"
            )
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.img_size = pair(img_size, "img_size")
        self.patch_embed = SwinPatchEmbed(self.img_size, patch_size, in_chans, embed_dim)  # checks H, W % p

        num_stages = len(depths)
        self.out_stride = patch_size * 2 ** (num_stages - 1)
        gh, gw = self.patch_embed.grid_size
        if gh % 2 ** (num_stages - 1) or gw % 2 ** (num_stages - 1):
            raise ValueError(
                f"img_size {self.img_size[0]}x{self.img_size[1]} gives a {gh}x{gw} patch grid that patch "
                f"merging cannot halve {num_stages - 1} times; use an img_size that is a multiple of "
                f"patch_size * 2 ** (stages - 1) = {self.out_stride}"
            )
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.grid_size = (gh, gw)
        self.depths = depths
        self.depth = sum(depths)
        self.num_heads = num_heads
        self.window_size = window_size
        self.num_features = embed_dim * 2 ** (num_stages - 1)
        self.global_pool = global_pool
        self.num_prefix_tokens = 0

        rates = [drop_path_rate * k / max(self.depth - 1, 1) for k in range(self.depth)]  # linear, 0 first
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
            start = sum(depths[:i])
            self.layers.append(
                SwinStage(
                    dim=embed_dim * 2**i,
                    resolution=(gh // 2**i, gw // 2**i),
                    depth=depth,
                    num_heads=heads,
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop_path=rates[start : start + depth],
                    downsample=i < num_stages - 1,
                    fused_attn=fused_attn,
                )
            )
        self.norm = nn.LayerNorm(self.num_features)
        self.fc_norm = nn.LayerNorm(self.num_features) if fc_norm else nn.Identity()
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    @property
    def feature_grid_size(self) -> tuple[int, int]:
        """``(H, W) / out_stride``: the grid of the final tokens."""
        return (self.img_size[0] // self.out_stride, self.img_size[1] // self.out_stride)

    def set_fused_attn(self, fused: bool | str) -> None:
        """Switch every block between the fused SDPA kernel and the plain-math attention."""
        for stage in self.layers:
            for block in stage.blocks:
                block.attn.fused = fused

    def forward_encoder(
        self,
        x: torch.Tensor,
        ids_keep: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The masked-encoder interface (same signature as the ViT's).

        Args:
            x: images ``[N, C, H, W]``.
            ids_keep: not supported: windows need every token (use SimMIM, not MAE, with Swin).
            mask: ``[N, L]`` on the patch-embedding grid, 1 where the token is replaced by ``mask_token``
                (after the patch embedding and its norm, as in SimMIM).
            mask_token: ``[1, 1, embed_dim]``, required with ``mask``.

        Returns:
            ``[N, L_final, num_features]`` final tokens (row-major on :attr:`feature_grid_size`), after the
            final norm.
        """
        if ids_keep is not None:
            raise ValueError(
                "Swin cannot drop tokens (ids_keep): its windows need the full grid; "
                "use SimMIM's mask/mask_token instead of MAE"
            )
        tokens = self.patch_embed(x)  # [N, L, D]
        if mask is not None:
            tokens = replace_masked_tokens(tokens, mask, mask_token)
        for stage in self.layers:
            tokens = stage(tokens)
        return self.norm(tokens)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W] -> [N, L_final, num_features]``, after the final norm."""
        return self.forward_encoder(x)

    def pool(self, features: torch.Tensor, pool: str | None = None) -> torch.Tensor:
        """``[N, L_final, D] -> [N, D]``: the mean of the tokens.

        Swin has no class token; its image representation (what its classifier reads) is the token mean,
        so ``"token"`` (the evaluation suite's default for ViTs) gives that mean as well as ``"avg"``.
        """
        pool = pool or self.global_pool
        if pool not in ("avg", "token"):
            raise ValueError(f"pool must be 'avg' or 'token' (both the token mean for Swin), got {pool!r}")
        return features.mean(dim=1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(self.pool(features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def layer_id(self, param_name: str) -> int:
        """Depth for layer-wise lr decay, counted in blocks as SimMIM does: patch embedding 0, block ``j`` of
        stage ``i`` ``sum(depths[:i]) + j + 1``, the merging after stage ``i`` with the stage's last block,
        everything else (norm, head) ``depth + 1``."""
        if param_name.startswith("patch_embed"):
            return 0
        if param_name.startswith("layers."):
            parts = param_name.split(".")
            stage = int(parts[1])
            if parts[2] == "blocks":
                return sum(self.depths[:stage]) + int(parts[3]) + 1
            return sum(self.depths[: stage + 1])  # downsample
        return self.depth + 1


# name -> keyword arguments of SwinTransformer (see the module docstring for the small-image sizes).
_SWIN_SIZES: dict[str, dict[str, Any]] = {
    "swin_tiny_patch4_window7_224": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "swin_small_patch4_window7_224": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "swin_base_patch4_window7_224": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "swin_base_patch4_window6_192": dict(
        embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=6, img_size=192
    ),
    "swin_tiny_patch2_window4_32": dict(
        embed_dim=96,
        depths=(2, 2, 6),
        num_heads=(3, 6, 12),
        patch_size=2,
        window_size=4,
        img_size=32,
        in_chans=1,
    ),
    "swin_tiny_patch2_window7_28": dict(
        embed_dim=96, depths=(2, 6), num_heads=(3, 6), patch_size=2, window_size=7, img_size=28, in_chans=1
    ),
}

_SWIN_OPTIONS = set(inspect.signature(SwinTransformer.__init__).parameters) - {"self"}


def _swin_factory(defaults: dict[str, Any]):
    def factory(**overrides: Any) -> SwinTransformer:
        unknown = sorted(set(overrides) - _SWIN_OPTIONS)
        if unknown:
            raise ValueError(
                f"unknown Swin option(s) {unknown}; valid: {', '.join(sorted(_SWIN_OPTIONS))} "
                "(Swin takes depths=(...) per stage, not depth)"
            )
        kwargs = {"patch_size": 4, "img_size": 224, "in_chans": 3, "window_size": 7, **defaults, **overrides}
        return SwinTransformer(**kwargs)

    factory.extra_options = {"depths", "window_size"}  # options create_encoder accepts beyond the ViT's
    factory.encoder_class = SwinTransformer
    return factory


for _name, _defaults in _SWIN_SIZES.items():
    ENCODERS.register(_name)(_swin_factory(_defaults))
