import pickle

import pytest
import torch

from mimkit import create_encoder, create_method, export_encoder_safetensors, load_weights


def tiny_encoder(**kw):
    opts = dict(img_size=8, patch_size=4, in_chans=1, embed_dim=16, depth=2, num_heads=2)
    opts.update(kw)
    return create_encoder("vit_tiny_patch4_28", **opts)


def tiny_mae(encoder=None):
    return create_method(
        "mae", encoder=encoder or tiny_encoder(), decoder_dim=8, decoder_depth=1, decoder_heads=2
    )


def reference_visualize_state(mae):
    """Rename a mimkit MAE's weights into the reference repository's flat names."""
    out = {}
    for key, value in mae.state_dict().items():
        if key.startswith("encoder."):
            out[key[len("encoder.") :]] = value
        else:
            sub = key[len("decoder.") :]
            name = "mask_token" if sub == "mask_token" else "decoder_" + sub
            out[name] = value
    return out


def test_reference_visualize_file_into_mae(tmp_path):
    torch.manual_seed(0)
    source = tiny_mae()
    ref = reference_visualize_state(source)
    assert "decoder_blocks.0.attn.qkv.weight" in ref and "decoder_pos_embed" in ref and "mask_token" in ref
    torch.save({"model": ref, "epoch": 3}, tmp_path / "vis.pth")
    target = tiny_mae()
    load_weights(target, tmp_path / "vis.pth")
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value)


def test_encoder_only_and_visualize_files_into_encoder(tmp_path):
    torch.manual_seed(0)
    source = tiny_mae()
    torch.save({"model": source.encoder.state_dict()}, tmp_path / "enc.pth")
    torch.save({"model": reference_visualize_state(source)}, tmp_path / "vis.pth")
    torch.save({"model": source.state_dict(), "config": {}}, tmp_path / "mimkit.pt")
    for name in ("enc.pth", "vis.pth", "mimkit.pt"):
        enc = tiny_encoder()
        load_weights(enc, tmp_path / name)
        torch.testing.assert_close(enc.blocks[1].mlp.fc2.weight, source.encoder.blocks[1].mlp.fc2.weight)


def test_mismatch_names_every_offending_key(tmp_path):
    torch.save({"model": tiny_encoder(embed_dim=32).state_dict()}, tmp_path / "wide.pth")
    with pytest.raises(ValueError) as err:
        load_weights(tiny_encoder(), tmp_path / "wide.pth")
    msg = str(err.value)
    assert "cls_token: file (1, 1, 32) vs model (1, 1, 16)" in msg
    assert "blocks.0.attn.qkv.weight: file (96, 32) vs model (48, 16)" in msg

    deep = tiny_encoder(depth=3).state_dict()
    torch.save(deep, tmp_path / "deep.pth")
    with pytest.raises(ValueError, match=r"unexpected keys \(\d+\): blocks\.2\."):
        load_weights(tiny_encoder(), tmp_path / "deep.pth")
    torch.save({"model": tiny_encoder(depth=1).state_dict()}, tmp_path / "shallow.pth")
    with pytest.raises(ValueError, match=r"missing keys \(\d+\): blocks\.1\."):
        load_weights(tiny_encoder(), tmp_path / "shallow.pth")


def test_pos_embed_resampled_when_grid_differs(tmp_path):
    torch.manual_seed(0)
    small = tiny_encoder(img_size=8)
    torch.save({"model": small.state_dict()}, tmp_path / "small.pth")
    big = tiny_encoder(img_size=16)  # grid 2x2 -> 4x4
    load_weights(big, tmp_path / "small.pth")
    assert big.pos_embed.shape == (1, 17, 16)
    torch.testing.assert_close(big.pos_embed[:, 0], small.pos_embed[:, 0])
    torch.testing.assert_close(big.blocks[0].attn.qkv.weight, small.blocks[0].attn.qkv.weight)


def test_weights_only_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model": Evil()}, f, protocol=2)  # torch.save's protocol
    with pytest.raises(ValueError, match="cannot read checkpoint") as err:
        load_weights(tiny_encoder(), tmp_path / "evil.pt")
    assert "\n" not in str(err.value) and "never code" in str(err.value)  # one line, not torch's page


def test_missing_file_and_no_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_weights(tiny_encoder(), tmp_path / "nope.pt")
    torch.save({"epoch": 1}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="no model weights"):
        load_weights(tiny_encoder(), tmp_path / "empty.pt")


def test_safetensors_export_round_trip(tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    mae = tiny_mae()
    path = export_encoder_safetensors(mae, tmp_path / "enc.safetensors", config={"name": "x"})
    tensors = load_file(str(path))
    assert set(tensors) == set(mae.encoder.state_dict())
    enc = tiny_encoder()
    load_weights(enc, path)
    torch.testing.assert_close(enc.norm.weight, mae.encoder.norm.weight)
    torch.testing.assert_close(enc.patch_embed.proj.weight, mae.encoder.patch_embed.proj.weight)


def _swin(window=4, **kw):
    opts = dict(img_size=16, embed_dim=8, depths=(2, 1), num_heads=(1, 2), window_size=window)
    return create_encoder("swin_tiny_patch2_window4_32", **{**opts, **kw})


def _simmim_reference_file(tmp_path):
    """What SimMIM's reference saves for a Swin: the mask token inside the encoder, the index and
    attention-mask buffers in the state dict, the one-conv decoder as ``decoder.0``."""
    torch.manual_seed(0)
    method = create_method("simmim", encoder=_swin(), mask_patch_size=4)
    state = {("encoder.mask_token" if k == "mask_token" else k): v for k, v in method.state_dict().items()}
    for name, buf in method.named_buffers():  # mimkit keeps these out of its state dict
        if name.endswith(("relative_position_index", "attn_mask")):
            state[name] = buf
    assert any(k.endswith("attn_mask") for k in state) and any(k.endswith("position_index") for k in state)
    path = tmp_path / "simmim_swin_reference.pth"
    torch.save({"model": state, "epoch": 99}, path)
    return method, path


def test_reference_simmim_swin_file_into_simmim_and_into_swin(tmp_path):
    method, path = _simmim_reference_file(tmp_path)
    torch.manual_seed(1)
    fresh = create_method("simmim", encoder=_swin(), mask_patch_size=4)
    load_weights(fresh, path)
    for key, value in method.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    encoder = _swin()
    load_weights(encoder, path)  # the encoder part only: no mask token, no decoder
    for key, value in method.encoder.state_dict().items():
        assert torch.equal(encoder.state_dict()[key], value), key


def test_timm_09_swin_layout_merging_at_next_stage_start(tmp_path):
    """timm >= 0.9 saves stage i's patch merging as ``layers.{i+1}.downsample`` and the classifier as
    ``head.fc``; such a file loads into mimkit's (reference) layout with every tensor in its place."""
    torch.manual_seed(0)
    source = _swin(depths=(1, 1, 1), num_heads=(1, 1, 2), num_classes=3)
    state = {}
    for key, value in source.state_dict().items():
        parts = key.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":
            key = ".".join(["layers", str(int(parts[1]) + 1), *parts[2:]])
        elif parts[0] == "head":
            key = "head.fc." + parts[1]
        state[key] = value
    assert "layers.2.downsample.reduction.weight" in state and "layers.0.downsample.norm.weight" not in state
    torch.save({"state_dict": state}, tmp_path / "timm_swin.pth")
    torch.manual_seed(1)
    target = _swin(depths=(1, 1, 1), num_heads=(1, 1, 2), num_classes=3)
    load_weights(target, tmp_path / "timm_swin.pth")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(target(x), source(x))
    # a file in the reference layout is left as it is (merging 0 present: no shift)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "ref_swin.pth")
    again = _swin(depths=(1, 1, 1), num_heads=(1, 1, 2), num_classes=3)
    load_weights(again, tmp_path / "ref_swin.pth")
    merge = "layers.0.downsample.reduction.weight"
    assert torch.equal(again.state_dict()[merge], source.state_dict()[merge])


def test_swin_bias_table_resampled_for_another_window(tmp_path):
    method, path = _simmim_reference_file(tmp_path)
    key = "layers.0.blocks.0.attn.relative_position_bias_table"  # window 4: [7 * 7, 1 head]
    wide = _swin(window=8)  # 16 / 2 = 8x8 grid: one window of 8, table [15 * 15, 1]
    with torch.no_grad():  # a function of dx only (the column), so that the axes cannot be swapped
        method.encoder.state_dict()[key].copy_(torch.arange(7.0).repeat(7).reshape(49, 1) ** 2)
    torch.save({"model": method.state_dict()}, path)
    load_weights(wide, path)
    resized = wide.state_dict()[key].reshape(15, 15)
    assert torch.allclose(resized, resized[:1].expand(15, 15))  # still a function of the column only
    assert (resized[0, 1:] > resized[0, :-1]).all()  # and still increasing along it
    # align_corners=False: new index 7 sits exactly on old index 3 ((7 + 0.5) * 7 / 15 - 0.5 = 3)
    random_table = torch.randn(49, 1)
    with torch.no_grad():
        method.encoder.state_dict()[key].copy_(random_table)
    torch.save({"model": method.state_dict()}, path)
    load_weights(wide, path)
    assert wide.state_dict()[key].reshape(15, 15)[7, 7] == pytest.approx(float(random_table[3 * 7 + 3]))
