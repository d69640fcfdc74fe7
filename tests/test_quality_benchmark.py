"""benchmarks/quality_fashion_mnist.py: row names, the per-method target lines, the training subset."""

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

from mimkit.data.datasets import ImageDataset
from mimkit.engine import load_config

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "quality_fashion_mnist", ROOT / "benchmarks/quality_fashion_mnist.py"
)
quality = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quality)


@pytest.mark.parametrize(
    "config, name",
    [
        ("mae_fashion_mnist.yaml", "mimkit MAE"),
        ("simmim_vit_fashion_mnist.yaml", "mimkit SimMIM"),
        ("simmim_swin_fashion_mnist.yaml", "mimkit SimMIM (Swin)"),
        ("sit_fashion_mnist.yaml", "mimkit SiT"),
        ("gmml_fashion_mnist.yaml", "mimkit GMML"),
    ],
)
def test_row_name_per_recipe(config, name):
    assert quality.method_row_name(load_config(ROOT / "configs" / config)) == name


def _row(name, knn, linear, finetune=None, pool="token"):
    return {
        "name": name,
        "frozen": {
            pool: {
                "knn": {20: knn},
                "linear": {"test_top1": linear, "best_blr": 1.0, "holdout_top1": {1.0: linear}},
            }
        },
        "finetune": finetune or {},
    }


def _rows(knn, linear, mine_ft, random_ft, pixels_knn=70.0, peer=None):
    rows = [_row("mimkit X", knn, linear, mine_ft), _row("random init", 50.0, 60.0, random_ft)]
    if peer is not None:
        rows.append(_row("transformers ViTMAE (peer)", *peer))
    return rows + [_row("raw pixels", pixels_knn, 80.0, pool="pixels")]


def test_mae_targets_met_and_missed():
    # kNN 76 >= 75 met; linear 81.9 < 82 missed; FT 100% exactly 92 met (>=); 1% gain 60 - 54.5 = 5.5 >= 5 met
    rows = _rows(76.0, 81.9, {0.01: 60.0, 1.0: 92.0}, {0.01: 54.5, 1.0: 90.0}, peer=(70.0, 80.0))
    lines = quality.target_lines("mae", rows, "token")
    assert "- MAE kNN (k=20) >= 75%: 76.00 -> met" in lines
    assert "- MAE linear probe >= 82%: 81.90 -> not met" in lines
    assert "- fine-tuning, 100% of the labels >= 92%: 92.00 -> met" in lines
    assert "- fine-tuning, 1% of the labels, pretrained - random init >= 5 points: 5.50 -> met" in lines
    assert "- mimkit ahead of the peer on kNN and linear probe: yes" in lines
    assert not any("small data" in line for line in lines)


def test_mae_without_peer_or_finetuning():
    lines = quality.target_lines("mae", _rows(76.0, 83.0, {}, {}), "token")
    assert "- mimkit ahead of the peer: not measured (no peer row)" in lines
    assert "- fine-tuning, 100% of the labels >= 92%: - -> not met" in lines


def test_sit_targets_and_the_raw_pixel_bar():
    rows = _rows(86.0, 86.5, {0.01: 40.0, 1.0: 88.0}, {0.01: 35.0}, pixels_knn=85.5)
    lines = quality.target_lines("sit", rows, "token")
    assert "- SiT kNN (k=20) >= 85%: 86.00 -> met" in lines
    assert "- SiT linear probe >= 87%: 86.50 -> not met" in lines
    assert "- fine-tuning, 100% of the labels: 88.00 (no target)" in lines
    assert "- fine-tuning, 1% of the labels, pretrained - random init: 5.00 (no target)" in lines
    bar = [line for line in lines if "raw pixels" in line]
    assert bar == [
        "- SiT kNN (k=20) above raw pixels' 85.50 (raw-pixel kNN is the real bar on Fashion-MNIST): yes"
    ]
    below = quality.target_lines("sit", _rows(84.0, 88.0, {}, {}, pixels_knn=85.5), "token")
    assert any(
        line.startswith("- SiT kNN (k=20) above raw pixels'") and line.endswith(": no") for line in below
    )
    assert not any("peer" in line for line in lines)


@pytest.mark.parametrize("method, label", [("simmim", "SimMIM"), ("gmml", "GMML")])
def test_no_numeric_targets(method, label):
    rows = _rows(60.0, 70.0, {0.01: 40.0, 1.0: 85.0}, {0.01: 45.0, 1.0: 80.0})
    lines = quality.target_lines(method, rows, "token")
    assert lines[0] == f"No numeric targets for {label} in the issues: the lines below are information."
    assert not any("met" in line for line in lines)
    assert "- fine-tuning, 1% of the labels, pretrained - random init: -5.00 (no target)" in lines
    assert "- fine-tuning, 100% of the labels: 85.00 (no target)" in lines


def test_small_data_line_compares_full_subset_finetuning():
    subset = {"images": 6000}
    rows = _rows(80.0, 85.0, {0.01: 40.0, 1.0: 80.0}, {0.01: 38.0, 1.0: 77.5})
    line = quality.target_lines("sit", rows, "token", subset)[-1]
    assert line == (
        "- small data: fine-tuning on 100% of the 6,000-image subset, pretrained 80.00 vs random init 77.50: "
        "+2.50 points -> pretraining ahead"
    )
    rows = _rows(80.0, 85.0, {1.0: 70.0}, {1.0: 77.5})
    assert quality.target_lines("sit", rows, "token", subset)[-1].endswith(
        "-7.50 points -> pretraining not ahead"
    )


def _dataset(counts):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))]
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    return ImageDataset(labels, ["a", "b", "c"], 1, (2, 2), (0.5,), (0.25,), images=images)


def test_training_subset_is_per_class_and_seeded():
    full = _dataset([60, 30, 10])
    subset, record = quality.training_subset(full, 0.1)
    assert torch.bincount(subset.labels, minlength=3).tolist() == [6, 3, 1]  # round(0.1 * n_c) per class
    original = subset.images[:, 0, 0, 0].long()  # each image holds its index in the full set
    assert torch.equal(full.labels[original], subset.labels)
    assert len(set(original.tolist())) == 10
    assert (subset.mean, subset.std) == (full.mean, full.std)
    again, _ = quality.training_subset(full, 0.1)
    assert torch.equal(again.images, subset.images)
    assert record["images"] == 10 and record["of"] == 100 and record["seed"] == quality.SUBSET_SEED
    assert (
        record["description"]
        == "10 images = 10% per class of the 100 training images (per-class draw, seed 0)"
    )


def test_training_subset_whole_and_invalid():
    full = _dataset([6, 4, 2])
    same, record = quality.training_subset(full, 1.0)
    assert same is full and record["images"] == 12
    assert record["description"] == "all 12 training images"
    with pytest.raises(ValueError, match="outside"):
        quality.training_subset(full, 0.0)


def test_resumed_pretraining_goes_on_with_the_training_clock(tmp_path):
    """A run resumed by a new process keeps the training time its first process spent (the trainer's
    checkpoint holds it): the curve's time axis and the budget go on from there, the curve is read back."""
    from mimkit.engine.checkpoint import load_checkpoint, save_atomic

    cfg = load_config(
        ROOT / "configs/mae_fashion_mnist.yaml",
        [
            "encoder.img_size=8",
            "encoder.embed_dim=16",
            "encoder.depth=1",
            "encoder.num_heads=2",
            "method.decoder_dim=16",
            "method.decoder_depth=1",
            "method.decoder_heads=2",
            "data.augment=none",
            "train.batch_size=8",
            "train.warmup_epochs=0",
            "train.precision=fp32",
            "train.device=cpu",
            "train.progress=false",
            "train.tensorboard=false",
        ],
    )
    labels = torch.arange(32) % 2
    images = torch.randint(
        0, 256, (32, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    data = ImageDataset(labels, ["a", "b"], 1, (8, 8), (0.5,), (0.25,), images=images)
    run = tmp_path / "run"

    def pretrain(max_epochs):  # a 60-minute budget: only max_epochs (4 steps each) bounds these runs
        args = argparse.Namespace(curve_every=1, pools=["avg"], minutes=60.0, max_epochs=max_epochs)
        config = {"method": cfg.method}
        make = lambda: quality.build_method(cfg, data)  # noqa: E731
        return quality.pretrain_for_budget(make, cfg, data, data, run, lambda m: m.encoder, args, config)[1]

    def set_elapsed(seconds):  # as if the first process had trained for this long
        state = load_checkpoint(run / "last.pt")
        save_atomic({**state, "elapsed_s": seconds}, run / "last.pt")

    first = pretrain(1)
    assert [p["epoch"] for p in first["curve"]] == [0, 1] and first["steps"] == 4
    assert first["curve"][0]["train_seconds"] == 0.0
    set_elapsed(1000.0)
    result = pretrain(2)  # a new process resumes the run from epoch 1 and trains epoch 2
    assert [p["epoch"] for p in result["curve"]] == [0, 1, 2]
    assert result["curve"][:2] == first["curve"]  # read back, not measured again
    assert 1000.0 < result["curve"][2]["train_seconds"] < 1000.0 + 120.0
    assert result["train_seconds"] >= result["curve"][2]["train_seconds"]
    assert result["steps"] == 8 and result["epochs"] == 2.0 and not result["stopped_early"]
    # the budget counts the carried time too: 4000 s > 60 min, so no step of epoch 3 is taken
    set_elapsed(4000.0)
    result = pretrain(3)
    assert result["stopped_early"] and result["steps"] == 8
    assert [p["epoch"] for p in result["curve"]] == [0, 1, 2]


def test_a_run_directory_of_another_training_set_is_refused(tmp_path):
    cfg = load_config(
        ROOT / "configs/mae_fashion_mnist.yaml",
        ["encoder.img_size=8", "encoder.embed_dim=16", "encoder.depth=1", "encoder.num_heads=2",
         "method.decoder_dim=16", "method.decoder_depth=1", "method.decoder_heads=2", "data.augment=none",
         "train.batch_size=8", "train.precision=fp32", "train.device=cpu", "train.progress=false",
         "train.tensorboard=false"],
    )  # fmt: skip
    args = argparse.Namespace(curve_every=10, pools=["avg"], minutes=60.0, max_epochs=1)

    def pretrain(n):
        images = torch.zeros(n, 1, 8, 8, dtype=torch.uint8)
        data = ImageDataset(torch.arange(n) % 2, ["a", "b"], 1, (8, 8), (0.5,), (0.25,), images=images)
        make = lambda: quality.build_method(cfg, data)  # noqa: E731
        config = {"method": cfg.method}
        return quality.pretrain_for_budget(make, cfg, data, data, tmp_path, lambda m: m.encoder, args, config)

    pretrain(32)
    with pytest.raises(ValueError, match="'train_images': 32"):
        pretrain(40)


def test_finetune_recipe_layers_overrides_on_the_report_recipe():
    recipe = quality.finetune_recipe([], "cpu")
    for key, value in quality.FT_RECIPE.items():
        assert getattr(recipe, key) == value
    assert recipe.train.blr == quality.FT_BLR and recipe.train.device == "cpu"
    # MAE's schedule shape: warm-up 5% of the epochs, which run_label_efficiency rescales per fraction
    assert recipe.train.warmup_epochs / recipe.train.epochs == pytest.approx(0.05)
    changed = quality.finetune_recipe(["crop_scale=[0.35, 1.0]", "train.blr=1e-3"], "auto")
    assert changed.crop_scale == [0.35, 1.0] and changed.train.blr == 1e-3
    assert changed.mixup == 0 and changed.randaug_n == 0  # the rest of FT_RECIPE stays


@pytest.mark.parametrize(
    "item, says",
    [
        ("bogus=1", "unknown config key 'bogus'"),
        ("crop_scale=[2, 1]", "crop_scale must be a pair"),
        ("crop_scale", "not of the form key.sub=value"),
    ],
)
def test_bad_finetune_override_is_one_parser_error(tmp_path, capsys, item, says):
    with pytest.raises(SystemExit) as exit_info:
        quality.main(["--finetune-set", item, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--finetune-set" in err and says in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing started


def test_a_finetuning_run_at_chance_is_marked_in_the_table_and_the_targets(tmp_path):
    rows = _rows(76.0, 83.0, {0.01: 60.0, 1.0: 92.0}, {0.01: 10.2, 1.0: 77.0})
    rows[1]["ft_at_chance"] = [0.01]  # the random init's 1% run collapsed
    lines = quality.target_lines("mae", rows, "token")
    assert (
        "- fine-tuning, 1% of the labels, pretrained - random init >= 5 points: 49.80 -> met "
        "(random init (at chance): overstated)"
    ) in lines
    assert "- fine-tuning, 100% of the labels >= 92%: 92.00 -> met" in lines  # no caveat on other lines
    meta = {
        "pools": ["token"],
        "date": "2026-12-01T19:00",
        "command": "python quality.py",
        "machine": "Intel(R) Xeon(R) Processor (AMX bf16), 2 CPU cores",
        "torch": "2.13.0",
        "train_data": "all 60,000 training images",
        "test_images": 10000,
        "method": "mae",
        "pretrain": {},
        "eval_seconds": {},
        "notes": [],
    }
    quality.write_report(tmp_path, rows, meta, {})
    table = (tmp_path / "results.md").read_text()
    assert "| random init | 50.00 | 60.00 | 10.20 (at chance) | - | 77.00 |" in table
    assert "| mimkit X | 76.00 | 83.00 | 60.00 | - | 92.00 |" in table
    assert "Machine: Intel(R) Xeon(R) Processor (AMX bf16), 2 CPU cores;" in table


def test_machine_line_names_the_cpu_and_its_fastest_bf16_instructions():
    cpu_name = quality._timing.cpu_name
    intel = (
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx512f avx512_bf16 "
        "amx_bf16 amx_tile\n\nprocessor\t: 1\nmodel name\t: a second entry\nflags\t\t: fpu\n"
    )
    assert cpu_name(intel) == "Intel(R) Xeon(R) Processor (AMX bf16)"  # the first processor's entry
    assert cpu_name("model name : AMD EPYC 9R14\nflags : avx2 avx512f avx512_bf16\n") == (
        "AMD EPYC 9R14 (AVX-512 bf16)"
    )
    assert cpu_name("model name: Older Xeon\nflags: avx2 avx512f\n") == "Older Xeon"
    assert cpu_name("") != ""  # no /proc/cpuinfo: the platform's processor or architecture
