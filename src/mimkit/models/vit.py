"""Vision Transformer encoder (Dosovitskiy et al., 2021) with MAE's fixed sin-cos position embedding.

State-dict names follow timm / the MAE reference (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.{i}.attn.qkv``, ..., ``norm``, ``fc_norm``, ``head``) so published checkpoints load strictly.

The masked-encoder interface shared by the methods is :meth:`VisionTransformer.forward_encoder`:
``ids_keep`` drops tokens (MAE), ``mask`` + ``mask_token`` replaces tokens (SimMIM, SiT).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn

from mimkit.hub import Pretrained
from mimkit.models.layers import Block, PatchEmbed, init_weights_mae
from mimkit.models.masked import replace_masked_tokens
from mimkit.models.pos_embed import sincos_2d
from mimkit.plain import pair


class VisionTransformer(Pretrained, nn.Module):
    """ViT encoder with a class token.

    ``CLASSIFIER_OPTIONS``: how fine-tuning builds the classifier (MAE's: mean of the patch tokens, then
    ``fc_norm`` in place of the final norm, then the head).

    Args:
        img_size: input ``H`` (square) or ``(H, W)``; both divisible by ``patch_size``.
        patch_size: side of the square patches, in pixels.
        in_chans: image channels (1 for grey).
        embed_dim: token width.
        depth: number of blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width over ``embed_dim``.
        drop_path_rate: stochastic depth, rising linearly to this value over the blocks.
        global_pool: ``"token"`` (class token) or ``"avg"`` (mean of patch tokens) for :meth:`pool`.
        num_classes: 0 for no classification head.
        fc_norm: a LayerNorm after pooling, in place of the final per-token ``norm`` (which becomes an
            identity, as in the MAE fine-tuning reference and timm): fine-tuning with ``global_pool="avg"``.
        fused_attn: ``True``: ``scaled_dot_product_attention``; ``False``: the plain-math path;
            ``"auto"``: see :func:`mimkit.models.layers.use_fused_attention`.
    """

    CLASSIFIER_OPTIONS: ClassVar[dict[str, Any]] = {"global_pool": "avg", "fc_norm": True}
    drops_tokens: ClassVar[bool] = True  # masked-encoder contract (models/masked.py): MAE may drop tokens

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        global_pool: str = "token",
        num_classes: int = 0,
        fc_norm: bool = False,
        fused_attn: bool | str = "auto",
    ):
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        for name, value, low in (("in_chans", in_chans, 1), ("embed_dim", embed_dim, 1), ("depth", depth, 0)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.img_size = pair(img_size, "img_size")
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.global_pool = global_pool
        self.num_prefix_tokens = 1
        self.num_features = embed_dim  # final width (a Swin's is its last stage's)
        self.out_stride = patch_size  # total downsampling of the output tokens

        self.patch_embed = PatchEmbed(self.img_size, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        self.num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed, not learned: a parameter without grad so it is saved under the reference name.
        self.pos_embed = nn.Parameter(
            sincos_2d(embed_dim, self.grid_size, cls_token=True).unsqueeze(0), requires_grad=False
        )
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=r, fused_attn=fused_attn)
            for r in rates
        )
        # MAE's fine-tuning model (and timm's ViT) drops the per-token norm when it pools through fc_norm:
        # its checkpoints then have fc_norm.* but no norm.*.
        self.norm = nn.Identity() if fc_norm else nn.LayerNorm(embed_dim, eps=1e-6)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6) if fc_norm else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(init_weights_mae)

    def set_fused_attn(self, fused: bool | str) -> None:
        """Switch every block between the fused SDPA kernel and the plain-math attention."""
        for block in self.blocks:
            block.attn.fused = fused

    def forward_encoder(
        self,
        x: torch.Tensor,
        ids_keep: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The masked-encoder interface shared by the methods.

        Args:
            x: images ``[N, C, H, W]``.
            ids_keep: ``[N, K]`` indices of the patch tokens to keep (MAE); the others never enter
                the transformer.
            mask: ``[N, L]``, 1 where a patch token is replaced by ``mask_token`` (SimMIM); the
                replacement happens before the position embedding is added.
            mask_token: ``[1, 1, D]``, required with ``mask``.

        Returns:
            ``[N, 1 + K, D]`` (or ``[N, 1 + L, D]``): class token then patch tokens, after the final norm.
        """
        tokens = self.patch_embed(x)  # [N, L, D]
        if mask is not None:
            tokens = replace_masked_tokens(tokens, mask, mask_token)
        tokens = tokens + self.pos_embed[:, 1:]
        if ids_keep is not None:
            index = ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
            tokens = torch.gather(tokens, dim=1, index=index)  # [N, K, D]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W] -> [N, 1 + L, D]``, every token, after the final norm."""
        return self.forward_encoder(x)

    def pool(self, features: torch.Tensor, pool: str | None = None) -> torch.Tensor:
        """``[N, 1 + L, D] -> [N, D]``: the class token or the mean of the patch tokens."""
        pool = pool or self.global_pool
        if pool == "token":
            return features[:, 0]
        if pool == "avg":
            return features[:, self.num_prefix_tokens :].mean(dim=1)
        raise ValueError(f"pool must be 'token' or 'avg', got {pool!r}")

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(self.pool(features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def layer_id(self, param_name: str) -> int:
        """Depth of a parameter for layer-wise lr decay: embeddings 0, block i -> i + 1, rest depth + 1."""
        if param_name.startswith(("cls_token", "pos_embed", "patch_embed")):
            return 0
        if param_name.startswith("blocks."):
            return int(param_name.split(".")[1]) + 1
        return self.depth + 1
