"""Fine-tuning through the one trainer: layer-wise lr decay, partial freezing, MixUp/CutMix targets,
weights loading, pos-embed resampling and exact resume."""

import dataclasses
import json
import math

import pytest
import torch

from mimkit.data.datasets import ImageDataset
from mimkit.data.mixing import MixUpCutMix, smooth_one_hot
from mimkit.data.transforms import FinetuneAugment
from mimkit.engine.config import TrainConfig
from mimkit.engine.trainer import Trainer
from mimkit.eval.classifier import Classifier, build_classifier
from mimkit.eval.finetune import FinetuneConfig, finetune
from mimkit.eval.records import at_chance, final_train_loss
from mimkit.models import create_encoder

ENC = {
    "name": "vit_tiny_patch4_28",
    "img_size": [8, 8],
    "patch_size": 4,
    "in_chans": 1,
    "embed_dim": 16,
    "depth": 3,
    "num_heads": 2,
}


def dataset(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = (torch.rand(n, 1, 8, 8, generator=g) * 100).to(torch.uint8)
    images[labels == 1, :, :4] += 120  # class 1: a bright top half
    return ImageDataset(labels, ["dark", "bright"], 1, (8, 8), (0.3,), (0.2,), images=images)


def recipe(**train):
    opts = dict(
        epochs=2,
        batch_size=8,
        blr=1e-2,
        warmup_epochs=0,
        log_every=1,
        progress=False,
        tensorboard=False,
        precision="fp32",
        device="cpu",
    )
    opts.update(train)
    return FinetuneConfig(train=TrainConfig(**opts))


def pretrained(seed=1, **overrides):
    torch.manual_seed(seed)
    options = {k: v for k, v in ENC.items() if k != "name"}
    return create_encoder(ENC["name"], **{**options, **overrides})


class Loader:
    def __init__(self, data, batch=8):
        self.data, self.batch, self.start = data, batch, 0

    def __len__(self):
        return len(self.data) // self.batch

    def set_epoch(self, epoch):
        pass

    def set_start_batch(self, index):
        self.start = index

    def __iter__(self):
        for b in range(self.start, len(self)):
            yield (
                self.data.images[b * self.batch : (b + 1) * self.batch],
                self.data.labels[b * self.batch : (b + 1) * self.batch],
            )
        self.start = 0


def test_layer_decay_scales_in_the_trainer(tmp_path):
    cfg = FinetuneConfig(layer_decay=0.5, train=recipe().train)
    clf = build_classifier(ENC, 2, pretrained(), cfg)
    trainer = Trainer(clf, Loader(dataset(16)), cfg.train, tmp_path, layer_scale=clf.layer_scale)
    scale_of = {id(p): g["lr_scale"] for g in trainer.optimizer.param_groups for p in g["params"]}
    params = dict(clf.named_parameters())
    # num_layers = depth + 1 = 4: patch embed / cls at 0, block i at i + 1, fc_norm / head on top (scale 1)
    expected = {
        "encoder.patch_embed.proj.weight": 0.5**4,
        "encoder.cls_token": 0.5**4,
        "encoder.blocks.0.attn.qkv.weight": 0.5**3,
        "encoder.blocks.1.norm1.bias": 0.5**2,
        "encoder.blocks.2.mlp.fc2.weight": 0.5**1,
        "encoder.fc_norm.bias": 1.0,
        "encoder.head.weight": 1.0,
    }
    for name, scale in expected.items():
        assert scale_of[id(params[name])] == pytest.approx(scale), name
    trainer._set_lr()
    for group in trainer.optimizer.param_groups:
        assert group["lr"] == pytest.approx(trainer.lr_at(0) * group["lr_scale"])


@pytest.mark.parametrize("k, blocks", [(0, []), (1, [2]), (2, [1, 2])])
def test_partial_finetune_freezes_exactly_the_lower_blocks(tmp_path, k, blocks):
    cfg = FinetuneConfig(train_blocks=k, train=recipe(max_steps=1).train)
    clf = build_classifier(ENC, 2, pretrained(), cfg)
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    expected = {
        n
        for n, _ in clf.named_parameters()
        if n.startswith(("encoder.norm.", "encoder.fc_norm.", "encoder.head."))
        or any(n.startswith(f"encoder.blocks.{b}.") for b in blocks)
    }
    assert trainable == expected
    before = {n: p.detach().clone() for n, p in clf.named_parameters()}
    finetune(clf, dataset(16), dataset(8, seed=1), cfg, tmp_path)
    for name, param in clf.named_parameters():  # one AdamW step moves every trainable parameter, no other
        assert (not torch.equal(before[name], param.detach())) == (name in expected), name


def test_frozen_params_unchanged_after_a_step(tmp_path):
    cfg = FinetuneConfig(train_blocks=1, train=recipe(max_steps=1).train)
    clf = build_classifier(ENC, 2, pretrained(), cfg)
    before = {n: p.detach().clone() for n, p in clf.named_parameters()}
    finetune(clf, dataset(16), dataset(8, seed=1), cfg, tmp_path)
    for name, param in clf.named_parameters():
        if not param.requires_grad:
            assert torch.equal(before[name], param.detach()), name
    assert not torch.equal(before["encoder.blocks.2.mlp.fc1.weight"], clf.encoder.blocks[2].mlp.fc1.weight)


def test_smoothed_targets():
    t = smooth_one_hot(torch.tensor([2, 0]), 4, smoothing=0.1)
    assert t[0].tolist() == pytest.approx([0.025, 0.025, 0.925, 0.025])
    assert t.sum(1).tolist() == pytest.approx([1.0, 1.0])


def test_mixup_blends_images_and_targets_with_one_weight():
    torch.manual_seed(0)
    mix = MixUpCutMix(3, mixup_alpha=0.8, cutmix_alpha=0.0, smoothing=0.0)
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 2, 2).contiguous()  # image i is all i
    labels = torch.tensor([0, 1, 2, 0])
    mixed, targets = mix(images, labels)
    assert targets.sum(1).tolist() == pytest.approx([1.0] * 4)
    lam = targets[1, 1].item()  # image 1 (label 1) mixed with image 2 (label 2, the reversed batch)
    assert targets[1, 2].item() == pytest.approx(1 - lam)
    assert mixed[1].flatten().tolist() == pytest.approx([lam * 1 + (1 - lam) * 2] * 4)


def test_cutmix_target_weight_is_the_pasted_area():
    torch.manual_seed(3)
    mix = MixUpCutMix(2, mixup_alpha=0.0, cutmix_alpha=1.0, smoothing=0.1)
    images = torch.stack([torch.zeros(1, 10, 10), torch.ones(1, 10, 10)])
    for _ in range(5):
        mixed, targets = mix(images, torch.tensor([0, 1]))
        assert targets.sum(1).tolist() == pytest.approx([1.0, 1.0])
        pasted = mixed[0].mean().item()  # the share of image 0 now taken from image 1
        smoothed = smooth_one_hot(torch.tensor([0, 1]), 2, 0.1)
        assert targets[0].tolist() == pytest.approx(
            ((1 - pasted) * smoothed[0] + pasted * smoothed[1]).tolist()
        )


def test_classifier_loads_pretrained_weights_and_starts_a_fresh_head():
    pre = pretrained()
    clf = build_classifier(ENC, 5, pre, FinetuneConfig())
    for name, value in pre.state_dict().items():
        if not name.startswith("norm."):  # MAE's classifier pools through fc_norm, without the final norm
            assert torch.equal(clf.encoder.state_dict()[name], value), name
    assert isinstance(clf.encoder.norm, torch.nn.Identity)
    assert clf.encoder.head.weight.shape == (5, 16) and clf.encoder.head.weight.abs().max() < 1e-4
    assert clf.encoder.global_pool == "avg" and isinstance(clf.encoder.fc_norm, torch.nn.LayerNorm)
    assert clf(torch.randn(3, 1, 8, 8)).shape == (3, 5)


def test_mismatched_pretrained_encoder_named():
    with pytest.raises(ValueError, match="blocks.2"):
        build_classifier(ENC, 2, pretrained(depth=2), FinetuneConfig())


def test_pos_embed_resampled_for_another_size():
    clf = build_classifier(ENC, 2, pretrained(), FinetuneConfig(img_size=12))
    assert clf.encoder.pos_embed.shape == (1, 1 + 9, 16)
    assert clf(torch.randn(2, 1, 12, 12)).shape == (2, 2)


def test_augment_shapes_and_normalisation():
    torch.manual_seed(0)
    aug = FinetuneAugment((8, 8), (0.5,), (0.25,), randaug_n=2, randaug_m=9, reprob=1.0)
    out = aug(torch.full((6, 1, 8, 8), 128, dtype=torch.uint8))
    assert out.shape == (6, 1, 8, 8) and out.dtype == torch.float32
    assert out.max().item() <= (1 - 0.5) / 0.25 + 1e-5 and out.min().item() >= -0.5 / 0.25 - 1e-5


def test_finetune_resumes_exactly_through_the_trainer(tmp_path):
    cfg = FinetuneConfig(train=recipe(epochs=3).train)
    train, test = dataset(24), dataset(8, seed=1)
    straight = build_classifier(ENC, 2, pretrained(), cfg)
    result = finetune(straight, train, test, cfg, tmp_path / "a")
    first = build_classifier(ENC, 2, pretrained(), cfg)
    finetune(first, train, test, FinetuneConfig(train=recipe(epochs=3, max_steps=4).train), tmp_path / "b")
    torch.manual_seed(999)  # whatever happens in between must not matter
    second = build_classifier(ENC, 2, pretrained(), cfg)
    resumed = finetune(second, train, test, cfg, tmp_path / "b")
    # 1 image of each class held out (round(0.1 * 12)): 22 to train on, 2 steps of 8 per epoch
    assert result["holdout_images"] == resumed["holdout_images"] == 2
    assert result["steps"] == resumed["steps"] == 6
    assert result["best_epoch"] == resumed["best_epoch"] and (tmp_path / "b" / "best.pt").is_file()
    for (name, a), b in zip(straight.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert json.loads((tmp_path / "b" / "finetune.json").read_text())["test_top1"] == resumed["test_top1"]
    assert 0.0 <= resumed["test_top1"] <= 100.0


def test_a_changed_recipe_does_not_resume_or_report_the_run(tmp_path):
    train, test = dataset(24), dataset(8, seed=1)
    cfg = dataclasses.replace(recipe(epochs=2, max_steps=3), crop_scale=[0.35, 1.0])
    finetune(build_classifier(ENC, 2, pretrained(), cfg), train, test, cfg, tmp_path)
    assert json.loads((tmp_path / "recipe.json").read_text())["crop_scale"] == [0.35, 1.0]
    other = dataclasses.replace(cfg, crop_scale=[1.0, 1.0], layer_decay=0.9)
    with pytest.raises(ValueError, match=r"another recipe.*crop_scale.*layer_decay") as err:
        finetune(build_classifier(ENC, 2, pretrained(), other), train, test, other, tmp_path)
    assert "[0.35, 1.0] -> [1.0, 1.0]" in str(err.value)
    assert json.loads((tmp_path / "finetune.json").read_text())["steps"] == 3  # the first run is kept
    # where it runs and how long it is may change: the run goes on to its 2 epochs (4 steps: 22 images once
    # 1 per class is held out, batch 8)
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=None, log_every=5))
    assert (
        finetune(build_classifier(ENC, 2, pretrained(), longer), train, test, longer, tmp_path)["steps"] == 4
    )
    # train.resume=false starts over with the new recipe and records it
    fresh = dataclasses.replace(other, train=dataclasses.replace(other.train, resume=False))
    finetune(build_classifier(ENC, 2, pretrained(), fresh), train, test, fresh, tmp_path)
    assert json.loads((tmp_path / "recipe.json").read_text())["layer_decay"] == 0.9
    # a run from before the record: not checked, and not given the record of a recipe it may not have had
    (tmp_path / "recipe.json").unlink()
    finetune(build_classifier(ENC, 2, pretrained(), cfg), train, test, cfg, tmp_path)
    assert not (tmp_path / "recipe.json").exists()


def test_unlabeled_data_rejected(tmp_path):
    data = dataset(16)
    unlabeled = ImageDataset(torch.full((16,), -1), [], 1, (8, 8), (0.3,), (0.2,), images=data.images)
    clf = build_classifier(ENC, 2, None, FinetuneConfig())
    with pytest.raises(ValueError, match="labeled"):
        finetune(clf, unlabeled, data, recipe(), tmp_path)


def test_too_many_train_blocks_named():
    with pytest.raises(ValueError, match="train_blocks=7"):
        build_classifier(ENC, 2, None, FinetuneConfig(train_blocks=7))


def test_classifier_needs_a_head():
    with pytest.raises(ValueError, match="num_classes"):
        Classifier(pretrained())


SWIN = {
    "name": "swin_tiny_patch2_window7_28",
    "img_size": [8, 8],
    "patch_size": 2,
    "window_size": 2,
    "embed_dim": 8,
    "depths": [1, 2],
    "num_heads": [1, 2],
    "in_chans": 1,
}


def test_swin_encoder_goes_through_the_same_classifier(tmp_path):
    # any encoder with forward_features / pool / layer_id / depth: a Swin (depth 3 = 1 + 2 blocks)
    torch.manual_seed(0)
    pre = create_encoder(SWIN["name"], **{k: v for k, v in SWIN.items() if k != "name"})
    cfg = FinetuneConfig(layer_decay=0.5, train_blocks=2, train=recipe(max_steps=1).train)
    clf = build_classifier(SWIN, 2, pre, cfg)
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.startswith(("encoder.layers.1.blocks.", "encoder.norm.", "encoder.fc_norm.", "encoder.head."))
        for n in trainable
    )
    # SimMIM's Swin classifier: the pretrained final norm kept, no fc_norm (that is MAE's ViT recipe)
    assert isinstance(clf.encoder.fc_norm, torch.nn.Identity)
    assert torch.equal(clf.encoder.norm.weight, pre.norm.weight)
    assert clf.layer_scale("encoder.patch_embed.proj.weight") == pytest.approx(0.5**4)
    assert clf.layer_scale("encoder.layers.1.blocks.0.attn.qkv.weight") == pytest.approx(0.5**2)
    result = finetune(clf, dataset(16), dataset(8, seed=1), cfg, tmp_path)
    assert result["steps"] == 1 and 0 <= result["test_top1"] <= 100


def test_final_train_loss_is_the_mean_over_the_last_tenth_of_the_steps(tmp_path):
    assert final_train_loss(tmp_path) is None  # no metrics.jsonl
    records = [{"step": s, "loss": s / 100, "lr": 1e-3, "epoch": s / 10} for s in range(10, 101, 10)]
    lines = [json.dumps(r) for r in records]
    lines.insert(5, '{"step": 60, "loss": 0.6')  # a line cut off by a killed run
    lines.append(json.dumps({"step": 100, "epoch": 10, "knn_top1": 80.0}))  # an epoch-end record, no loss
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert final_train_loss(tmp_path) == pytest.approx(1.0)  # steps > 90: only step 100
    assert final_train_loss(tmp_path, tail=0.3) == pytest.approx((0.8 + 0.9 + 1.0) / 3)  # steps 80, 90, 100


def test_at_chance_against_ln_of_the_class_count():
    chance = math.log(10)
    assert at_chance({"final_train_loss": chance, "chance_loss": chance})
    assert at_chance({"final_train_loss": chance + 0.05, "chance_loss": chance})  # worse than uniform
    assert not at_chance({"final_train_loss": 0.9 * chance, "chance_loss": chance})
    assert not at_chance({"test_top1": 13.5})  # a result written before the fields existed


def test_a_run_that_learns_is_not_flagged_and_one_that_cannot_is(tmp_path):
    # the head starts at N(0, 2e-5): logits ~0, the loss of a uniform prediction, ln 2 for two classes
    train, test = dataset(48), dataset(16, seed=1)
    plain = dict(mixup=0.0, cutmix=0.0, randaug_n=0, reprob=0.0, crop_scale=[1.0, 1.0], smoothing=0.0)
    results = {}
    for blr, epochs in ((1e-2, 4), (1e-9, 2)):  # (1e-9: the weights barely move)
        cfg = dataclasses.replace(recipe(epochs=epochs, blr=blr), **plain)
        results[blr] = finetune(
            build_classifier(ENC, 2, pretrained(), cfg), train, test, cfg, tmp_path / str(blr)
        )
    learned, stuck = results[1e-2], results[1e-9]
    assert learned["chance_loss"] == stuck["chance_loss"] == pytest.approx(math.log(2))
    assert learned["test_top1"] == 100.0 and not at_chance(learned)
    assert stuck["final_train_loss"] == pytest.approx(math.log(2), abs=1e-3) and at_chance(stuck)
    assert json.loads((tmp_path / "1e-09" / "finetune.json").read_text())[
        "final_train_loss"
    ] == pytest.approx(stuck["final_train_loss"])
