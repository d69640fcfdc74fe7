"""The fine-tuning recipe planned from the labeled set and the encoder: hand-worked plans, the user's
values winning, the record and the table."""

import json
import logging
import math

import pytest
import torch

from mimkit.choices import table
from mimkit.data.datasets import ImageDataset
from mimkit.eval import planner
from mimkit.eval.planner import EncoderShape, LabeledSet, choose_finetune, few_images_note, plan_finetune

TINY = EncoderShape("vit_tiny_patch16", depth=12, width=192)


def facts(images, classes=10, smallest=None):
    per_class = images / classes
    return LabeledSet(images, classes, smallest or int(per_class), per_class, 48, 48, 3)


def values(choices):
    return {c.key: c.value for c in choices}


def test_a_hundred_images_get_small_batches_many_epochs_and_no_mixing():
    plan = values(plan_finetune(facts(100), TINY))
    # 10 held out (1 per class), 90 to train on: 90 // 16 = 5 < 8 steps per epoch, so batch 8 (11 steps)
    assert plan["holdout"] == 0.1 and plan["train.batch_size"] == 8
    assert plan["train.epochs"] == math.ceil(1000 / 11) == 91 and plan["train.warmup_epochs"] == 9.1
    assert plan["train.lr"] == pytest.approx(2e-3 * math.sqrt(8 / 256), rel=2e-3)  # 3 digits
    assert plan["layer_decay"] == 0.75
    assert plan["mixup"] == plan["cutmix"] == plan["randaug_n"] == plan["reprob"] == plan["drop_path"] == 0
    assert plan["train.max_minutes"] == planner.CPU_MINUTES


def test_regularisation_grows_with_the_images_per_class_and_the_device():
    below = values(plan_finetune(facts(990), TINY, "cuda"))  # 99 per class
    some = values(plan_finetune(facts(1000), TINY, "cuda"))  # 100 per class
    assert below["randaug_n"] == 0 and below["drop_path"] == 0.0
    assert some["randaug_n"] == 1 and some["drop_path"] == 0.1 and some["mixup"] == 0.0
    on_cpu = values(plan_finetune(facts(1000), TINY, "cpu"))  # a CPU's minutes: light at every size
    assert on_cpu["randaug_n"] == 0 and on_cpu["drop_path"] == 0.0
    many_cpu = values(plan_finetune(facts(60_000), TINY, "cpu"))
    many_gpu = values(plan_finetune(facts(60_000), TINY, "cuda"))
    assert many_cpu["mixup"] == 0.0 and many_cpu["train.max_minutes"] == planner.CPU_MINUTES
    strong = (many_gpu["mixup"], many_gpu["cutmix"], many_gpu["randaug_n"], many_gpu["reprob"])
    assert strong == (0.8, 1.0, 2, 0.25)
    assert many_gpu["crop_scale"] == [0.08, 1.0] and many_gpu["train.max_minutes"] is None
    # 54,000 to train on: batch 256 on a GPU (210 steps per epoch), 1000 steps = 5 epochs, lr 2e-3; on a CPU
    # batch 32 (1687 steps per epoch): 1000 steps are less than an epoch, the least is 3
    assert many_gpu["train.batch_size"] == 256 and many_gpu["train.epochs"] == 5
    assert many_gpu["train.lr"] == pytest.approx(2e-3)
    assert many_cpu["train.batch_size"] == 32 and many_cpu["train.epochs"] == 3


def test_layer_decay_keeps_the_patch_embeddings_share_whatever_the_depth():
    for depth in (6, 12, 24):
        decay = values(plan_finetune(facts(500), EncoderShape("x", depth, 192)))["layer_decay"]
        assert decay ** (depth + 1) == pytest.approx(0.75**13, rel=0.05)  # the share of the bottom layer
    assert values(plan_finetune(facts(500), TINY))["layer_decay"] == 0.75  # MAE's value at 12 blocks


def test_what_the_user_gives_feeds_the_choices_that_follow():
    plan = values(plan_finetune(facts(500), TINY, given={"train.batch_size": 64, "train.blr": 1e-3}))
    assert "train.lr" not in plan  # a blr given is not overruled by a planned lr
    assert plan["train.epochs"] == math.ceil(1000 / (450 // 64))  # the batch given: 7 steps per epoch
    given = values(plan_finetune(facts(500), TINY, given={"train.epochs": 20}))
    assert given["train.warmup_epochs"] == 2.0


def test_a_class_of_one_image_holds_nothing_out_and_is_said():
    plan = plan_finetune(facts(30, classes=10, smallest=1), TINY)
    assert values(plan)["holdout"] == 0.0
    assert "1 image" in next(c.reason for c in plan if c.key == "holdout")
    assert "nothing can be held out" in few_images_note(facts(30, classes=10, smallest=1))
    assert few_images_note(facts(100)) is None and "under 5" in few_images_note(facts(30, smallest=3))


def labeled_set(counts):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    images = torch.zeros(len(labels), 1, 8, 8, dtype=torch.uint8)
    names = [f"c{i}" for i in range(len(counts))]
    return ImageDataset(labels, names, 1, (8, 8), (0.3,), (0.2,), images=images)


def test_choose_finetune_puts_the_users_values_on_top_and_records_the_plan(caplog):
    data = labeled_set([40, 20, 30])
    with caplog.at_level(logging.INFO, logger="mimkit"):
        cfg, record = choose_finetune(data, TINY, ["mixup=0.2", "train.epochs=7"])
    assert cfg.mixup == 0.2 and cfg.train.epochs == 7 and cfg.randaug_n == 0 and cfg.holdout == 0.1
    assert record["facts"] == {
        "images": 90, "classes": 3, "smallest": 20, "median": 30.0, "height": 8, "width": 8, "channels": 1,
    }  # fmt: skip
    assert record["given"] == {"mixup": 0.2, "train.epochs": 7}
    assert json.loads(json.dumps(record))["choices"][0]["key"] == "holdout"
    printed = caplog.records[-1].getMessage()
    assert "mixup                0.2" in printed and "set on the command line" in printed
    with pytest.raises(ValueError, match="nonsense"):
        choose_finetune(data, TINY, ["nonsense=1"])


def test_the_table_looks_like_the_pretraining_one():
    plan = plan_finetune(facts(100), TINY)
    lines = table(plan, {"train.epochs": 5}).splitlines()
    assert lines[0].split() == ["key", "value", "why"] and len(lines) == len(plan) + 1
    assert any(line.split()[:3] == ["train.epochs", "5", "set"] for line in lines)


def test_the_encoder_shape_is_read_from_the_config():
    shape = EncoderShape.of({"name": "vit_small_patch16", "img_size": 48, "patch_size": 8, "init": "x"})
    assert (shape.depth, shape.width) == (12, 384)
    assert EncoderShape.of({"name": "vit_tiny_patch16", "depth": 6}).depth == 6
