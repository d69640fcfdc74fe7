import pytest
import torch

from mimkit import create_encoder, create_method
from mimkit.losses import normalize_patches
from mimkit.models.patches import patchify, unpatchify


def tiny_mae(**kw):
    enc = create_encoder("vit_tiny_patch4_28", img_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=2)
    opts = dict(decoder_dim=8, decoder_depth=1, decoder_heads=2)
    opts.update(kw)
    return create_method("mae", encoder=enc, **opts)


def test_patchify_order_and_round_trip():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    p = patchify(x, 2)
    assert p.shape == (2, 6, 12)
    # patch (row 0, col 1), first pixel, channels last: x[0, :, 0, 2]
    torch.testing.assert_close(p[0, 1, :3], x[0, :, 0, 2])
    # second pixel of that patch is (0, 3)
    torch.testing.assert_close(p[0, 1, 3:6], x[0, :, 0, 3])
    torch.testing.assert_close(unpatchify(p, 2, (2, 3), 3), x)


def test_norm_pix_target_is_unbiased_per_patch():
    t = torch.tensor([[[1.0, 2.0, 3.0, 6.0]]])
    normed, mean, std = normalize_patches(t)
    var = ((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 3  # unbiased: 14 / 3
    expected = (t - 3.0) / (var + 1e-6) ** 0.5
    torch.testing.assert_close(normed, expected)
    torch.testing.assert_close(normed * std + mean, t)


def test_output_shapes_and_mask_count():
    mae = tiny_mae()
    out = mae(torch.randn(3, 1, 8, 8))
    assert out["pred"].shape == (3, 4, 16) and out["mask"].shape == (3, 4)
    assert torch.all(out["mask"].sum(1) == 3)  # int(4 * 0.25) = 1 kept
    assert out["loss"].ndim == 0


def test_loss_only_on_removed_patches():
    torch.manual_seed(0)
    mae = tiny_mae(mask_ratio=0.5)
    x = torch.randn(2, 1, 8, 8)
    noise = torch.rand(2, 4)
    out = mae(x, noise=noise)
    mask = out["mask"]
    target = mae.target(x)
    # hand-computed: mean over pixels, then over removed patches
    per_patch = ((out["pred"] - target) ** 2).mean(-1)
    torch.testing.assert_close(out["loss"], (per_patch * mask).sum() / mask.sum())
    # changing predictions of visible patches leaves the loss unchanged; removed ones change it
    from mimkit.losses import masked_mse

    changed = out["pred"] + 10.0 * (1 - mask).unsqueeze(-1)
    torch.testing.assert_close(masked_mse(changed, target, mask), out["loss"])
    changed = out["pred"] + 10.0 * mask.unsqueeze(-1)
    assert masked_mse(changed, target, mask) > out["loss"] + 1


def test_norm_pix_switch_changes_target():
    x = torch.rand(1, 1, 8, 8) * 5
    plain, normed = tiny_mae(norm_pix_loss=False), tiny_mae(norm_pix_loss=True)
    torch.testing.assert_close(plain.target(x), patchify(x, 4))
    torch.testing.assert_close(normed.target(x).mean(-1), torch.zeros(1, 4), atol=1e-5, rtol=0)


def test_reconstruct_undoes_norm_pix():
    torch.manual_seed(0)
    mae = tiny_mae(norm_pix_loss=True)
    x = torch.rand(2, 1, 8, 8)
    # a perfect prediction of the normalised target must come back as the input pixels
    mae.decoder.forward = lambda latent, ids_restore: mae.target(x)
    out = mae.reconstruct(x)
    torch.testing.assert_close(out["reconstruction"], x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["pasted"], x, atol=1e-5, rtol=1e-5)
    assert out["mask"].shape == (2, 1, 8, 8)
    torch.testing.assert_close(out["masked"], x * (1 - out["mask"]))


def test_bad_options():
    with pytest.raises(ValueError, match="mask_ratio"):
        tiny_mae(mask_ratio=1.0)
    with pytest.raises(ValueError, match="unknown method 'maee'.*mae"):
        create_method("maee", encoder="vit_tiny_patch4_28")
    with pytest.raises(
        ValueError, match=r"unknown option\(s\) \['decoder_width'\] for method 'mae'; valid: .*decoder_dim"
    ):
        tiny_mae(decoder_width=3)
    with pytest.raises(ValueError, match="unknown option for method 'gmml'.*'decoder_width'"):  # a preset
        create_method("gmml", encoder="vit_tiny_patch4_28", decoder_width=3)


def test_a_type_error_inside_a_method_is_not_called_a_bad_option(monkeypatch):
    from mimkit.methods import registry

    def broken(encoder, mask_ratio=0.5):
        raise TypeError("a bug inside the constructor")

    monkeypatch.setitem(registry.METHODS._entries, "broken", broken)
    with pytest.raises(TypeError, match="a bug inside the constructor"):
        create_method("broken", encoder="vit_tiny_patch4_28", mask_ratio=0.6)


def test_encoder_never_sees_mask_tokens():
    mae = tiny_mae(mask_ratio=0.75)
    seen = []
    mae.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    mae(torch.randn(2, 1, 8, 8))
    assert seen == [torch.Size([2, 2, 16])]  # cls + 1 kept of 4


def test_reconstruct_with_a_given_mask():
    torch.manual_seed(0)
    mae = tiny_mae().eval()  # 8x8 images, 4x4 patches: a 2x2 grid
    x = torch.randn(2, 1, 8, 8)
    mask = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]).expand(2, -1, -1)  # patches 0 and 3 hidden
    out = mae.reconstruct(x, mask=mask)
    hidden = torch.zeros(2, 1, 8, 8)
    hidden[..., :4, :4] = hidden[..., 4:, 4:] = 1.0
    torch.testing.assert_close(out["mask"], hidden)
    torch.testing.assert_close(out["masked"], x * (1 - hidden))
    torch.testing.assert_close(out["pasted"], torch.where(hidden.bool(), out["reconstruction"], x))
    # the encoder never sees a hidden patch: changing its pixels changes nothing
    changed = x + 5.0 * hidden
    torch.testing.assert_close(mae.reconstruct(changed, mask=mask)["reconstruction"], out["reconstruction"])
    assert mae.reconstruct(x, mask=torch.ones(2, 4))["reconstruction"].shape == x.shape  # nothing visible
    with pytest.raises(ValueError, match="same number of patches"):
        mae.reconstruct(x, mask=torch.tensor([[1.0, 0, 0, 0], [1.0, 1, 0, 0]]))
