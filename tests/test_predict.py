"""The classifier at the end of the road: classifier.json, ``mimkit predict`` and the classifier's exports.

One tiny run for the module: 2 classes x 6 RGB PNGs of 24 px (a red or a blue tint over noise), a 2-block
32-wide MAE pretrained for 3 steps, fine-tuned for 2. What the tests compare against is worked out here
from the PNGs and the checkpoint, not read from the code under test: the normalisation from the pixels of
the training files split.json lists, the logits from an encoder built with the sizes given on the command
line and loaded with the checkpoint's weights.
"""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from mimkit.cli import main
from mimkit.data.transforms import EvalTransform
from mimkit.eval import embed as embed_module
from mimkit.eval_protocols import predict
from mimkit.eval_sources import FeatureOptions
from mimkit.models import create_encoder

CLASSES = ["blue", "red"]  # sorted folder names
TINY = ["encoder.embed_dim=32", "encoder.depth=2", "encoder.num_heads=2", "method.decoder_dim=16",
        "method.decoder_depth=1", "method.decoder_heads=2", "data.img_size=24", "train.batch_size=4",
        "train.epochs=1", "train.progress=false", "train.tensorboard=false"]  # fmt: skip
FINETUNE = ["train.max_steps=2", "train.batch_size=4", "train.progress=false", "train.tensorboard=false"]
FP32 = FeatureOptions(batch_size=2, device="cpu", precision="fp32")


def tinted(rng, tint, size=24):
    noise = rng.integers(0, 60, (size, size, 3))
    return (noise + np.array(tint) * rng.uniform(0.6, 1.0)).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``(pretraining run, fine-tuning run, folder of new images)``."""
    root = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    for name, tint in (("blue", (40, 40, 200)), ("red", (200, 40, 40))):
        (root / "imgs" / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(tinted(rng, tint)).save(root / "imgs" / name / f"{name}{i}.png")
    (root / "new" / "sub").mkdir(parents=True)
    for i in range(7):
        tint = (200, 40, 40) if i % 2 else (40, 40, 200)
        Image.fromarray(tinted(rng, tint)).save(root / "new" / ("sub" if i >= 4 else "") / f"n{i}.png")
    (root / "new" / "broken.png").write_bytes(b"not a png")  # sorts first: lands in the first batch
    out = root / "runs" / "imgs"
    argv = ["pretrain", "--config", "configs/mae_fashion_mnist.yaml", "data.source=folder"]
    assert main([*argv, f"data.root={root / 'imgs'}", f"output_dir={out}", *TINY]) == 0
    assert main(["eval", "finetune", str(out), "--set", *FINETUNE]) == 0
    return out, out / "eval" / "finetune", root / "new"


def training_pixels(pretrain_run):
    """The training files of the run's split, ``[N, 24, 24, 3]`` uint8."""
    split = json.loads((pretrain_run / "split.json").read_text())
    return np.stack([np.asarray(Image.open(f"{split['root']}/{f}")) for f in split["train"]])


def kept(ft_run):
    """The checkpoint fine-tuning kept: the best epoch on its held-out labels (best.pt), else last.pt."""
    return ft_run / "best.pt" if (ft_run / "best.pt").is_file() else ft_run / "last.pt"


def independent_classifier(ft_run):
    """The classifier built from the test's own sizes, with the weights fine-tuning kept (:func:`kept`)."""
    encoder = create_encoder(
        "vit_tiny_patch4_28", embed_dim=32, depth=2, num_heads=2, img_size=24, in_chans=3,
        global_pool="avg", fc_norm=True, num_classes=2,
    )  # fmt: skip
    state = torch.load(kept(ft_run), weights_only=True)["model"]
    encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items()})
    return encoder.eval()


def normalised(files, pretrain_run):
    """The PNGs decoded by PIL, normalised with the training pixels' statistics: ``[N, 3, 24, 24]``."""
    pixels = training_pixels(pretrain_run) / 255.0
    mean, std = pixels.mean(axis=(0, 1, 2)), pixels.std(axis=(0, 1, 2))
    x = np.stack([(np.asarray(Image.open(f)) / 255.0 - mean) / std for f in files])
    return torch.tensor(x, dtype=torch.float32).permute(0, 3, 1, 2)


def independent_logits(ft_run, pretrain_run, files):
    with torch.no_grad():
        return independent_classifier(ft_run)(normalised(files, pretrain_run)).double()


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mimkit: error:"), err
    return err[0]


# ----------------------------------------------------------------------------- classifier.json


def test_classifier_json_holds_the_classes_preprocessing_and_scores_of_the_run(run):
    pretrain_run, ft_run, _ = run
    record = json.loads((ft_run / "classifier.json").read_text())
    pixels = training_pixels(pretrain_run) / 255.0  # what the run trained on: 5 of each class's 6
    assert record["classes"] == CLASSES
    assert record["channels"] == 3 and record["img_size"] == [24, 24] == record["stored_size"]
    assert record["dtype"] == "uint8" and record["clip"] is None and record["bands"] is None
    np.testing.assert_allclose(record["mean"], pixels.mean(axis=(0, 1, 2)), atol=1e-7)
    np.testing.assert_allclose(record["std"], pixels.std(axis=(0, 1, 2)), atol=1e-7)
    assert record["trained_on"]["images"] == len(pixels) == 10
    encoder = record["encoder"]
    assert encoder["name"] == "vit_tiny_patch4_28" and encoder["num_classes"] == 2
    assert (encoder["embed_dim"], encoder["depth"], encoder["global_pool"], encoder["fc_norm"]) == (
        32, 2, "avg", True,
    )  # fmt: skip
    assert record["scores"] == json.loads((ft_run / "finetune.json").read_text())
    assert record["scores"]["test_images"] == 2  # one held out per class


# ----------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def strong_run(run, tmp_path_factory):
    """A copy of the fine-tuning run whose head, fc_norm and attention key biases are redrawn large: logits
    of order 1 (two steps leave them near 0) and a key bias that BEiT's export must do without."""
    _, ft_run, _ = run
    copy = tmp_path_factory.mktemp("strong") / "finetune"
    shutil.copytree(ft_run, copy)
    saved = torch.load(kept(copy), weights_only=True)
    state, g = saved["model"], torch.Generator().manual_seed(0)
    for name, value in state.items():
        if name.startswith(("encoder.head.", "encoder.fc_norm.")):
            value.copy_(torch.randn(value.shape, generator=g) + (name == "encoder.fc_norm.weight"))
        elif name.endswith("attn.qkv.bias"):
            value[32:64] += 5 * torch.randn(32, generator=g)  # the key part of q, k, v
    torch.save(saved, kept(copy))
    return copy


def test_predictions_are_the_classifiers_softmax_ranked(run, strong_run, tmp_path, capsys, caplog):
    pretrain_run, ft_run, new = run
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(pretrain_run), str(new), "--out", str(out)]) == 0  # its eval/finetune
    said = capsys.readouterr().out
    assert "7 images" in said and "1 unreadable file(s) skipped" in said
    warned = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warned) == 1 and warned[0].endswith("skipped 1 unreadable file(s): " + str(new / "broken.png"))
    rows = read_rows(out)
    assert list(rows[0]) == ["filename", "label_0", "prob_0", "label_1", "prob_1"]  # top 5 capped at 2
    names = [r["filename"] for r in rows]
    assert names == ["n0.png", "n1.png", "n2.png", "n3.png", "sub/n4.png", "sub/n5.png", "sub/n6.png"]
    logits = independent_logits(ft_run, pretrain_run, [new / n for n in names])
    probs = torch.softmax(logits, dim=-1)
    for row, p in zip(rows, probs, strict=True):
        got = [float(row["prob_0"]), float(row["prob_1"])]
        assert sum(got) == pytest.approx(1.0, abs=2e-6) and got[0] >= got[1]
        assert row["label_0"] == CLASSES[int(p.argmax())] and {row["label_0"], row["label_1"]} == set(CLASSES)
        assert got[0] == pytest.approx(float(p.max()), abs=1e-5)
    # two steps leave the logits within 1e-4 of each other: the run with a redrawn head ranks with margins
    assert main(["predict", str(strong_run), str(new), "--out", str(out), "--topk", "1"]) == 0
    rows = read_rows(out)
    assert list(rows[0]) == ["filename", "label_0", "prob_0"]
    probs = torch.softmax(independent_logits(strong_run, pretrain_run, [new / n for n in names]), dim=-1)
    assert (probs.max(dim=-1).values - probs.min(dim=-1).values).min() > 0.01
    assert [r["label_0"] for r in rows] == [CLASSES[int(i)] for i in probs.argmax(dim=-1)]
    np.testing.assert_allclose([float(r["prob_0"]) for r in rows], probs.max(dim=-1).values, atol=1e-5)


def test_a_killed_pass_resumes_and_writes_the_same_file(run, tmp_path, monkeypatch):
    _, ft_run, new = run
    predict(ft_run, new, tmp_path / "straight.csv", features=FP32)
    real, calls = EvalTransform.forward, {"n": 0}

    def dies_on_the_third_batch(self, images):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, images)

    monkeypatch.setattr(EvalTransform, "forward", dies_on_the_third_batch)
    monkeypatch.setattr(embed_module, "SAVE_EVERY_S", 1e9)  # no timed save: the interruption saves
    with pytest.raises(KeyboardInterrupt):
        predict(ft_run, new, tmp_path / "cut.csv", features=FP32)
    assert (tmp_path / "cut.progress.json").is_file() and not (tmp_path / "cut.csv").exists()
    counted = {"n": 0}

    def counting(self, images):
        counted["n"] += images.shape[0]
        return real(self, images)

    monkeypatch.setattr(EvalTransform, "forward", counting)
    r = predict(ft_run, new, tmp_path / "cut.csv", features=FP32)
    # batches of 2 over [broken, n0 | n1, n2 | n3, n4 | n5, n6]: the first two were on disk (4 files done),
    # the pass goes on at batch 4 // 2 = 2: the last 4 images
    assert counted["n"] == 4 and r["rows"] == 7 and r["skipped"] == 1
    assert (tmp_path / "cut.csv").read_bytes() == (tmp_path / "straight.csv").read_bytes()
    assert not (tmp_path / "cut.progress.json").exists() and not (tmp_path / "cut.partial.npy").exists()


def test_bad_input_is_one_line(run, tmp_path, capsys):
    pretrain_run, ft_run, new = run
    grey = tmp_path / "grey"
    grey.mkdir()
    for i in range(3):
        Image.new("L", (24, 24), color=60 * i).save(grey / f"g{i}.png")
    assert main(["predict", str(ft_run), str(grey)]) == 2
    line = one_error_line(capsys)
    assert "1-channel images (g0.png, ...)" in line and "takes 3-channel" in line
    assert "--convert-channels" in line
    out = tmp_path / "g.csv"
    assert main(["predict", str(ft_run), str(grey), "--convert-channels", "--out", str(out)]) == 0
    assert len(read_rows(out)) == 3
    deep = tmp_path / "deep"
    deep.mkdir()
    Image.fromarray(np.full((24, 24), 40000, dtype=np.uint16)).save(deep / "d.png")
    assert main(["predict", str(ft_run), str(deep)]) == 2
    assert "16-bit images (d.png, ...)" in one_error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(ft_run), str(tmp_path / "empty")]) == 2
    assert "no image files found" in one_error_line(capsys)
    assert main(["predict", str(ft_run), str(new), "--topk", "0"]) == 2
    assert "--topk must be a whole number >= 1" in one_error_line(capsys)
    assert main(["predict", str(new), str(new)]) == 2
    assert "is not a fine-tuning run (no classifier.json)" in one_error_line(capsys)
    bare = tmp_path / "bare_run"
    bare.mkdir()
    shutil.copy(pretrain_run / "config.yaml", bare / "config.yaml")
    assert main(["predict", str(bare), str(new)]) == 2
    assert f"run `mimkit eval finetune {bare}` first" in one_error_line(capsys)
    assert main(["predict", str(ft_run), str(new), "--out", str(tmp_path / "p.txt")]) == 2
    assert "must name a .csv file" in one_error_line(capsys)


# ----------------------------------------------------------------------------- exports


@pytest.fixture(scope="module")
def exported(run, strong_run, tmp_path_factory):
    """``(export dir, normalised new images, the classifier's logits on them, the tolerance)``."""
    from mimkit.interop_classifier import logit_tolerance

    pretrain_run, _, new = run
    out = tmp_path_factory.mktemp("export") / "out"
    assert main(["export", str(strong_run), str(out), "--format", "transformers", "timm", "onnx"]) == 0
    files = sorted(new.glob("n*.png")) + sorted((new / "sub").glob("*.png"))
    x = normalised(files, pretrain_run)
    model = independent_classifier(strong_run)
    with torch.no_grad():
        ours = model(x)
    assert ours.abs().max() > 0.5  # logits of order 1: the comparison means something
    # (2 depth + 2) products no longer than the MLP width 128, each off by 128 u at most (u = 2^-24)
    assert logit_tolerance(model) == pytest.approx(6 * 128 * 2**-24)
    return out, files, x, ours, logit_tolerance(model) * max(1.0, float(ours.abs().max()))


def test_the_transformers_export_gives_the_classifiers_logits_and_names(exported):
    out, files, x, ours, tolerance = exported
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForImageClassification.from_pretrained(out / "transformers").eval()
    assert type(hf).__name__ == "BeitForImageClassification"
    assert hf.config.id2label == {0: "blue", 1: "red"} and hf.config.label2id == {"blue": 0, "red": 1}
    with torch.no_grad():
        assert (hf(pixel_values=x).logits - ours).abs().max() <= tolerance
    # the image-classification pipeline: the run's normalisation in the image processor, names from id2label
    classify = transformers.pipeline("image-classification", model=str(out / "transformers"))
    probs = torch.softmax(ours.double(), dim=-1)
    for image, p in zip(files[:3], probs, strict=False):
        best = classify(Image.open(image))[0]
        assert best["label"] == CLASSES[int(p.argmax())]
        assert best["score"] == pytest.approx(float(p.max()), abs=1e-5)


def test_the_onnx_export_gives_the_classifiers_logits_and_the_card_its_scores(exported, strong_run):
    out, _, x, ours, tolerance = exported
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(out / "onnx" / "classifier.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": x.numpy()})
    assert np.abs(logits - ours.numpy()).max() <= tolerance
    card = (out / "README.md").read_text()
    top1 = json.loads((strong_run / "finetune.json").read_text())["test_top1"]
    assert f"top-1 {top1:.2f}% on 2 held-out images" in card and "BeitForImageClassification" in card


def test_the_timm_export_holds_the_head_and_the_class_names(exported):
    out, _, x, ours, tolerance = exported
    config = json.loads((out / "timm" / "config.json").read_text())
    assert config["pretrained_cfg"]["label_names"] == CLASSES and config["num_classes"] == 2
    assert config["model_args"]["global_pool"] == "avg" and config["model_args"]["fc_norm"] is True
    timm = pytest.importorskip("timm")  # needs torchvision: runs where timm imports
    model = timm.create_model(f"local-dir:{out / 'timm'}", pretrained=True).eval()
    assert model.pretrained_cfg["label_names"] == CLASSES
    with torch.no_grad():
        assert (model(x) - ours).abs().max() <= tolerance


def test_formats_that_cannot_hold_the_classifier_are_refused_in_one_line(run, tmp_path, capsys):
    from mimkit.eval.classifier import build_classifier
    from mimkit.eval.saved import SavedClassifier
    from mimkit.interop import export_run
    from mimkit.interop_classifier import export_classifier_transformers

    _, ft_run, _ = run
    wide = {"name": "vit_tiny_patch4_28", "img_size": [24, 32], "in_chans": 3, "embed_dim": 32, "depth": 1,
            "num_heads": 2}  # fmt: skip
    saved = SavedClassifier(build_classifier(wide, 2), {"classes": CLASSES, "dtype": "uint8"}, tmp_path,
                            tmp_path / "last.pt", {})  # fmt: skip
    with pytest.raises(ValueError, match="square images; this one is avg-pooled at 24x32: export it with "
                       "--format timm onnx"):  # fmt: skip
        export_classifier_transformers(saved, tmp_path / "t")
    assert not (tmp_path / "t").exists()
    with pytest.raises(ValueError, match="is a fine-tuning run: its classifier exports with"):
        export_run(str(ft_run), str(tmp_path / "e"), ["onnx"])
    assert main(["export", str(ft_run), str(tmp_path / "e.safetensors")]) == 2
    assert "is a fine-tuning run: export its classifier with --format" in one_error_line(capsys)


def test_frozen_protocols_read_a_fine_tuned_runs_encoder(run, tmp_path):
    """``mimkit knn FT_RUN`` evaluates the fine-tuned encoder (not its config: once an unknown-key error),
    on the data of the pretraining run it started from: its tokens are those of the encoder built here."""
    from mimkit.eval_sources import EncoderChoice, load_encoder

    pretrain_run, ft_run, _ = run
    loaded = load_encoder(EncoderChoice(str(ft_run)))
    assert loaded.data.root == str(pretrain_run.parent.parent / "imgs")
    x = torch.randn(3, 3, 24, 24)
    with torch.no_grad():
        ours = loaded.encoder.eval().forward_features(x)
        theirs = independent_classifier(ft_run).forward_features(x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert main(["eval", "knn", str(ft_run), "--k", "3", "--device", "cpu", "--no-cache"]) == 0
