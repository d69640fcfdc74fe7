"""mimkit export --format transformers / timm / onnx: each format loaded by its own library gives mimkit's
features (rel. error <= 1e-5, fp32); transformers' ViTMAE gives MAE's loss for the same noise; bad input
is one line."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mimkit.cli import main
from mimkit.interop import export_run
from mimkit.pretrain import load_pretrained

TINY = [
    "data.limit=64", "train.epochs=1", "train.warmup_epochs=0", "train.batch_size=16", "train.precision=fp32",
    "train.progress=false", "train.tensorboard=false", "encoder.embed_dim=32", "encoder.depth=2",
    "encoder.num_heads=2",
]  # fmt: skip


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("mae") / "run"
    decoder = ["method.decoder_dim=16", "method.decoder_depth=1", "method.decoder_heads=2"]
    assert (
        main(["pretrain", "--config", "configs/mae_fashion_mnist.yaml", *TINY, *decoder, f"output_dir={run}"])
        == 0
    )
    return run


def _batch(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(5))


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    return float((ours - theirs).abs().max()) <= 1e-5 * float(ours.abs().max())


def test_transformers_vit_and_vitmae_reproduce_mimkit(mae_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    export_run(str(mae_run), str(tmp_path / "out"), ["transformers"])
    method, _, stats = load_pretrained(mae_run)
    method.eval()
    x = _batch()
    vit = transformers.ViTModel.from_pretrained(
        tmp_path / "out" / "transformers" / "vit", add_pooling_layer=False
    ).eval()
    with torch.no_grad():
        assert _close(method.encoder.forward_features(x), vit(pixel_values=x).last_hidden_state)
        mae = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path / "out" / "transformers" / "vit_mae")
        noise = torch.rand(3, method.encoder.num_patches, generator=torch.Generator().manual_seed(2))
        ours, theirs = method(x, noise=noise)["loss"], mae.eval()(pixel_values=x, noise=noise).loss
    assert abs(float(ours - theirs)) <= 1e-5 * float(ours)
    processor = json.loads(
        (tmp_path / "out" / "transformers" / "vit" / "preprocessor_config.json").read_text()
    )
    assert processor["image_mean"] == stats["mean"] and processor["size"] == {"height": 28, "width": 28}
    card = (tmp_path / "out" / "README.md").read_text()
    assert "ViTModel.from_pretrained" in card and "add_pooling_layer=False" in card
    assert str(stats["mean"]) in card


def test_onnx_runs_any_batch_size_as_mimkit(mae_run, tmp_path, capfd, recwarn):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    report = export_run(str(mae_run), str(tmp_path / "out"), ["onnx"])
    # the exporter's own notes (torchvision's ops it skips, pytree's deprecations) are not the user's
    assert "torchvision is not installed" not in capfd.readouterr().err
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]
    assert report["onnxruntime"] <= 1e-4
    session = ort.InferenceSession(str(tmp_path / "out" / "onnx" / "encoder.onnx"))
    method, _, _ = load_pretrained(mae_run)
    for n in (1, 5):  # traced with 2
        x = _batch(n)
        (tokens,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            assert _close(method.encoder.eval().forward_features(x), torch.from_numpy(tokens))


def test_timm_layout(mae_run, tmp_path):
    export_run(str(mae_run), str(tmp_path / "out"), ["timm"])
    folder = tmp_path / "out" / "timm"
    config = json.loads((folder / "config.json").read_text())
    method, _, stats = load_pretrained(mae_run)
    assert config["model_args"] | {"img_size": [28, 28]} == config["model_args"]
    assert config["model_args"]["embed_dim"] == 32 and config["model_args"]["in_chans"] == 1
    assert config["pretrained_cfg"]["mean"] == stats["mean"] and config["pretrained_cfg"]["input_size"] == [
        1,
        28,
        28,
    ]
    weights = load_file(folder / "model.safetensors")
    assert weights.keys() == method.encoder.state_dict().keys()  # timm's VisionTransformer names
    timm = pytest.importorskip("timm")  # needs torchvision: runs where timm imports
    overlay = dict(file=str(folder / "model.safetensors"))
    model = timm.create_model(
        config["architecture"], pretrained=True, pretrained_cfg_overlay=overlay, **config["model_args"]
    ).eval()
    x = _batch()
    with torch.no_grad():
        assert _close(method.encoder.eval().forward_features(x), model.forward_features(x))


def test_a_directory_timm_wrote_loads_into_mimkit(tmp_path):
    """timm -> mimkit: a ViT saved by timm's own ``save_for_hf`` (its config.json names the architecture and
    model_args) builds the same-size mimkit encoder with timm's weights: the same features."""
    timm = pytest.importorskip("timm")  # needs torchvision: runs where timm imports
    from mimkit import create_encoder
    from mimkit.models.hf_names import encoder_config
    from mimkit.weights import load_weights

    theirs = timm.create_model(
        "vit_tiny_patch16_224", img_size=28, patch_size=4, in_chans=1, embed_dim=48, depth=2, num_heads=3,
        mlp_ratio=2.0, num_classes=0,
    ).eval()  # fmt: skip
    timm.models.save_for_hf(theirs, tmp_path / "timm", safe_serialization=True)
    arch = encoder_config(tmp_path / "timm")
    assert arch == {"name": "vit_base_patch16", "patch_size": 4, "embed_dim": 48, "depth": 2, "num_heads": 3,
                    "mlp_ratio": 2.0}  # fmt: skip
    ours = create_encoder(arch.pop("name"), img_size=28, in_chans=1, **arch).eval()
    load_weights(ours, tmp_path / "timm")
    x = _batch()
    with torch.no_grad():
        assert _close(theirs.forward_features(x), ours.forward_features(x))


def test_bad_exports_are_one_line(mae_run, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown export format\\(s\\) \\['keras'\\]; choose from"):
        export_run(str(mae_run), str(tmp_path / "a"), ["keras"])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("keep me")
    assert main(["export", str(mae_run), str(tmp_path / "b"), "--format", "timm"]) == 2
    assert "exists and is not empty; choose another or pass --force" in capsys.readouterr().err
    assert (tmp_path / "b" / "x").read_text() == "keep me"
    assert main(["export", str(mae_run), str(tmp_path / "b"), "--format", "timm", "--force"]) == 0
    assert not (tmp_path / "b" / "x").exists() and (tmp_path / "b" / "timm" / "config.json").is_file()
    # OUT named like a file: a directory of that name would surprise; refused before anything is written
    assert main(["export", str(mae_run), str(tmp_path / "model.onnx"), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "model.onnx names a file: give a directory, e.g." in err and err.count("\n") == 1
    assert not (tmp_path / "model.onnx").exists()


def test_swin_is_refused_with_the_formats_that_can(tmp_path, capsys):
    run = tmp_path / "swin"
    swin = ["data.limit=32", "train.epochs=1", "train.warmup_epochs=0", "train.batch_size=16",
            "train.precision=fp32", "train.progress=false", "train.tensorboard=false", "encoder.embed_dim=24",
            "encoder.depths=[2,2]", "encoder.num_heads=[2,2]"]  # fmt: skip
    assert (
        main(["pretrain", "--config", "configs/simmim_swin_fashion_mnist.yaml", *swin, f"output_dir={run}"])
        == 0
    )
    assert main(["export", str(run), str(tmp_path / "out"), "--format", "transformers"]) == 2
    err = capsys.readouterr().err
    assert "format 'transformers' takes ViT encoders; this run's encoder is a SwinTransformer" in err
    assert "--format onnx" in err and not (tmp_path / "out").exists()


def test_a_transformers_vitmae_directory_loads_into_mimkit_mae_with_the_same_loss(tmp_path):
    """transformers -> mimkit: a ViTMAEForPreTraining of transformers' own (random) weights, saved with
    save_pretrained, loads strictly into mimkit's MAE, which then gives its loss for the same noise; its
    ViT part starts a mimkit pretraining run (init_weights)."""
    transformers = pytest.importorskip("transformers")
    from mimkit.methods import create_method
    from mimkit.models import create_encoder
    from mimkit.weights import load_weights

    config = transformers.ViTMAEConfig(
        image_size=28, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=128, decoder_hidden_size=16, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2, decoder_intermediate_size=64, layer_norm_eps=1e-6, norm_pix_loss=True,
        mask_ratio=0.75,
    )  # fmt: skip
    torch.manual_seed(0)
    theirs = transformers.ViTMAEForPreTraining(config).eval()
    with torch.no_grad():  # transformers 5 may leave some at zero: give every weight a value
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    theirs.save_pretrained(tmp_path / "vit_mae")
    encoder = create_encoder("vit_tiny_patch4_28", in_chans=1, embed_dim=32, depth=2, num_heads=2)
    ours = create_method("mae", encoder=encoder, decoder_dim=16, decoder_depth=1, decoder_heads=2,
                         norm_pix_loss=True).eval()  # fmt: skip
    load_weights(ours, tmp_path / "vit_mae")
    x, noise = _batch(), torch.rand(3, 49, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = ours(x, noise=noise)["loss"], theirs(pixel_values=x, noise=noise).loss
    assert abs(float(a - b)) <= 1e-5 * float(b)
    run = tmp_path / "run"
    argv = ["pretrain", "--config", "configs/mae_fashion_mnist.yaml", *TINY, "method.decoder_dim=16",
            "method.decoder_depth=1", "method.decoder_heads=2", f"init_weights={tmp_path / 'vit_mae'}",
            "train.max_steps=1", f"output_dir={run}"]  # fmt: skip
    assert main(argv) == 0


def test_a_directory_of_another_model_is_one_line(tmp_path):
    from mimkit.weights import read_checkpoint

    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "bert" / "model.safetensors"))
    with pytest.raises(
        ValueError, match="holds a bert model; mimkit reads transformers ViT / ViTMAE and timm"
    ):
        read_checkpoint(tmp_path / "bert")


def test_exported_directories_evaluate_as_the_run(mae_run, tmp_path, capsys):
    """A transformers or timm directory is evaluated without --encoder (its config.json says what to build):
    the same kNN scores as the run itself (the same weights, the data's own normalisation)."""
    pytest.importorskip("transformers")
    export_run(str(mae_run), str(tmp_path / "out"), ["transformers", "timm"])
    args = ["--train-limit", "300", "--test-limit", "100", "--k", "10", "--device", "cpu",
            "--precision", "fp32", "--no-cache"]  # fmt: skip
    scores = []
    for source in (
        mae_run,
        *(tmp_path / "out" / d for d in ("transformers/vit", "transformers/vit_mae", "timm")),
    ):
        assert main(["knn", str(source), *args]) == 0
        scores.append(capsys.readouterr().out.split("k=10:")[1].strip())
    assert len(set(scores)) == 1, scores
