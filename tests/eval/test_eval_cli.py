"""``mimkit eval ...`` end to end on a few hundred Fashion-MNIST images, and its one-line errors."""

import argparse
import json
import math
import os

import pytest
import torch
from PIL import Image

from mimkit.cli import main as cli_main
from mimkit.data import load_idx
from mimkit.eval_cli import add_eval_parsers, run_eval
from mimkit.eval_protocols import evaluate_knn
from mimkit.eval_sources import DataChoice, EncoderChoice, FeatureOptions, load_encoder
from mimkit.models import create_encoder
from mimkit.weights import extract_state_dict, read_checkpoint

FMNIST = "/usr/share/datasets/fashion-mnist"
pytestmark = pytest.mark.skipif(not os.path.isdir(FMNIST), reason="dataset-fashion-mnist is not installed")

LIMITS = ["--train-limit", "300", "--test-limit", "100"]


def eval_main(argv):
    parser = argparse.ArgumentParser(prog="mimkit")
    add_eval_parsers(parser.add_subparsers(dest="command", required=True))
    return run_eval(parser.parse_args(["eval", *argv]))


@pytest.fixture(scope="module")
def run_dir(tiny_mae_run):
    return tiny_mae_run


def test_knn_several_k_shares_cached_features(run_dir, capsys):
    assert eval_main(["knn", str(run_dir), "--k", "1", "20", "--compare-random", *LIMITS]) == 0
    out = capsys.readouterr().out
    assert "pretrained" in out and "random init" in out and "k=20:" in out
    cached = list((run_dir / "eval" / "feature_cache").glob("features-*.pt"))
    assert len(cached) == 4  # {pretrained, random} x {train, test}
    stamps = {p: p.stat().st_mtime_ns for p in cached}
    limits = DataChoice(train_limit=300, test_limit=100)
    results = evaluate_knn(EncoderChoice(str(run_dir)), limits, ks=(5,), compare_random=True)
    assert {p: p.stat().st_mtime_ns for p in cached} == stamps  # read, not rewritten
    assert all(0 <= r["knn"][5] <= 100 for r in results.values())
    assert all(r["chance"]["images"] == 100 for r in results.values())  # the test images the scores are on


def test_linear_probe(run_dir, tmp_path, capsys):
    assert (
        eval_main(
            [
                "linear",
                str(run_dir),
                "--out",
                str(tmp_path),
                *LIMITS,
                "--set",
                "epochs=2",
                "warmup_epochs=0",
                "batch_size=64",
                "blrs=[0.1, 1.0]",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "linear probe (token features)" in out and "chosen on 30 held-out" in out
    result = json.loads((tmp_path / "pretrained_token" / "linear_probe.json").read_text())
    # the record mimkit compare reads: the score, the settings that change it, the images it is on
    record = json.loads((tmp_path / "pretrained_token" / "evaluation.json").read_text())
    assert (record["protocol"], record["encoder"], record["variant"]) == (
        "linear",
        "pretrained",
        {"pool": "token"},
    )
    assert record["scores"] == {"top1": result["test_top1"]}
    assert record["settings"]["epochs"] == 2 and record["settings"]["blrs"] == [0.1, 1.0]
    assert "device" not in record["settings"] and "log_every" not in record["settings"]
    assert (record["data"]["train"]["images"], record["data"]["test"]["images"]) == (300, 100)


def test_partial_finetune_on_a_label_fraction(run_dir, tmp_path, capsys):
    assert (
        eval_main(
            [
                "finetune",
                str(run_dir),
                "--out",
                str(tmp_path),
                "--train-blocks",
                "1",
                "--label-fraction",
                "0.5",
                *LIMITS,
                "--set",
                "train.epochs=1",
                "train.batch_size=32",
                "train.progress=false",
                "train.tensorboard=false",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    counts = torch.bincount(load_idx(FMNIST, "train")[1][:300])
    expected = sum(max(1, math.floor(0.5 * int(n) + 0.5)) for n in counts)  # round(n_c / 2) per class
    assert "last 1 block(s)" in out and f"50% of the labels = {expected} images" in out
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["config"]["method"] == {"name": "finetune", "train_blocks": 1, "train_images": expected}
    assert (tmp_path / "label_subsets.json").is_file()
    record = json.loads((tmp_path / "evaluation.json").read_text())
    assert record["variant"] == {"label_fraction": 0.5, "train_blocks": 1}
    assert record["scores"] == {"top1": json.loads((tmp_path / "finetune.json").read_text())["test_top1"]}
    assert (record["data"]["train"]["images"], record["data"]["test"]["images"]) == (expected, 100)
    assert record["settings"]["train.epochs"] == 1 and record["settings"]["train_blocks"] == 1


@pytest.mark.parametrize("extra, decay", [([], 1.0), (["layer_decay=0.5"], 0.5)])
def test_random_init_finetune_has_no_layer_decay_unless_asked(run_dir, tmp_path, extra, decay):
    settings = ["train.epochs=1", "train.batch_size=64", "train.progress=false", "train.tensorboard=false"]
    argv = ["finetune", str(run_dir), "--random-init", "--out", str(tmp_path), *LIMITS, "--set", *settings]
    assert eval_main([*argv, *extra]) == 0
    stored = torch.load(tmp_path / "last.pt", weights_only=True)["config"]
    assert stored["encoder"]["init"] == "random init"
    assert stored["finetune"]["layer_decay"] == decay


def test_tsne_png(run_dir, tmp_path):
    pytest.importorskip("sklearn")
    assert (
        eval_main(
            [
                "tsne",
                str(run_dir),
                "--out",
                str(tmp_path / "t.png"),
                "--test-limit",
                "60",
                "--max-iter",
                "250",
            ]
        )
        == 0
    )
    with Image.open(tmp_path / "t.png") as img:
        assert img.format == "PNG"


def test_reference_format_encoder_file_with_name(tmp_path, capsys):
    # a timm / reference-MAE style file: {"model": encoder state dict}, standard names, built from --encoder
    torch.manual_seed(0)
    encoder = create_encoder("vit_tiny_patch4_28")
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": encoder.state_dict()}, path)
    loaded = load_encoder(EncoderChoice(str(path), "vit_tiny_patch4_28"))
    assert loaded.run_dir is None and loaded.checkpoint == path
    for name, value in encoder.state_dict().items():
        assert torch.equal(loaded.encoder.state_dict()[name], value), name
    assert (
        eval_main(
            [
                "knn",
                str(path),
                "--encoder",
                "vit_tiny_patch4_28",
                "--k",
                "5",
                "--train-limit",
                "50",
                "--test-limit",
                "20",
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    assert "k=5:" in capsys.readouterr().out


def test_teacher_of_a_sit_run(run_dir, tmp_path, capsys):
    run = tmp_path / "sit"
    tiny = ["encoder.embed_dim=32", "encoder.depth=1", "encoder.num_heads=2", "method.recon_hidden_dim=32"]
    tiny += ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.momentum=0.9", "data.limit=64"]
    tiny += ["train.batch_size=32", "train.warmup_epochs=0"]
    tiny += ["train.epochs=1", "train.progress=false", "train.tensorboard=false", f"output_dir={run}"]
    assert cli_main(["pretrain", "--config", "configs/sit_fashion_mnist.yaml", *tiny]) == 0
    state = extract_state_dict(read_checkpoint(run / "last.pt"))
    teacher = {
        k.removeprefix("teacher_encoder."): v for k, v in state.items() if k.startswith("teacher_encoder.")
    }
    student = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    assert teacher.keys() == student.keys()
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)  # the EMA lags the student

    loaded = load_encoder(EncoderChoice(str(run), teacher=True))
    got = loaded.encoder.state_dict()
    assert got.keys() == teacher.keys() and all(torch.equal(got[k], teacher[k]) for k in teacher)
    limits = ["--train-limit", "64", "--test-limit", "32", "--k", "5"]
    assert eval_main(["knn", str(run), "--teacher", *limits]) == 0
    assert eval_main(["knn", str(run), *limits]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("kNN")]
    assert "teacher" in lines[0] and "pretrained" in lines[1]
    cached = {p: torch.load(p)["features"] for p in (run / "eval" / "feature_cache").glob("features-*.pt")}
    assert len(cached) == 4  # {teacher, student} x {train, test}: the teacher's features have their own key
    train = [f for f in cached.values() if len(f) == 64]
    assert len(train) == 2 and not torch.equal(*train)

    limits = ["--train-limit", "64", "--test-limit", "32", "--fractions", "0.5", "--epochs", "1"]
    assert eval_main(["label-efficiency", str(run), "--teacher", "--no-random", *limits]) == 0
    assert capsys.readouterr().out.split()[0] == "teacher"
    table = (run / "eval" / "label_efficiency_teacher" / "label_efficiency.md").read_text()
    assert "| teacher |" in table and "pretrained" not in table

    with pytest.raises(ValueError, match="holds no teacher encoder: its method 'mae'") as err:
        eval_main(["knn", str(run_dir), "--teacher"])
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="--teacher and --random-init exclude each other"):
        eval_main(["finetune", str(run), "--teacher", "--random-init"])


# ----------------------------------------------------------------------------- bad input: one line each


def test_checkpoint_without_encoder(tmp_path):
    path = tmp_path / "head_only.pt"
    torch.save({"model": {"head.weight": torch.zeros(10, 4)}}, path)
    with pytest.raises(ValueError, match=f"{path} holds no encoder") as err:
        evaluate_knn(EncoderChoice(str(path), encoder_name="vit_tiny_patch4_28"))
    assert "\n" not in str(err.value)


def test_dataset_without_labels(run_dir, tmp_path):
    folder = tmp_path / "flat"
    (folder / "test").mkdir(parents=True)
    for split in ("", "test/"):
        for i in range(30):
            Image.new("L", (28, 28), color=i * 8).save(folder / f"{split}img{i}.png")
    with pytest.raises(ValueError, match=f"needs labeled data.*{folder}") as err:
        evaluate_knn(EncoderChoice(str(run_dir)), DataChoice(source="folder", root=str(folder)))
    assert "\n" not in str(err.value)


def test_label_fraction_outside_unit_interval(run_dir):
    with pytest.raises(ValueError, match="label fraction 1.5 is outside"):
        eval_main(["finetune", str(run_dir), "--label-fraction", "1.5"])


def test_k_larger_than_bank(run_dir):
    with pytest.raises(ValueError, match=r"k=500 is outside \[1, 300\]"):
        evaluate_knn(EncoderChoice(str(run_dir)), DataChoice(train_limit=300, test_limit=100), ks=(20, 500))


def test_default_ks_follow_a_small_bank(run_dir, caplog):
    """The defaults 10 / 20 / 100 / 200 on a bank of 150 images: 10, 20 and 100 scored, 200 left out in a
    line (an explicit k over the bank is still the error above)."""
    with caplog.at_level("INFO", logger="mimkit"):
        results = evaluate_knn(EncoderChoice(str(run_dir)), DataChoice(train_limit=150, test_limit=50))
    assert sorted(results["pretrained"]["knn"]) == [10, 20, 100]
    assert any(
        "k=200 left out: the memory bank has 150 training images" in r.getMessage() for r in caplog.records
    )


def test_shared_inputs_are_checked_when_made():
    with pytest.raises(ValueError, match="pool must be one of token, avg, got 'max'"):
        FeatureOptions(pool="max")
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp16, fp32"):
        FeatureOptions(precision="fp8")
    with pytest.raises(ValueError, match="test_limit must be a positive number of images, got 0"):
        DataChoice(test_limit=0)


def test_every_protocol_takes_the_shared_arguments_from_the_same_parents():
    parser = argparse.ArgumentParser(prog="mimkit")
    add_eval_parsers(parser.add_subparsers(dest="command", required=True))
    shared = ["run", "--encoder", "vit_tiny_patch4_28", "--teacher", "--seed", "3", "--source", "folder"]
    shared += ["--data-root", "d", "--train-limit", "5", "--test-limit", "6"]
    for protocol in ("knn", "linear", "finetune", "label-efficiency", "tsne"):
        args = vars(parser.parse_args(["eval", protocol, *shared]))
        assert {k: args[k] for k in ("checkpoint", "encoder_name", "teacher", "seed")} == {
            "checkpoint": "run",
            "encoder_name": "vit_tiny_patch4_28",
            "teacher": True,
            "seed": 3,
        }
        assert (args["source"], args["root"], args["train_limit"], args["test_limit"]) == (
            "folder",
            "d",
            5,
            6,
        )
        assert ("pool" in args) == (protocol in ("knn", "linear", "tsne"))  # frozen protocols only
