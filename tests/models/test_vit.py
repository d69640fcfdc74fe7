import pytest
import torch

from mimkit.models import create_encoder, list_encoders
from mimkit.models.layers import Attention


def tiny(**kw):
    opts = dict(img_size=8, patch_size=4, in_chans=1, embed_dim=16, depth=2, num_heads=2)
    opts.update(kw)
    return create_encoder("vit_tiny_patch4_28", **opts)


def test_fused_attention_equals_plain_math():
    torch.manual_seed(0)
    attn = Attention(32, 4)
    x = torch.randn(3, 7, 32)
    attn.fused = True
    fused = attn(x)
    attn.fused = False
    plain = attn(x)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)


def test_plain_attention_is_softmax_formula():
    torch.manual_seed(0)
    attn = Attention(8, 1, fused=False)
    x = torch.randn(1, 5, 8)
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    weights = torch.softmax(q @ k.transpose(1, 2) / 8**0.5, dim=-1)
    expected = attn.proj(weights @ v)
    torch.testing.assert_close(attn(x), expected, atol=1e-6, rtol=1e-5)


def test_fused_and_plain_encoder_agree_with_grads():
    torch.manual_seed(0)
    enc = tiny()
    x = torch.randn(2, 1, 8, 8)
    enc.set_fused_attn(True)
    a = enc.forward_features(x)
    a.sum().backward()
    grad_a = enc.blocks[0].attn.qkv.weight.grad.clone()
    enc.zero_grad()
    enc.set_fused_attn(False)
    b = enc.forward_features(x)
    b.sum().backward()
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad_a, enc.blocks[0].attn.qkv.weight.grad, atol=1e-4, rtol=1e-3)


def test_shapes_square_and_non_square():
    enc = tiny(img_size=(8, 12))
    assert enc.grid_size == (2, 3) and enc.num_patches == 6
    feats = enc.forward_features(torch.randn(2, 1, 8, 12))
    assert feats.shape == (2, 7, 16)
    assert enc.pool(feats, "token").shape == (2, 16)
    torch.testing.assert_close(enc.pool(feats, "avg"), feats[:, 1:].mean(1))


def test_state_dict_uses_reference_names():
    keys = set(tiny().state_dict())
    for name in [
        "patch_embed.proj.weight",
        "cls_token",
        "pos_embed",
        "blocks.0.norm1.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.proj.bias",
        "blocks.1.mlp.fc1.weight",
        "blocks.1.mlp.fc2.bias",
        "blocks.1.norm2.bias",
        "norm.weight",
    ]:
        assert name in keys
    assert tiny().blocks[0].attn.qkv.weight.shape == (48, 16)  # [3D, D]


def test_fc_norm_classifier_has_the_mae_finetune_layout():
    # MAE's fine-tuned checkpoints: fc_norm + head, no final per-token norm; forward = head(fc_norm(mean)).
    torch.manual_seed(0)
    clf = tiny(fc_norm=True, global_pool="avg", num_classes=3).eval()
    keys = set(clf.state_dict())
    assert {"fc_norm.weight", "fc_norm.bias", "head.weight"} <= keys
    assert not any(k.startswith("norm.") for k in keys)
    x = torch.randn(2, 1, 8, 8)
    tokens = clf.patch_embed(x) + clf.pos_embed[:, 1:]
    h = torch.cat([(clf.cls_token + clf.pos_embed[:, :1]).expand(2, -1, -1), tokens], dim=1)
    for block in clf.blocks:
        h = block(h)
    torch.testing.assert_close(clf(x), clf.head(clf.fc_norm(h[:, 1:].mean(1))))


def test_ids_keep_drops_tokens_and_keeps_their_position():
    torch.manual_seed(0)
    enc = tiny(depth=0)  # no blocks: output = norm(tokens), so positions can be checked directly
    x = torch.randn(1, 1, 8, 8)
    full = enc.forward_encoder(x)
    kept = enc.forward_encoder(x, ids_keep=torch.tensor([[3, 1]]))
    assert kept.shape == (1, 3, 16)
    torch.testing.assert_close(kept[:, 1], full[:, 1 + 3])
    torch.testing.assert_close(kept[:, 2], full[:, 1 + 1])


def test_mask_token_replaces_before_position_embedding():
    enc = tiny(depth=0)
    enc.norm = torch.nn.Identity()
    token = torch.randn(1, 1, 16)
    mask = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    out = enc.forward_encoder(torch.randn(1, 1, 8, 8), mask=mask, mask_token=token)
    torch.testing.assert_close(out[0, 2], token[0, 0] + enc.pos_embed[0, 2])


def test_registry_and_bad_input_messages():
    assert "vit_base_patch16" in list_encoders() and "vit_huge_patch14" in list_encoders()
    with pytest.raises(ValueError, match="unknown encoder 'vit_gigantic'.*vit_base_patch16"):
        create_encoder("vit_gigantic")
    with pytest.raises(ValueError, match="not divisible by the patch size 4"):
        tiny(img_size=10)
    with pytest.raises(ValueError, match="unknown encoder option"):
        tiny(widht=3)
    with pytest.raises(ValueError, match=r"input is \(12, 12\)"):
        tiny()(torch.randn(1, 1, 12, 12))


def test_reference_sizes():
    big = create_encoder("vit_base_patch16", depth=1)
    assert big.embed_dim == 768 and big.num_heads == 12 and big.grid_size == (14, 14)
    huge = create_encoder("vit_huge_patch14", depth=1)
    assert huge.patch_size == 14 and huge.embed_dim == 1280
    small_grid = create_encoder("vit_tiny_patch7_28", depth=1)
    # 28 / 7 = 4 patches a side: 16 tokens plus the class token, one grey channel of 7 * 7 pixels each
    assert small_grid.grid_size == (4, 4) and small_grid.pos_embed.shape == (1, 17, 192)
    assert small_grid.patch_embed.proj.weight.shape == (192, 1, 7, 7)
