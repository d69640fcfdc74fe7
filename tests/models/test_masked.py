"""The masked-encoder contract: both encoders honour it, one check serves every method, one helper masks."""

import sys

import pytest
import torch

from mimkit import create_encoder, create_method
from mimkit.models.masked import MaskedEncoder, check_masked_encoder, replace_masked_tokens


def small(name, **kw):
    opts = dict(img_size=16, in_chans=1)
    if name.startswith("vit"):
        opts.update(patch_size=4, embed_dim=16, depth=1, num_heads=2)
    else:
        opts.update(patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4)
    return create_encoder(name, **{**opts, **kw})


def test_vit_and_swin_are_masked_encoders():
    vit, swin = small("vit_tiny_patch16"), small("swin_tiny_patch4_window7_224")
    assert isinstance(vit, MaskedEncoder) and isinstance(swin, MaskedEncoder)
    assert vit.drops_tokens and not swin.drops_tokens


def test_replacement_by_hand():
    tokens = torch.arange(12.0).view(1, 3, 4)  # 3 tokens of width 4
    token = torch.full((1, 1, 4), -1.0)
    out = replace_masked_tokens(tokens, torch.tensor([[0.0, 1.0, 0.5]]), token)
    assert out[0, 0].tolist() == [0, 1, 2, 3]  # kept
    assert out[0, 1].tolist() == [-1, -1, -1, -1]  # replaced
    assert out[0, 2].tolist() == [3.5, 4.0, 4.5, 5.0]  # a soft mask blends: (8..11) / 2 - 1 / 2
    with pytest.raises(ValueError, match="needs a mask_token of shape \\[1, 1, 4\\]"):
        replace_masked_tokens(tokens, torch.zeros(1, 3), None)
    with pytest.raises(ValueError, match="mask must be \\[N, L\\] = \\(1, 3\\), got \\(1, 2\\)"):
        replace_masked_tokens(tokens, torch.zeros(1, 2), token)


def test_vit_and_swin_mask_the_same_way():
    # a mask of ones replaces every token: the output no longer depends on the image
    for encoder in (small("vit_tiny_patch16"), small("swin_tiny_patch4_window7_224")):
        encoder.eval()
        token = torch.randn(1, 1, encoder.embed_dim)
        ones = torch.ones(2, encoder.grid_size[0] * encoder.grid_size[1])
        a = encoder.forward_encoder(torch.randn(2, 1, 16, 16), mask=ones, mask_token=token)
        b = encoder.forward_encoder(torch.randn(2, 1, 16, 16), mask=ones, mask_token=token)
        torch.testing.assert_close(a, b)


def test_one_check_names_what_is_missing():
    swin = small("swin_tiny_patch4_window7_224")
    with pytest.raises(ValueError, match="MAE needs .* SwinTransformer lacks token dropping"):
        create_method("mae", encoder=swin, decoder_dim=8, decoder_depth=1, decoder_heads=2)
    with pytest.raises(ValueError, match="SiT needs .* SwinTransformer lacks a class token"):
        create_method("sit", encoder=swin)
    with pytest.raises(ValueError, match="Linear lacks forward_encoder, patch_size, grid_size.*; use X"):
        check_masked_encoder(torch.nn.Linear(2, 2), "SimMIM", hint="use X")
    check_masked_encoder(small("vit_tiny_patch16"), "MAE", drops_tokens=True, class_token=True)  # passes


def test_a_missing_member_is_named_when_the_method_is_built():
    for member in ("out_stride", "num_features", "num_prefix_tokens"):  # read by SimMIM's head
        encoder = small("vit_tiny_patch16")
        delattr(encoder, member)
        with pytest.raises(
            ValueError, match=f"^SimMIM needs .*; VisionTransformer lacks {member}; use a vit_"
        ):
            create_method("simmim", encoder=encoder, mask_patch_size=8)


def _watched(encoder: torch.nn.Module, read: set[str]) -> torch.nn.Module:
    """``encoder`` recording every attribute that code in mimkit/methods/ reads of it."""

    class Watched(type(encoder)):
        def __getattribute__(self, name):
            if "mimkit/methods/" in sys._getframe(1).f_code.co_filename.replace("\\", "/"):
                read.add(name)
            return super().__getattribute__(name)

    encoder.__class__ = Watched
    return encoder


def test_methods_read_of_an_encoder_only_what_the_contract_declares():
    """Every attribute MAE, SimMIM and SiT read of their encoder while built, trained one step and asked
    for a reconstruction is a member of MaskedEncoder (or nn.Module's own API, or SiT's class token)."""
    read: set[str] = set()
    images = torch.randn(2, 1, 16, 16)
    methods = [
        create_method("mae", _watched(small("vit_tiny_patch16"), read), decoder_dim=8, decoder_depth=1,
                      decoder_heads=2),
        create_method("simmim", _watched(small("vit_tiny_patch16"), read), mask_patch_size=8),
        create_method("simmim", _watched(small("swin_tiny_patch4_window7_224"), read), mask_patch_size=4),
        create_method("sit", _watched(small("vit_tiny_patch16"), read), recon_hidden_dim=8,
                      proj_hidden_dim=8, proj_dim=4),
    ]  # fmt: skip
    for method in methods:
        method.training_step((images, torch.zeros(2)))["loss"].backward()
        method.reconstruct(images)
    declared = {"forward_encoder", *MaskedEncoder.__annotations__, "cls_token", *dir(torch.nn.Module)}
    declared.add("mimkit_config")  # what the hub recorded of a built encoder, read with a default
    assert {"grid_size", "out_stride", "num_features", "num_prefix_tokens"} <= read  # the watch works
    assert read <= declared, f"read but not declared: {sorted(read - declared)}"
