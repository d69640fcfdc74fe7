import pytest
import torch

from mimkit.heads import PixelShuffleHead
from mimkit.losses import masked_l1
from mimkit.methods import SimMIM, create_method, list_methods
from mimkit.models import create_encoder


def tiny_vit(**kw):
    opts = dict(img_size=(16, 24), patch_size=4, in_chans=2, embed_dim=16, depth=2, num_heads=2)
    opts.update(kw)
    return create_encoder("vit_tiny_patch4_28", **opts)


def tiny_swin(**kw):
    opts = dict(
        img_size=(16, 32),
        patch_size=2,
        in_chans=2,
        embed_dim=8,
        depths=(1, 1, 1),
        num_heads=(1, 2, 2),
        window_size=4,
    )
    opts.update(kw)
    return create_encoder("swin_tiny_patch2_window4_32", **opts)


def pixel_mask_by_hand(token_mask: torch.Tensor, grid, patch: int) -> torch.Tensor:
    """[N, L] -> [N, 1, H, W]: each token's value over its patch, built with a Kronecker product."""
    ones = torch.ones(patch, patch)
    return torch.stack([torch.kron(m.view(grid), ones) for m in token_mask]).unsqueeze(1)


# ---- loss ----------------------------------------------------------------------------------------------


def test_masked_l1_hand_worked():
    target = torch.zeros(1, 2, 2, 2)
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[-1.0, 5.0], [6.0, 2.0]]]])
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    # masked pixels (0,0), (1,1): |1| + |4| (channel 0) + |-1| + |2| (channel 1) = 8,
    # over 2 pixels and 2 channels
    expected = 8.0 / (2.0 + 1e-5) / 2.0
    torch.testing.assert_close(masked_l1(pred, target, mask), torch.tensor(expected))
    torch.testing.assert_close(masked_l1(pred, target, mask[:, 0]), torch.tensor(expected))  # [N, H, W] too


def test_masked_l1_ignores_unmasked_pixels():
    torch.manual_seed(0)
    pred, target = torch.randn(3, 2, 8, 8), torch.randn(3, 2, 8, 8)
    mask = (torch.rand(3, 1, 8, 8) < 0.5).float()
    loss = masked_l1(pred, target, mask)
    changed_visible = pred + torch.randn_like(pred) * (1 - mask)
    torch.testing.assert_close(masked_l1(changed_visible, target, mask), loss)
    changed_masked = pred + torch.randn_like(pred) * mask
    assert not torch.allclose(masked_l1(changed_masked, target, mask), loss)
    assert masked_l1(pred, target, torch.zeros_like(mask)) == 0  # empty mask: 0, not NaN


def test_masked_l1_bad_shapes():
    with pytest.raises(ValueError, match=r"\(2, 1, 4, 4\)"):
        masked_l1(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4))


# ---- head ----------------------------------------------------------------------------------------------


def test_pixel_shuffle_head_shape_and_placement():
    head = PixelShuffleHead(in_dim=3, out_chans=2, stride=2)
    assert head(torch.randn(4, 3, 2, 3)).shape == (4, 2, 4, 6)
    with torch.no_grad():
        head[0].weight.zero_()
        head[0].bias.copy_(torch.arange(8.0))
    out = head(torch.randn(1, 3, 2, 3))
    # output channel c at (2 i + a, 2 j + b) is conv channel c * 4 + a * 2 + b, for every (i, j)
    for c in range(2):
        for a in range(2):
            for b in range(2):
                assert torch.all(out[0, c, a::2, b::2] == c * 4 + a * 2 + b)
    assert set(head.state_dict()) == {"0.weight", "0.bias"}


# ---- method on a ViT -----------------------------------------------------------------------------------


def test_registered_and_outputs_on_vit():
    assert "simmim" in list_methods()
    torch.manual_seed(0)
    method = create_method("simmim", encoder=tiny_vit(), mask_patch_size=8, mask_ratio=0.6)
    assert isinstance(method, SimMIM) and method.stride == 4
    assert method.decoder[0].out_channels == 4 * 4 * 2
    images = torch.randn(3, 2, 16, 24)
    out = method(images)
    assert out["pred"].shape == images.shape
    assert out["mask"].shape == (3, 24)
    # 4x6 tokens, cells of 2x2 tokens -> 2x3 = 6 cells; ceil(0.6 * 6) = 4 cells = 16 tokens per image
    assert torch.all(out["mask"].sum(1) == 16)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    # the loss is the L1 over masked pixels of the (normalised) input, mask upsampled token -> patch
    pix = pixel_mask_by_hand(out["mask"], (4, 6), 4)
    expected = ((out["pred"] - images).abs() * pix).sum() / (pix.sum() + 1e-5) / 2
    torch.testing.assert_close(out["loss"], expected)


def test_vit_encoder_sees_mask_token_plus_pos_embed_at_masked_positions():
    torch.manual_seed(0)
    enc = tiny_vit()
    method = SimMIM(enc, mask_patch_size=8, mask_ratio=0.5)
    with torch.no_grad():
        method.mask_token.normal_(0, 1.0)
    seen = {}
    enc.blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    images = torch.randn(2, 2, 16, 24)
    out = method(images)
    x = seen["x"][:, 1:]  # [N, L, D], without the class token
    m = out["mask"].bool()
    pos = enc.pos_embed[0, 1:]  # [L, D]
    expected_masked = (method.mask_token[0] + pos).expand(2, -1, -1)
    expected_visible = enc.patch_embed(images) + pos
    torch.testing.assert_close(x[m], expected_masked[m])
    torch.testing.assert_close(x[~m], expected_visible[~m])
    assert 0 < int(m.sum()) < m.numel()
    # the ViT's own state dict stays standard: the mask token belongs to the method
    assert "mask_token" in dict(method.named_parameters()) and "mask_token" not in enc.state_dict()


@pytest.mark.parametrize("which", ["vit", "swin"])
def test_head_puts_each_final_token_over_its_own_image_region(which, monkeypatch):
    """Final token l (row-major on the H/s x W/s grid, after any class token) must reconstruct exactly the
    s x s pixel block at its grid position."""
    enc = tiny_vit() if which == "vit" else tiny_swin()
    method = SimMIM(enc, mask_patch_size=8, mask_ratio=0.5)
    s = method.stride
    fh, fw = 16 // s, enc.img_size[1] // s
    prefix = 1 if which == "vit" else 0
    width = method.decoder[0].in_channels
    tokens = torch.zeros(1, prefix + fh * fw, width)
    tokens[0, prefix:, 0] = torch.arange(fh * fw, dtype=torch.float32)  # token l carries the value l
    tokens[0, :prefix, 0] = -1.0
    monkeypatch.setattr(enc, "forward_encoder", lambda x, **kw: tokens)
    with torch.no_grad():
        method.decoder[0].weight.zero_()
        method.decoder[0].weight[:, 0] = 1.0  # every output pixel copies input channel 0
        method.decoder[0].bias.zero_()
    pred = method(torch.zeros(1, 2, 16, enc.img_size[1]))["pred"]
    expected = torch.arange(fh * fw, dtype=torch.float32).view(fh, fw)
    expected = expected.repeat_interleave(s, 0).repeat_interleave(s, 1)
    torch.testing.assert_close(pred[0, 0], expected)
    torch.testing.assert_close(pred[0, 1], expected)


def test_only_masked_pixels_get_gradient_and_training_step():
    torch.manual_seed(0)
    method = SimMIM(tiny_vit(), mask_patch_size=8, mask_ratio=0.6)
    images = torch.randn(2, 2, 16, 24)
    out = method.training_step((images, torch.zeros(2)))
    out["pred"].retain_grad()
    out["loss"].backward()
    pix = pixel_mask_by_hand(out["mask"], (4, 6), 4).expand_as(images).bool()
    assert torch.all(out["pred"].grad[~pix] == 0)
    assert torch.all(out["pred"].grad[pix] != 0)
    for name in ["mask_token", "decoder.0.weight", "encoder.patch_embed.proj.weight"]:
        assert dict(method.named_parameters())[name].grad.abs().sum() > 0, name


def test_given_mask_and_reconstruct():
    torch.manual_seed(0)
    method = SimMIM(tiny_vit(), mask_patch_size=8, mask_ratio=0.6)
    images = torch.randn(2, 2, 16, 24)
    cells = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])  # one 2x3 cell grid, 4 masked
    grid_mask = cells.repeat_interleave(2, 0).repeat_interleave(2, 1).expand(2, -1, -1)  # [N, 4, 6]
    out = method(images, mask=grid_mask)
    torch.testing.assert_close(out["mask"], grid_mask.reshape(2, 24))
    rec = method.reconstruct(images, mask=grid_mask)
    pix = pixel_mask_by_hand(grid_mask.reshape(2, 24), (4, 6), 4)  # [N, 1, H, W]
    torch.testing.assert_close(rec["mask"], pix)
    torch.testing.assert_close(rec["masked"], images * (1 - pix))
    torch.testing.assert_close(rec["pasted"], torch.where(pix.bool(), rec["reconstruction"], images))
    assert rec["reconstruction"].shape == images.shape
    torch.testing.assert_close(rec["reconstruction"], out["pred"])
    with pytest.raises(ValueError, match=r"got \(2, 23\)"):
        method(images, mask=torch.zeros(2, 23))


def test_bf16_autocast_gives_float_loss():
    torch.manual_seed(0)
    method = SimMIM(tiny_vit(), mask_patch_size=8, mask_ratio=0.6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method(torch.randn(2, 2, 16, 24))
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])


# ---- method on a Swin ----------------------------------------------------------------------------------


def test_swin_outputs_and_head_stride():
    torch.manual_seed(0)
    enc = tiny_swin()
    method = create_method("simmim", encoder=enc, mask_patch_size=8, mask_ratio=0.6)
    assert (
        method.stride == 8
        and method.decoder[0].in_channels == 32
        and method.decoder[0].out_channels == 64 * 2
    )
    images = torch.randn(2, 2, 16, 32)
    out = method(images)
    assert out["pred"].shape == images.shape
    # 8x16 tokens, cells of 4x4 tokens -> 2x4 = 8 cells; ceil(0.6 * 8) = 5 cells = 80 tokens
    assert out["mask"].shape == (2, 128) and torch.all(out["mask"].sum(1) == 80)
    out["loss"].backward()
    assert method.mask_token.grad.abs().sum() > 0


def test_swin_encoder_sees_mask_token_after_patch_embedding():
    torch.manual_seed(0)
    enc = tiny_swin()
    method = SimMIM(enc, mask_patch_size=4, mask_ratio=0.5)
    with torch.no_grad():
        method.mask_token.normal_(0, 1.0)
    seen = {}
    enc.layers[0].blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    images = torch.randn(2, 2, 16, 32)
    out = method(images)
    m = out["mask"].bool()
    x = seen["x"]
    torch.testing.assert_close(x[m], method.mask_token[0].expand(2, 128, -1)[m])
    torch.testing.assert_close(x[~m], enc.patch_embed(images)[~m])


# ---- bad input -----------------------------------------------------------------------------------------


def test_mask_patch_size_not_a_multiple_of_patch_size():
    with pytest.raises(ValueError, match=r"mask_patch_size 6 .*patch size 4"):
        create_method("simmim", encoder=tiny_vit(), mask_patch_size=6)


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.2])
def test_ratio_outside_open_interval(ratio):
    with pytest.raises(ValueError, match=str(ratio)):
        create_method("simmim", encoder=tiny_vit(), mask_patch_size=8, mask_ratio=ratio)


def test_encoder_without_masked_interface():
    with pytest.raises(ValueError, match="forward_encoder"):
        SimMIM(torch.nn.Linear(3, 3))
