"""Knowing whether a run works while it runs (issue 31, item 3): the last step always logged, a finished
run that says why, a budgeted schedule that ends at min_lr, the loss against its baseline, pictures."""

import json
import math

import pytest
import torch

from mimkit import create_encoder, create_method
from mimkit.engine import TrainConfig, Trainer
from mimkit.viz import ReconstructionPictures

MIN_LR = 1e-5


class Loader:
    """Deterministic order per epoch, resumable mid-epoch."""

    def __init__(self, images, labels, batch_size):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.epoch, self.start = 0, 0

    def __len__(self):
        return len(self.images) // self.batch_size

    def set_epoch(self, epoch):
        self.epoch = epoch

    def set_start_batch(self, index):
        self.start = index

    def __iter__(self):
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(self.epoch))
        for b in range(self.start, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.images[idx], self.labels[idx]
        self.start = 0


@pytest.fixture
def images():
    return torch.randint(0, 256, (40, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def to_unit(images):
    return images.float() / 255


def mae_trainer(run_dir, images, seconds_per_step=1.0, picture=None, **cfg):
    """A tiny MAE (5 steps an epoch) whose clock reads ``seconds_per_step`` per optimizer step done."""
    torch.manual_seed(0)
    enc = create_encoder("vit_tiny_patch4_28", img_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=2)
    model = create_method("mae", encoder=enc, decoder_dim=8, decoder_depth=1, decoder_heads=2)
    opts = dict(
        epochs=6,
        batch_size=8,
        blr=1e-2,
        warmup_epochs=1,
        min_lr=MIN_LR,
        log_every=1,
        progress=False,
        tensorboard=False,
        precision="fp32",
        device="cpu",
        picture_every_minutes=0,
    )
    opts.update(cfg)
    labels = torch.zeros(len(images), dtype=torch.long)
    trainer = Trainer(
        model,
        Loader(images, labels, 8),
        TrainConfig(**opts),
        run_dir,
        batch_transform=to_unit,
        picture=picture,
    )
    trainer.clock = lambda: seconds_per_step * trainer.step
    return trainer


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def messages(caplog):
    return [r.getMessage() for r in caplog.records]


# ------------------------------------------------------------------------------------------- the last step
def test_a_run_stopped_by_its_budget_logs_its_last_step_everywhere(tmp_path, images, caplog):
    """The reported run: 10 s steps, an 18 s budget, log_every 100: it trained 2 steps and logged nothing."""
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    trainer = mae_trainer(
        tmp_path, images, seconds_per_step=10.0, max_minutes=0.3, log_every=100, tensorboard=True
    )
    with caplog.at_level("INFO", logger="mimkit"):
        trainer.fit()
    assert trainer.step == 2  # 20 s spent
    (row,) = rows(tmp_path)
    assert row["step"] == 2 and row["loss"] > 0 and "lr" in row
    events = ea.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [2]
    assert events.Scalars("loss")[0].value == pytest.approx(row["loss"])
    summary = next(m for m in messages(caplog) if m.startswith("trained steps 1-2 "))
    assert f"loss {row['loss']:.4g} at step 2" in summary
    assert "budget ran out before its steps were timed" in summary


def test_logging_stays_at_the_logging_steps_plus_the_last(tmp_path, images):
    mae_trainer(tmp_path, images, epochs=2, log_every=4).fit()  # 10 steps
    assert [r["step"] for r in rows(tmp_path)] == [4, 8, 10]


# ------------------------------------------------------------------------------------ nothing to train
def test_a_finished_budget_run_says_so_and_more_minutes_train_on_to_min_lr(tmp_path, images, caplog):
    mae_trainer(tmp_path, images, max_minutes=0.3).fit()  # 17 steps (tests/engine/test_trainer.py)
    with caplog.at_level("INFO", logger="mimkit"):
        again = mae_trainer(tmp_path, images, max_minutes=0.3)
        again.fit()
    assert again.step == 17
    (line,) = [m for m in messages(caplog) if m.startswith("nothing to train")]
    assert "0.3-minute budget" in line and "a larger train.max_minutes" in line
    more = mae_trainer(tmp_path, images, max_minutes=0.6)  # 36 s: the 30 scheduled steps fit
    more.fit()
    assert more.step == 30 and more.planned_steps == 30
    assert rows(tmp_path)[-1]["step"] == 30 and rows(tmp_path)[-1]["lr"] == pytest.approx(MIN_LR)


def test_more_epochs_extend_a_run_whose_budget_bought_its_whole_schedule(tmp_path, images):
    first = mae_trainer(tmp_path, images, epochs=1, max_minutes=1.0)  # 5 steps of 1 s: all fit in 60 s
    first.fit()
    assert first.planned_steps == 5 and first.step == 5
    more = mae_trainer(tmp_path, images, epochs=2, max_minutes=1.0)  # the plan did not bind: plan again
    more.fit()
    assert more.step == 10 and more.planned_steps == 10
    assert rows(tmp_path)[-1]["step"] == 10 and rows(tmp_path)[-1]["lr"] == pytest.approx(MIN_LR)


def test_a_finished_run_names_train_epochs(tmp_path, images, caplog):
    mae_trainer(tmp_path, images, epochs=1).fit()
    with caplog.at_level("INFO", logger="mimkit"):
        mae_trainer(tmp_path, images, epochs=1).fit()
    (line,) = [m for m in messages(caplog) if m.startswith("nothing to train")]
    assert "finished its 1 epochs" in line and "a larger train.epochs" in line


# ------------------------------------------------------------------- a budgeted schedule reaches its end
def test_a_budget_shorter_than_the_timing_is_planned_from_the_steps_timed(tmp_path, images):
    trainer = mae_trainer(tmp_path, images, max_minutes=0.1)  # 6 s at 1 s per step, 30 steps scheduled
    trainer.fit()
    # step 3 is the first timed (1 s): 3 s left, less 3%, buy 2 more: a plan of 5, made then
    assert trainer.planned_steps == 5 and trainer.step == 5
    base, lrs = trainer.base_lr, [r["lr"] for r in rows(tmp_path)]
    # steps 0-2 ran before any timing: the full schedule's warm-up (5 steps); steps 3-4 the plan's: warm-up
    # a quarter of 5 = 1.25, then the cosine reaches min_lr at step 4, the last
    cos = MIN_LR + (base - MIN_LR) * 0.5 * (1 + math.cos(math.pi * 1.75 / 2.75))
    assert lrs == pytest.approx([0.0, base / 5, 2 * base / 5, cos, MIN_LR])


def test_a_budgeted_schedule_follows_its_provisional_plan_while_timing(tmp_path, images):
    trainer = mae_trainer(tmp_path, images, max_minutes=0.3)  # 18 s at 1 s per step: 17 steps
    trainer.fit()
    base, lrs = trainer.base_lr, [r["lr"] for r in rows(tmp_path)]
    assert len(lrs) == 17
    # from step 3 on, while still timing, the lr follows the plan of 17 steps (warm-up 4.25)
    assert lrs[3:5] == pytest.approx([3 * base / 4.25, 4 * base / 4.25])
    t = (10 - 4.25) / (16 - 4.25)
    assert lrs[10] == pytest.approx(MIN_LR + (base - MIN_LR) * 0.5 * (1 + math.cos(math.pi * t)))
    assert lrs[-1] == pytest.approx(MIN_LR)


def test_steps_that_slow_down_refit_the_schedule_to_end_at_min_lr(tmp_path, images, caplog):
    trainer = mae_trainer(tmp_path, images, epochs=20, max_minutes=1.0, log_every=2)  # 100 steps, 60 s
    # 1 s per step while timed, 1.5 s after: the plan, 12 + floor(48 * 0.97) = 58 steps, would need 81 s
    trainer.clock = lambda: float(min(trainer.step, 12) + 1.5 * max(trainer.step - 12, 0))
    with caplog.at_level("INFO", logger="mimkit"):
        trainer.fit()
    # at step 14 (15 s): 1.5 s a step; 45 s left less 3% buy 29 more: 43 steps, which end at 58.5 s
    assert trainer.planned_steps == 43 and trainer.step == 43
    assert rows(tmp_path)[-1]["lr"] == pytest.approx(MIN_LR)
    assert any(m.startswith("steps slowed to 1.500 s each since step 12") for m in messages(caplog))


def test_steps_that_speed_up_stretch_the_schedule_to_spend_the_budget(tmp_path, images, caplog):
    trainer = mae_trainer(tmp_path, images, epochs=40, max_minutes=1.0, log_every=2)  # 200 steps, 60 s
    # 2 s per step while timed (a busy machine), 0.5 s after: the plan, 12 + floor(36 * 0.97) = 46 steps,
    # would end at 41 s
    trainer.clock = lambda: float(2 * min(trainer.step, 12) + 0.5 * max(trainer.step - 12, 0))
    with caplog.at_level("INFO", logger="mimkit"):
        trainer.fit()
    # at step 14 (25 s): 0.5 s a step; 35 s left less 3% buy 67 more: 81 steps (> 46 * 1.1, and 14 < 23)
    assert trainer.planned_steps == 81 and trainer.step == 81
    assert rows(tmp_path)[-1]["lr"] == pytest.approx(MIN_LR)
    assert any(m.startswith("steps sped up to 0.500 s each since step 12") for m in messages(caplog))


def test_a_late_speed_up_keeps_the_plan(tmp_path, images):
    trainer = mae_trainer(tmp_path, images, epochs=40, max_minutes=1.0, log_every=2)  # 200 steps, 60 s
    # 1 s per step until step 40 (past half of the plan, 12 + floor(48 * 0.97) = 58), then 0.1 s: the
    # schedule is not raised again near its end
    trainer.clock = lambda: float(min(trainer.step, 40) + 0.1 * max(trainer.step - 40, 0))
    trainer.fit()
    assert trainer.planned_steps == 58 and trainer.step == 58


def test_a_budgeted_finetuning_ends_at_min_lr(tmp_path):
    """The reported run: 1 step an epoch, 5 warm-up epochs; it stopped with its lr near the peak."""
    from mimkit.eval.classifier import build_classifier
    from mimkit.eval.finetune import FinetuneConfig

    enc = {
        "name": "vit_tiny_patch4_28",
        "img_size": [8, 8],
        "patch_size": 4,
        "in_chans": 1,
        "embed_dim": 16,
        "depth": 2,
        "num_heads": 2,
    }
    train = TrainConfig(
        epochs=50,
        batch_size=16,
        blr=1e-3,
        warmup_epochs=5,
        min_lr=1e-6,
        log_every=1,
        progress=False,
        tensorboard=False,
        precision="fp32",
        device="cpu",
        max_minutes=0.5,
    )
    cfg = FinetuneConfig(train=train)
    torch.manual_seed(0)
    options = {k: v for k, v in enc.items() if k != "name"}
    clf = build_classifier(enc, 2, create_encoder(enc["name"], **options), cfg)
    data = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(16) % 2
    trainer = Trainer(
        clf, Loader(data, labels, 16), train, tmp_path, batch_transform=to_unit, layer_scale=clf.layer_scale
    )
    trainer.clock = lambda: 2.0 * trainer.step  # 2 s a step, 30 s
    trainer.fit()
    # timed from step 2; at every step the time left buys a plan of 14 steps (12 + floor(6 * 0.97 / 2))
    assert trainer.planned_steps == 14 and trainer.step == 14
    assert rows(tmp_path)[-1]["lr"] == pytest.approx(1e-6)
    for group in trainer.optimizer.param_groups:  # layer-wise decay scales the end too
        assert group["lr"] == pytest.approx(1e-6 * group["lr_scale"])


# --------------------------------------------------------------------------------------- the baseline
def test_the_loss_is_shown_against_the_baseline_of_the_first_batches(tmp_path, images, caplog):
    with caplog.at_level("INFO", logger="mimkit"):
        mae_trainer(tmp_path, images, epochs=1, log_every=2).fit()
    # MAE without norm_pix: predicting zeros (the data's mean colour once normalised; here normalise is
    # 'none') scores the mean of x^2; the trainer averages the batches seen by the first logging step, 2 of 8
    # (epoch 0's order): computed here from the pixels
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))[:16]
    x = images[order].float() / 255  # [16, 1, 8, 8]
    expected = x.pow(2).mean().item()
    records = rows(tmp_path)
    assert all(r["baseline_loss"] == pytest.approx(expected, rel=1e-5) for r in records)
    lines = messages(caplog)
    assert sum(m.startswith("loss baseline ") for m in lines) == 1
    summary = next(m for m in lines if m.startswith("trained steps"))
    loss = records[-1]["loss"]
    assert f"against {expected:.4g} for predicting the data's mean colour: " in summary
    assert summary.endswith("learning" if loss < 0.95 * expected else "not learning yet")


def test_the_baseline_leaves_the_training_draws_alone(tmp_path, images):
    """GMML's baseline makes its random views as a step does: from a generator the trainer forks."""

    def run(run_dir, with_baseline):
        torch.manual_seed(0)
        enc = create_encoder(
            "vit_tiny_patch4_28", img_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=2
        )
        model = create_method("gmml", encoder=enc, recon_hidden_dim=16)
        if not with_baseline:
            model.loss_baseline = None
        cfg = TrainConfig(
            epochs=1,
            batch_size=8,
            max_steps=3,
            log_every=1,
            progress=False,
            tensorboard=False,
            precision="fp32",
            device="cpu",
            picture_every_minutes=0,
        )
        labels = torch.zeros(len(images), dtype=torch.long)
        trainer = Trainer(model, Loader(images, labels, 8), cfg, run_dir, batch_transform=to_unit)
        trainer.fit()
        return [r["loss"] for r in rows(run_dir)], model

    (losses_a, a), (losses_b, b) = run(tmp_path / "a", True), run(tmp_path / "b", False)
    assert "baseline_loss" in rows(tmp_path / "a")[0]
    assert losses_a == losses_b
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_model_without_a_baseline_logs_none(tmp_path, images):
    trainer = mae_trainer(tmp_path, images, max_steps=2)
    trainer.model.loss_baseline = None  # as a model without the method
    trainer.fit()
    assert all("baseline_loss" not in r for r in rows(tmp_path))


# ----------------------------------------------------------------------------------------- pictures
def test_pictures_every_interval_and_at_the_end_without_changing_the_run(tmp_path, images):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    pictures = ReconstructionPictures(tmp_path / "a", (0.0,), (1.0,), title="mae tiny")
    # every 2 s of the fake clock (1 s a step): steps 2 and 4, and the end of the run (5)
    on = mae_trainer(
        tmp_path / "a", images, epochs=1, picture=pictures, picture_every_minutes=2 / 60, tensorboard=True
    )
    on.fit()
    written = sorted(p.name for p in (tmp_path / "a" / "pictures").iterdir())
    assert written == [f"reconstruction_step00000{s}.png" for s in (2, 4, 5)]
    events = ea.EventAccumulator(str(tmp_path / "a" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Images("reconstruction")] == [2, 4, 5]
    off = mae_trainer(tmp_path / "b", images, epochs=1, picture=pictures, picture_every_minutes=0)
    off.fit()
    assert not (tmp_path / "b" / "pictures").exists()
    # the pictures drew their masks from their own generator: the same weights as without them
    for a, b in zip(on.model.parameters(), off.model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [-1, "2", True])
def test_picture_interval_must_be_a_number(bad):
    with pytest.raises(ValueError, match="train.picture_every_minutes must be a number >= 0"):
        TrainConfig(picture_every_minutes=bad)
