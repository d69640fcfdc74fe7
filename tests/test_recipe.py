"""The recipe chosen from a folder and the machine (mimkit.recipe): facts read right, choices worked out by
hand from the plan's rules, the command line's values winning, the record kept with the run."""

import json
import re

import numpy as np
import pytest
import yaml
from PIL import Image

from mimkit.cli import main
from mimkit.recipe import Fingerprint, Machine, fingerprint, plan

CPU = Machine(device="cpu", precision="bf16", memory_gb=24.0, cores=2)
GPU = Machine(device="cuda", precision="bf16", memory_gb=80.0, cores=16)


def _folder(root, sizes_per_class, mode="RGB"):
    rng = np.random.default_rng(0)
    for name, sizes in sizes_per_class.items():
        (root / name).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            if mode == "I;16":
                Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16)).save(
                    root / name / f"{i}.png"
                )
            else:
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).convert(mode).save(root / name / f"{i}.png")
    return root


def test_fingerprint_reads_counts_sizes_bands_and_depth(tmp_path):
    sizes = {"a": [(40, 60)] * 5, "b": [(50, 70)] * 7, "c": [(30, 30)] * 4}
    fp = fingerprint(_folder(tmp_path / "rgb", sizes))
    assert fp.images == 16 and fp.classes == {"a": 5, "b": 7, "c": 4}
    # 16 heights sorted: 4 x 30, 5 x 40, 7 x 50 -> the median (mean of the 8th and 9th) is 40 (40, 40)
    assert (fp.height, fp.width) == (40, 60) and fp.channels == 3 and fp.bit_depth == 8
    assert fp.short_side == 30  # the 10th percentile of the shorter sides: index 16 // 10 = 1 -> 30
    assert not fp.has_test
    # no test part: the split holds out round(0.2 n) of each class, at least 1: 1 + 1 + 1 (5, 7, 4 images)
    assert fp.held_out == 3 and fp.pretrain_images == 13
    assert fingerprint(tmp_path / "rgb", holdout=None).held_out == 0
    grey16 = fingerprint(_folder(tmp_path / "deep", {"x": [(32, 32)] * 3}, mode="I;16"))
    assert (grey16.channels, grey16.bit_depth, grey16.classes) == (1, 16, {"x": 3})


def test_fingerprint_of_a_folder_with_a_split_reads_its_train_part(tmp_path):
    _folder(tmp_path / "train", {"a": [(24, 24)] * 6, "b": [(24, 24)] * 6})
    _folder(tmp_path / "test", {"a": [(24, 24)] * 2, "b": [(24, 24)] * 2})
    fp = fingerprint(tmp_path)
    assert fp.images == 12 and fp.has_test and fp.held_out == 0


def _fp(images=1000, short=64, channels=3, depth=8):
    return Fingerprint("x", images, {}, short, short, short, channels, depth, False)


def _values(choices):
    return {c.key: c.value for c in choices}


def test_plan_for_small_rgb_photos_on_a_cpu():
    v = _values(plan(_fp(images=1000, short=64), CPU))
    assert (v["data.img_size"], v["encoder.patch_size"]) == (64, 8)  # an 8x8 grid
    assert v["encoder.name"] == "vit_tiny_patch16"
    # batch 256 -> 3 steps, 128 -> 7 steps: halved until 1000 // 64 = 15 >= 8 steps per epoch
    assert v["train.batch_size"] == 64
    assert v["train.warmup_epochs"] == 14  # ceil(200 steps / 15 steps per epoch)
    assert v["train.max_minutes"] == 10.0 and v["train.precision"] == "bf16"
    # a schedule the user shortens keeps its warm-up to a tenth of it: 25 epochs -> 2 (not 14)
    assert _values(plan(_fp(images=1000, short=64), CPU, {"train.epochs": 25}))["train.warmup_epochs"] == 2
    assert "data.clip" not in v


def test_plan_caps_the_size_on_a_cpu_and_follows_the_images_on_a_gpu():
    v = _values(plan(_fp(images=5000, short=300), CPU))
    assert (v["data.img_size"], v["encoder.patch_size"], v["train.batch_size"]) == (96, 8, 256)
    v = _values(plan(_fp(images=200_000, short=500), GPU))
    assert (v["data.img_size"], v["encoder.patch_size"], v["encoder.name"]) == (224, 16, "vit_base_patch16")
    assert (v["method.decoder_dim"], v["method.decoder_depth"]) == (512, 8)  # the MAE paper's
    assert v["train.max_minutes"] == 60.0
    v = _values(plan(_fp(images=3000, short=28, channels=1), CPU))
    assert (v["data.img_size"], v["encoder.patch_size"], v["data.channels"]) == (28, 4, 1)


def test_plan_picks_the_method_for_the_folder_and_the_machine():
    v = _values(plan(_fp(images=1000), CPU))
    assert v["method.name"] == "sit" and v["encoder.depth"] == 6 and v["data.augment"] == "none"
    v = _values(plan(_fp(images=200_000), CPU))
    assert v["method.name"] == "mae" and v["method.mask_ratio"] == 0.75 and v["train.blr"] == 1e-3
    v = _values(plan(_fp(images=1000, short=64), CPU, {"method.name": "simmim"}))
    assert v["method.mask_patch_size"] == 16 and v["method.mask_ratio"] == 0.6  # 2 x 2 patches of 8 px
    v = _values(plan(_fp(images=1000), GPU))
    assert v["method.name"] == "mae"


def test_plan_clips_deep_images_and_keeps_every_band():
    v = _values(plan(_fp(images=800, short=64, channels=13, depth=16), CPU))
    assert v["data.clip"] == [0.5, 99.5] and v["data.channels"] == 13 and v["method.name"] == "mae"
    # a window or per-volume percentiles set the range already: no second clip to flatten bright lesions
    for given in ({"data.window": "soft_tissue"}, {"data.volume.percentiles": [0.5, 99.5]}):
        assert "data.clip" not in _values(plan(_fp(images=800, short=64, depth=32), CPU, given))


TINY = [
    "method.name=mae",
    "encoder.embed_dim=32",
    "encoder.depth=1",
    "encoder.num_heads=2",
    "method.decoder_dim=16",
    "method.decoder_depth=1",
    "method.decoder_heads=2",
    "train.max_steps=2",
    "train.precision=fp32",
    "train.progress=false",
    "train.tensorboard=false",
]


def test_pretrain_on_a_folder_plans_records_and_resumes_with_its_recipe(tmp_path, caplog):
    images = _folder(tmp_path / "imgs", {"a": [(24, 24)] * 10, "b": [(24, 24)] * 10})
    out = tmp_path / "run"
    caplog.set_level("INFO", logger="mimkit")
    assert main(["pretrain", str(images), f"output_dir={out}", "train.batch_size=8", *TINY]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["data"]["img_size"] == 24 and config["encoder"]["patch_size"] == 4
    assert config["train"]["batch_size"] == 8  # the command line's value, not the plan's
    record = json.loads((out / "recipe.json").read_text())
    assert record["fingerprint"]["images"] == 20 and record["fingerprint"]["classes"] == {"a": 10, "b": 10}
    assert any(c["key"] == "data.img_size" and c["value"] == 24 for c in record["choices"])
    assert re.search(r"train\.batch_size +8 +set on the command line", caplog.text)
    # the warm-up follows the batch given: 16 images to pretrain on // 8 = 2 steps per epoch -> ceil(200 / 2)
    # = 100 epochs, at most a tenth of the 800 planned: 80
    assert config["train"]["warmup_epochs"] == 80
    caplog.clear()
    assert main(["pretrain", str(images), f"output_dir={out}", *TINY[:-4], "train.max_steps=3"]) == 0
    assert "has a recipe already" in caplog.text


def test_pretrain_without_a_folder_or_a_recipe_is_one_line(capsys):
    assert main(["pretrain", "train.epochs=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mimkit: error: give a folder of images") and "\n" not in err


@pytest.mark.parametrize("argv", [["pretrain", "/no/such/folder"], ["pretrain", "a", "b"]])
def test_bad_folder_arguments_are_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mimkit: error:") and "\n" not in err


def test_a_refused_folder_leaves_no_run_behind(tmp_path, capsys):
    images = _folder(tmp_path / "imgs", {"a": [(24, 24)] * 6, "b": [(24, 24)]})  # b: one image, no split
    out = tmp_path / "run"
    assert main(["pretrain", str(images), f"output_dir={out}", *TINY]) == 2
    assert "class 'b'" in capsys.readouterr().err
    assert not (out / "recipe.json").exists() and not (out / "config.yaml").exists()


def test_the_batch_reason_says_when_the_folder_is_too_small_for_the_steps_wanted():
    choices = {c.key: c for c in plan(_fp(images=49), CPU)}
    assert choices["train.batch_size"].value == 16  # 49 // 16 = 3 steps: the floor, not 8 steps
    assert "the smallest batch, 3 steps per epoch" in choices["train.batch_size"].reason
