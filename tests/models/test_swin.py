import math

import pytest
import torch

from mimkit.models import SwinTransformer, create_encoder, list_encoders
from mimkit.models.swin import PatchMerging, SwinBlock, relative_position_index


def tiny(**kw) -> SwinTransformer:
    opts = dict(
        img_size=(16, 24),
        patch_size=2,
        in_chans=1,
        embed_dim=8,
        depths=(2, 2, 2),
        num_heads=(1, 2, 2),
        window_size=4,
    )
    opts.update(kw)
    return create_encoder("swin_tiny_patch2_window4_32", **opts)


# ---- an independent, per-token statement of what one Swin block computes --------------------------------


def axis_rule(n: int, window: int, shifted: bool) -> tuple[int, int, int]:
    """(effective window, shift, padded length) along one axis, from the paper's rule applied per axis."""
    w = min(n, window)
    s = window // 2 if shifted and n > window else 0
    return w, s, math.ceil(n / w) * w


def same_group(a: tuple[int, int], b: tuple[int, int], res, window: int, shifted: bool) -> bool:
    """Two real tokens attend to each other iff, on both axes, the cyclic shift puts them in the same window
    and neither was wrapped around the edge unless both were (the attention mask's regions)."""
    for axis in range(2):
        w, s, padded = axis_rule(res[axis], window, shifted)
        ia, ib = (a[axis] - s) % padded, (b[axis] - s) % padded
        if ia // w != ib // w or (a[axis] < s) != (b[axis] < s):
            return False
    return True


def naive_block(block: SwinBlock, x: torch.Tensor, res, window: int, shifted: bool) -> torch.Tensor:
    """Block output token by token: softmax over the token's group with the bias table looked up by
    (dy + wh - 1) * (2 ww - 1) + (dx + ww - 1); padding never enters."""
    h, w = res
    wh, ww = axis_rule(h, window, shifted)[0], axis_rule(w, window, shifted)[0]
    attn = block.attn
    heads, hd = attn.num_heads, attn.head_dim
    y = block.norm1(x)[0]  # [L, C]
    q, k, v = attn.qkv(y).chunk(3, dim=-1)
    coords = [(r, c) for r in range(h) for c in range(w)]
    out = torch.zeros_like(y)
    for i, a in enumerate(coords):
        group = [j for j, b in enumerate(coords) if same_group(a, b, res, window, shifted)]
        for head in range(heads):
            sl = slice(head * hd, (head + 1) * hd)
            logits = torch.stack(
                [
                    q[i, sl] @ k[j, sl] * hd**-0.5
                    + attn.relative_position_bias_table[
                        (a[0] - coords[j][0] + wh - 1) * (2 * ww - 1) + (a[1] - coords[j][1] + ww - 1), head
                    ]
                    for j in group
                ]
            )
            out[i, sl] = torch.softmax(logits, 0) @ v[group, sl]
    x = x + attn.proj(out)[None]
    return x + block.mlp(block.norm2(x))


BLOCK_CASES = [
    ((8, 8), 4, True),  # plain shifted windows, 2x2 windows of 4x4
    ((6, 10), 4, True),  # padding on both axes (6 -> 8, 10 -> 12) under a shift of 2
    ((5, 3), 4, False),  # rows padded 5 -> 8; columns narrower than the window: window shrinks to 3
    ((7, 7), 7, True),  # map == window: one window, shift disabled
    ((4, 9), 4, True),  # rows == window (no shift), columns shifted and padded 9 -> 12
]


@pytest.mark.parametrize("res, window, shifted", BLOCK_CASES)
def test_block_matches_per_token_formula(res, window, shifted):
    torch.manual_seed(0)
    block = SwinBlock(8, res, num_heads=2, window_size=window, shift=shifted, fused_attn=False).double()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_(0, 1.0)  # make a wrong bias index visible
    x = torch.randn(2, res[0] * res[1], 8, dtype=torch.float64)
    with torch.no_grad():
        got = block(x)
        for n in range(2):
            torch.testing.assert_close(got[n : n + 1], naive_block(block, x[n : n + 1], res, window, shifted))


@pytest.mark.parametrize("res, window", [((8, 8), 4), ((6, 10), 4)])
def test_shifted_windows_never_mix_separated_tokens(res, window):
    """Perturb one token: exactly the tokens of its (shifted-window, region) group change."""
    torch.manual_seed(0)
    block = SwinBlock(8, res, num_heads=2, window_size=window, shift=True).double().eval()
    h, w = res
    x = torch.randn(1, h * w, 8, dtype=torch.float64)
    coords = [(r, c) for r in range(h) for c in range(w)]
    # corner tokens: each is wrapped on some axis, or next to a window edge, or next to padding
    for t in [0, w - 1, (h - 1) * w, h * w - 1, (h // 2) * w + w // 2]:
        x2 = x.clone()
        x2[0, t] += 10.0 * torch.randn(8, dtype=torch.float64)  # not constant: LayerNorm removes that
        with torch.no_grad():
            changed = (block(x2) - block(x)).abs().amax(-1)[0] > 1e-9  # [L]
        expected = torch.tensor([same_group(coords[t], b, res, window, True) for b in coords])
        assert torch.equal(changed, expected), f"token {coords[t]}"
        # the test is not vacuous: the group is larger than the token and smaller than the map
        assert 1 < int(expected.sum()) < h * w


def test_unshifted_block_is_local_to_its_window():
    torch.manual_seed(0)
    block = SwinBlock(8, (8, 8), num_heads=2, window_size=4, shift=False).double()
    x = torch.randn(1, 64, 8, dtype=torch.float64)
    x2 = x.clone()
    x2[0, 3 * 8 + 3] += 10.0 * torch.randn(8, dtype=torch.float64)  # token (3, 3)
    with torch.no_grad():
        changed = (block(x2) - block(x)).abs().amax(-1)[0].view(8, 8) > 1e-9
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:4, :4] = True
    assert torch.equal(changed, expected)


def test_relative_position_index_hand_worked():
    # window 2x2: tokens (0,0) (0,1) (1,0) (1,1); index = (dy + 1) * 3 + (dx + 1), d = pos_i - pos_j
    assert relative_position_index((2, 2)).tolist() == [
        [4, 3, 1, 0],
        [5, 4, 2, 1],
        [7, 6, 4, 3],
        [8, 7, 5, 4],
    ]


def test_patch_merging_concatenates_in_reference_order():
    merge = PatchMerging(1, (2, 4))
    x = torch.arange(8.0).view(1, 8, 1)  # 2x4 map, value = row * 4 + col
    seen = {}
    merge.norm.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    out = merge(x)
    assert out.shape == (1, 2, 2)
    # per 2x2 group: (0,0), (1,0), (0,1), (1,1)
    assert seen["x"].tolist() == [[[0.0, 4.0, 1.0, 5.0], [2.0, 6.0, 3.0, 7.0]]]


def test_shapes_through_every_stage():
    torch.manual_seed(0)
    enc = tiny()
    assert enc.grid_size == (8, 12) and enc.out_stride == 8 and enc.num_features == 32
    assert (
        enc.feature_grid_size == (2, 3) and enc.embed_dim == 8 and enc.patch_size == 2 and enc.in_chans == 1
    )
    seen = []
    for i, stage in enumerate(enc.layers):
        for block in stage.blocks:
            block.register_forward_hook(lambda m, a, o, i=i: seen.append(("block", i, tuple(o.shape))))
        if stage.downsample is not None:
            stage.downsample.register_forward_hook(
                lambda m, a, o, i=i: seen.append(("merge", i, tuple(o.shape)))
            )
    feats = enc.forward_features(torch.randn(3, 1, 16, 24))
    assert seen == [
        ("block", 0, (3, 96, 8)),
        ("block", 0, (3, 96, 8)),
        ("merge", 0, (3, 24, 16)),
        ("block", 1, (3, 24, 16)),
        ("block", 1, (3, 24, 16)),
        ("merge", 1, (3, 6, 32)),
        ("block", 2, (3, 6, 32)),
        ("block", 2, (3, 6, 32)),
    ]
    assert feats.shape == (3, 6, 32)
    torch.testing.assert_close(enc.pool(feats), feats.mean(1))
    assert enc.pool(feats, "avg").shape == (3, 32)
    # per-axis windows: stage 1 is 4x6 -> rows unshifted (4 <= 4), columns shifted and padded 6 -> 8
    b = enc.layers[1].blocks[1]
    assert b.window_size == (4, 4) and b.shift_size == (0, 2) and b.padding == (0, 2)
    # stage 2 is 2x3: one window of the whole map, no shift, no padding, bias table (2*2-1) x (2*3-1)
    b = enc.layers[2].blocks[1]
    assert b.window_size == (2, 3) and b.shift_size == (0, 0) and b.attn_mask is None
    assert b.attn.relative_position_bias_table.shape == (3 * 5, 2)


def test_classifier_head_and_fc_norm():
    enc = tiny(num_classes=5, fc_norm=True)
    assert enc(torch.randn(2, 1, 16, 24)).shape == (2, 5)


def test_fused_and_plain_attention_agree():
    torch.manual_seed(0)
    enc = tiny()
    x = torch.randn(2, 1, 16, 24)
    enc.set_fused_attn(True)
    a = enc.forward_features(x)
    enc.set_fused_attn(False)
    b = enc.forward_features(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_attention_bias_reaches_sdpa_with_unit_last_stride(monkeypatch):
    """CUDA's fused SDPA kernels refuse an attn_mask whose last dimension is strided ("No available
    kernel"); the CPU accepts it, so check what the blocks hand over. The last stage here is one window
    (4x4 grid, window 4), where no copy of the per-head bias happens on the way."""
    import mimkit.models.swin as swin

    strides = []
    real = swin.F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        strides.append(attn_mask.stride(-1))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(swin.F, "scaled_dot_product_attention", spy)
    enc = create_encoder("swin_tiny_patch2_window4_32", embed_dim=8, depths=(2, 1, 1), num_heads=(1, 2, 4))
    enc.set_fused_attn(True)
    enc.forward_features(torch.randn(1, 1, 32, 32))
    assert len(strides) == 4 and set(strides) == {1}


def test_drop_path_rises_linearly_over_all_blocks():
    enc = tiny(drop_path_rate=0.3)
    rates = [block.drop_path.p for stage in enc.layers for block in stage.blocks]
    assert rates == pytest.approx([0.0, 0.06, 0.12, 0.18, 0.24, 0.3])


def test_state_dict_uses_swin_names():
    enc = tiny(num_classes=3)
    sd = enc.state_dict()
    expected_shapes = {
        "patch_embed.proj.weight": (8, 1, 2, 2),
        "patch_embed.norm.weight": (8,),
        "layers.0.blocks.0.norm1.weight": (8,),
        "layers.0.blocks.1.attn.relative_position_bias_table": ((2 * 4 - 1) ** 2, 1),
        "layers.0.blocks.0.attn.qkv.weight": (24, 8),
        "layers.0.blocks.0.attn.proj.bias": (8,),
        "layers.0.blocks.0.norm2.bias": (8,),
        "layers.0.blocks.0.mlp.fc1.weight": (32, 8),
        "layers.0.blocks.0.mlp.fc2.weight": (8, 32),
        "layers.0.downsample.norm.weight": (32,),
        "layers.0.downsample.reduction.weight": (16, 32),
        "layers.1.downsample.reduction.weight": (32, 64),
        "layers.2.blocks.1.attn.qkv.bias": (96,),
        "norm.weight": (32,),
        "head.weight": (3, 32),
    }
    for key, shape in expected_shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert "layers.0.downsample.reduction.bias" not in sd  # the merging projection has no bias
    assert not any(k.startswith("layers.2.downsample") for k in sd)  # no merging after the last stage
    assert not any(k.endswith(("attn_mask", "relative_position_index")) for k in sd)  # derived buffers


@pytest.mark.parametrize(
    "name, params_m",
    # published parameter counts (millions, 1000 classes): Swin-T 28.29, Swin-S 49.61, Swin-B 87.77
    [
        ("swin_tiny_patch4_window7_224", 28.29),
        ("swin_small_patch4_window7_224", 49.61),
        ("swin_base_patch4_window7_224", 87.77),
    ],
)
def test_registered_sizes_match_published_parameter_counts(name, params_m):
    with torch.device("meta"):  # no memory, no init cost
        enc = create_encoder(name, num_classes=1000)
    assert sum(p.numel() for p in enc.parameters()) / 1e6 == pytest.approx(params_m, abs=0.006)


def test_registered_small_image_sizes():
    names = list_encoders()
    for name in [
        "swin_tiny_patch4_window7_224",
        "swin_base_patch4_window6_192",
        "swin_tiny_patch2_window4_32",
        "swin_tiny_patch2_window7_28",
    ]:
        assert name in names
    with torch.device("meta"):
        b192 = create_encoder("swin_base_patch4_window6_192")
        s32 = create_encoder("swin_tiny_patch2_window4_32")
        s28 = create_encoder("swin_tiny_patch2_window7_28")
    assert b192.out_stride == 32 and b192.layers[3].blocks[1].shift_size == (0, 0)  # 6x6 map, window 6
    assert (
        s32.img_size == (32, 32)
        and s32.in_chans == 1
        and s32.out_stride == 8
        and s32.feature_grid_size == (4, 4)
    )
    assert s28.img_size == (28, 28) and s28.out_stride == 4 and s28.feature_grid_size == (7, 7)
    assert s28.layers[0].blocks[1].shift_size == (3, 3) and s28.layers[0].blocks[1].padding == (0, 0)


def test_layer_ids_for_layer_decay():
    enc = tiny()  # depths (2, 2, 2)
    assert enc.layer_id("patch_embed.proj.weight") == 0
    assert enc.layer_id("layers.0.blocks.0.attn.qkv.weight") == 1
    assert enc.layer_id("layers.1.blocks.1.mlp.fc1.weight") == 4
    assert enc.layer_id("layers.1.downsample.reduction.weight") == 4
    assert enc.layer_id("norm.weight") == 7


def test_img_size_not_divisible_by_patch_size():
    with pytest.raises(ValueError, match=r"30x30 .*patch size 4"):
        create_encoder("swin_tiny_patch4_window7_224", img_size=30)


def test_img_size_that_patch_merging_cannot_halve():
    # 28 / 4 = 7 patches: odd, cannot be merged 2x2; multiples of 4 * 2 ** 3 = 32 work
    with pytest.raises(ValueError, match=r"img_size 28x28 .*multiple of .* = 32"):
        create_encoder("swin_tiny_patch4_window7_224", img_size=28)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(depths=(2, 2), num_heads=(3,)), r"depths \(2, 2\) and num_heads \(3,\)"),
        (dict(window_size=0), "window_size must be a positive int, got 0"),
        (dict(num_heads=(3, 3, 3)), "stage width 8 is not divisible by its num_heads 3"),
        (dict(global_pool="token"), "global_pool must be 'avg', got 'token'"),
    ],
)
def test_bad_options(kw, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kw)


def test_unknown_option_and_bad_calls():
    with pytest.raises(ValueError, match="depth"):
        create_encoder("swin_tiny_patch2_window4_32", depth=3)
    enc = tiny()
    x = torch.randn(1, 1, 16, 24)
    with pytest.raises(ValueError, match="ids_keep"):
        enc.forward_encoder(x, ids_keep=torch.zeros(1, 4, dtype=torch.long))
    feats = enc.forward_features(x)
    torch.testing.assert_close(enc.pool(feats, "token"), feats.mean(1))  # no class token: the mean
    with pytest.raises(ValueError, match="'max'"):
        enc.pool(feats, "max")
    with pytest.raises(ValueError, match=r"\(16, 16\)"):
        enc.forward_features(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(1, 96\)"):
        enc.forward_encoder(x, mask=torch.zeros(1, 95), mask_token=torch.zeros(1, 1, 8))
