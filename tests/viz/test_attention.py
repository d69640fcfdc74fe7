"""Class-token attention maps against hand-worked cases: zero q and k weights attend uniformly, the weights
are the ones the block used (they rebuild its output), and the model is left as it was."""

import pytest
import torch

from mimkit.models import create_encoder
from mimkit.viz.attention import attention_maps, block_indices, class_token_attention, save_attention_picture


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    return create_encoder("vit_tiny_patch4_28", img_size=16, in_chans=1, embed_dim=16, depth=3, num_heads=2)


def images(n=3):
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(1))


def test_zero_query_and_key_weights_attend_uniformly():
    model = tiny_vit()
    dim = model.embed_dim
    with torch.no_grad():  # q = k = 0 for every token: softmax of equal scores, 1/N on each of N tokens
        model.blocks[1].attn.qkv.weight[: 2 * dim] = 0
        model.blocks[1].attn.qkv.bias[: 2 * dim] = 0
    maps = attention_maps(model, images(), 1)
    assert maps.shape == (3, 2, 4, 4)  # [B, heads, patch grid 16/4 x 16/4]
    tokens = 1 + 16
    torch.testing.assert_close(maps, torch.full_like(maps, 1 / tokens), rtol=0, atol=1e-7)
    other = attention_maps(model, images(), 0)  # an untouched block is not flat
    assert other.std() > 1e-3


def test_the_weights_rebuild_the_block_output_and_rows_sum_to_one():
    """The class token's output of a block's attention is proj(sum_t a_t v_t): the weights found from q and
    k must give the output the fused kernel computed."""
    model = tiny_vit().eval()
    attn = model.blocks[2].attn
    seen = {}
    handles = [
        attn.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0])),
        attn.register_forward_hook(lambda m, args, out: seen.__setitem__("out", out)),
    ]
    weights = class_token_attention(model, images(), [2])[0]  # [B, heads, T]
    for h in handles:
        h.remove()
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2))
    x = seen["x"]
    v = attn.qkv(x).view(3, 17, 3, 2, 8)[:, :, 2]  # [B, T, heads, head_dim]
    mixed = torch.einsum("bht,bthd->bhd", weights, v).reshape(3, 16)
    torch.testing.assert_close(attn.proj(mixed), seen["out"][:, 0], rtol=1e-4, atol=1e-5)


def test_the_model_is_left_as_it_was():
    model = tiny_vit().train()
    x = images()
    with torch.no_grad():
        before = model.eval().forward_features(x)
    model.train()
    class_token_attention(model, x, [0, 1, 2])
    assert model.training
    assert all(not block.attn._forward_pre_hooks for block in model.blocks)
    with torch.no_grad():
        assert torch.equal(model.eval().forward_features(x), before)


def test_blocks_and_models_without_a_class_token_are_named():
    model = tiny_vit()
    assert block_indices(model, "all") == [0, 1, 2]
    assert block_indices(model, -1) == [2]
    with pytest.raises(ValueError, match=r"an index in \[-3, 2\] \(3 blocks\), got 3"):
        attention_maps(model, images(), 3)
    swin = create_encoder("swin_tiny_patch2_window4_32", embed_dim=12, depths=(1, 1), num_heads=(1, 2))
    with pytest.raises(ValueError, match="SwinTransformer has no class token") as err:
        attention_maps(swin, torch.randn(1, 1, 32, 32), 0)
    assert "\n" not in str(err.value)


def test_picture_has_a_row_per_block(tmp_path):
    from PIL import Image

    model = tiny_vit()
    x = images(1)
    maps = torch.stack([attention_maps(model, x, b)[0] for b in (0, 2)])  # [blocks, heads, h, w]
    path = save_attention_picture(x[0], maps, [0, 2], tmp_path / "a.png", (0.5,), (0.2,), "title")
    with Image.open(path) as img:
        width, height = img.size
    assert width > height > 200  # 2 rows of 4 panels (image, mean, 2 heads)
