"""save_pretrained / from_pretrained on every method and encoder: the same weights and outputs after the
round trip, the class checked, a run directory read too."""

import pytest
import torch

import mimkit
from mimkit.cli import main

VIT = {"in_chans": 1, "img_size": 28, "embed_dim": 32, "depth": 2, "num_heads": 2}
SWIN = {"in_chans": 1, "embed_dim": 24, "depths": [2, 2], "num_heads": [2, 2]}
CASES = {
    "mae": ("vit_tiny_patch4_28", VIT, {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}),
    "simmim": ("vit_tiny_patch4_28", VIT, {"mask_patch_size": 4}),
    "simmim-swin": ("swin_tiny_patch2_window4_32", SWIN, {"mask_patch_size": 8}),
    "sit": ("vit_tiny_patch4_28", VIT, {"recon_hidden_dim": 32, "proj_hidden_dim": 32, "proj_dim": 16}),
    "gmml": ("vit_tiny_patch4_28", VIT, {"recon_hidden_dim": 32}),
}
CLASSES = {"mae": mimkit.MAE, "simmim": mimkit.SimMIM, "simmim-swin": mimkit.SimMIM, "sit": mimkit.SiT,
           "gmml": mimkit.SiT}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_methods_and_encoders_round_trip(tmp_path, case):
    encoder_name, overrides, options = CASES[case]
    torch.manual_seed(0)
    encoder = mimkit.create_encoder(encoder_name, **overrides)
    method = mimkit.create_method(case.split("-")[0], encoder=encoder, **options).eval()
    method.save_pretrained(tmp_path / "method")
    method.encoder.save_pretrained(tmp_path / "encoder")
    torch.manual_seed(1)  # another init: only the loaded weights can make them equal
    loaded = CLASSES[case].from_pretrained(tmp_path / "method")
    assert not loaded.training
    ours, theirs = method.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    encoder = type(method.encoder).from_pretrained(tmp_path / "encoder")
    x = torch.randn(2, 1, *method.encoder.img_size)
    with torch.no_grad():
        assert torch.equal(encoder.forward_features(x), method.encoder.forward_features(x))
    other = mimkit.SiT if CLASSES[case] is not mimkit.SiT else mimkit.MAE
    with pytest.raises(ValueError, match=f"holds a {type(method).__name__}, not a {other.__name__}"):
        other.from_pretrained(tmp_path / "method")


def test_a_run_directory_loads_as_its_method_or_its_encoder(tmp_path):
    run = tmp_path / "run"
    argv = ["pretrain", "--config", "configs/mae_fashion_mnist.yaml", "data.limit=32", "train.epochs=1",
            "train.warmup_epochs=0", "train.batch_size=16", "train.precision=fp32", "train.progress=false",
            "train.tensorboard=false", "encoder.embed_dim=32", "encoder.depth=1", "encoder.num_heads=2",
            "method.decoder_dim=16", "method.decoder_depth=1", "method.decoder_heads=2",
            f"output_dir={run}"]  # fmt: skip
    assert main(argv) == 0
    mae = mimkit.MAE.from_pretrained(run)
    vit = mimkit.VisionTransformer.from_pretrained(run)
    assert vit is mae.encoder or torch.equal(vit.pos_embed, mae.encoder.pos_embed)
    mae.save_pretrained(tmp_path / "saved")  # a run's method was built by the factories: it saves too
    again = mimkit.MAE.from_pretrained(tmp_path / "saved")
    assert all(
        torch.equal(a, b) for a, b in zip(mae.state_dict().values(), again.state_dict().values(), strict=True)
    )


def test_a_hand_built_model_says_why_it_cannot_save(tmp_path):
    with pytest.raises(ValueError, match="was not built by mimkit.create_encoder / create_method"):
        mimkit.VisionTransformer(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=1, num_heads=2) \
            .save_pretrained(tmp_path)  # fmt: skip
