"""The trainer on a tiny MAE and an in-memory loader: exact resume, atomic checkpoints, NaN handling."""

import json
import math
import shutil

import pytest
import torch

from mimkit import create_encoder, create_method
from mimkit.engine import NonFiniteLossError, TrainConfig, Trainer
from mimkit.engine.checkpoint import save_atomic


class TensorLoader:
    """Deterministic order per epoch, resumable mid-epoch; never touches the global RNG."""

    def __init__(self, images, batch_size, seed=0):
        self.images, self.batch_size, self.seed = images, batch_size, seed
        self.epoch, self.start = 0, 0

    def __len__(self):
        return len(self.images) // self.batch_size

    def set_epoch(self, epoch):
        self.epoch = epoch

    def set_start_batch(self, index):
        self.start = index

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.images), generator=g)
        for b in range(self.start, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.images[idx], torch.zeros(len(idx), dtype=torch.long)
        self.start = 0


def make_model(seed=0):
    torch.manual_seed(seed)
    enc = create_encoder("vit_tiny_patch4_28", img_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=2)
    return create_method("mae", encoder=enc, decoder_dim=8, decoder_depth=1, decoder_heads=2)


def augment(images):  # random, so resume must restore the RNG to match
    flip = torch.rand(images.shape[0], 1, 1, 1) < 0.5
    x = images.float() / 255
    return torch.where(flip, x.flip(-1), x)


def make_trainer(run_dir, images, **cfg):
    opts = dict(
        epochs=3,
        batch_size=8,
        blr=1e-2,
        warmup_epochs=1,
        log_every=2,
        progress=False,
        tensorboard=False,
        precision="fp32",
        device="cpu",  # the exactness checks are CPU's (and the augment below makes CPU tensors)
    )
    opts.update(cfg)
    return Trainer(
        make_model(),
        TensorLoader(images, 8),
        TrainConfig(**opts),
        run_dir,
        batch_transform=augment,
        config={"encoder": {"name": "tiny"}, "method": {"name": "mae"}},
        identity={"encoder": {"name": "tiny"}, "method": {"name": "mae"}},
    )


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (40, 1, 8, 8), generator=g, dtype=torch.uint8)


def test_resume_is_exact(tmp_path, images):
    # 15 steps straight (3 epochs x 5) == 7 steps, stop, resume in a new process-like trainer, 8 more
    straight = make_trainer(tmp_path / "a", images)
    straight.fit()
    first = make_trainer(tmp_path / "b", images, max_steps=7)
    first.fit()
    assert first.step == 7 and first.epoch == 1 and first.micro_in_epoch == 2
    torch.manual_seed(12345)  # whatever the RNG does in between must not matter
    second = make_trainer(tmp_path / "b", images)
    second.fit()
    assert second.step == straight.step == 15
    pairs = zip(straight.model.state_dict().items(), second.model.state_dict().values(), strict=True)
    for (name, a), b in pairs:
        assert torch.equal(a, b), name


def test_resume_with_accumulation_matches(tmp_path, images):
    straight = make_trainer(tmp_path / "a", images, accum_steps=2, epochs=2)
    straight.fit()
    part = make_trainer(tmp_path / "b", images, accum_steps=2, epochs=2, max_steps=3)
    part.fit()
    rest = make_trainer(tmp_path / "b", images, accum_steps=2, epochs=2)
    rest.fit()
    assert rest.step == straight.step == 4  # 5 batches // 2 = 2 steps per epoch
    for a, b in zip(straight.model.parameters(), rest.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_lr_scaling_schedule_and_metrics(tmp_path, images):
    trainer = make_trainer(tmp_path, images, blr=2.56e-2, epochs=2)
    assert trainer.base_lr == pytest.approx(2.56e-2 * 8 / 256)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6, 8, 10]
    # warm-up over 5 steps, the lr logged is the one used for that step: step 1 (0-based) -> 1/5 of base
    assert records[0]["lr"] == pytest.approx(trainer.base_lr * 1 / 5)
    assert all(r["loss"] > 0 and r["images_per_s"] > 0 for r in records)


def test_no_decay_on_biases_norms_and_tokens(images, tmp_path):
    trainer = make_trainer(tmp_path, images)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            no_decay = p.ndim <= 1 or name.endswith(("cls_token", "mask_token", "pos_embed"))
            assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
    assert all(
        n not in ("encoder.pos_embed", "decoder.pos_embed")
        for n in (names[id(p)] for g in trainer.optimizer.param_groups for p in g["params"])
    )  # fixed, not trained


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, images):
    trainer = make_trainer(tmp_path, images, epochs=2, save_every_steps=2, log_every=1)
    calls = {"n": 0}
    real_step = trainer.model.training_step

    def poisoned(batch):
        calls["n"] += 1
        out = real_step(batch)
        if calls["n"] >= 4:
            out["loss"] = out["loss"] * float("nan")
        return out

    trainer.model.training_step = poisoned
    with pytest.raises(NonFiniteLossError, match="by step 4"):
        trainer.fit()
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_atomic_save_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"a": torch.ones(1)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"a": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(1))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_resume_refuses_another_models_run(tmp_path, images):
    make_trainer(tmp_path, images, max_steps=1).fit()
    other = Trainer(
        make_model(),
        TensorLoader(images, 8),
        TrainConfig(progress=False, tensorboard=False),
        tmp_path,
        identity={"encoder": {"name": "other"}, "method": {"name": "mae"}},
    )
    with pytest.raises(ValueError, match="another output_dir"):
        other.fit()


def test_the_trainer_reads_no_method_specific_entries(tmp_path, images):
    # what a resume must match comes from the caller, whatever its keys; the config is stored, not read
    run = make_trainer(tmp_path, images, max_steps=1)
    run.config, run.identity, run.extras = {"anything": 1}, {"features": "abc"}, {"grid_size": [2, 2]}
    run.fit()
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["identity"] == {"features": "abc"} and saved["grid_size"] == [2, 2]
    same = make_trainer(tmp_path, images, max_steps=2)
    same.identity = {"features": "abc"}
    same.fit()
    assert same.step == 2
    other = make_trainer(tmp_path, images, max_steps=3)
    other.identity = {"features": "xyz"}
    with pytest.raises(ValueError, match="written by a run with {'features': 'abc'}"):
        other.fit()


def test_checkpoints_from_before_identities_are_checked_on_their_config(tmp_path, images):
    make_trainer(tmp_path, images, max_steps=1).fit()
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    del state["identity"]  # as written by earlier versions: only the config names the model
    torch.save(state, tmp_path / "last.pt")
    other = make_trainer(tmp_path, images, max_steps=2)
    other.identity = {"encoder": {"name": "other"}, "method": {"name": "mae"}}
    with pytest.raises(ValueError, match="another output_dir"):
        other.fit()
    unrelated = make_trainer(tmp_path, images, max_steps=2)
    unrelated.identity = {"features": "abc"}  # keys the old config never had: nothing to compare
    unrelated.fit()
    assert unrelated.step == 2


def test_progress_in_a_log_file_is_one_line_per_log_interval(tmp_path, images, caplog, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    trainer = make_trainer(tmp_path, images, epochs=2, log_every=4, progress=True)  # 5 steps per epoch
    with caplog.at_level("INFO", logger="mimkit"):
        trainer.fit()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    # a line at steps 4 and 8 (log_every) and at the last step, 10; nothing per step
    assert [line.split()[1] for line in lines] == ["4/10", "8/10", "10/10"]
    assert all("loss=" in line and "lr=" in line and "img_s=" in line and " eta " in line for line in lines)
    assert lines[-1].endswith("eta 0:00")


def test_log_progress_eta_is_the_remaining_steps_at_the_measured_pace(caplog, monkeypatch):
    from mimkit.engine import metrics

    clock = iter([100.0, 130.0])  # created at t=100, 10 steps done by t=130: 3 s/step, 90 steps left
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
    progress = metrics.LogProgress(total=120, initial=20)
    progress.update(10)
    with caplog.at_level("INFO", logger="mimkit"):
        progress.set_postfix(loss="0.5")
    assert caplog.records[-1].getMessage() == "step 30/120 loss=0.5 eta 4:30"
    assert metrics.format_seconds(3725) == "1:02:05" and metrics.format_seconds(float("nan")) == "?"


@pytest.mark.skipif(not shutil.which("g++"), reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_step_trains_like_eager_and_saves_the_models_names(tmp_path, images):
    def losses(run_dir):
        return [row["loss"] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]

    eager = make_trainer(tmp_path / "eager", images, max_steps=6)
    eager.fit()
    compiled = make_trainer(tmp_path / "compiled", images, max_steps=6, compile=True)
    compiled.fit()
    assert compiled.step == 6
    # Same masks, flips and batches (random ops fall back to torch's generator), so the same run up to
    # float rounding. Weights are compared after the first step only: the key bias has no gradient in exact
    # arithmetic (softmax ignores a shift), and AdamW scales rounding noise there into lr-sized steps.
    torch.testing.assert_close(losses(tmp_path / "compiled"), losses(tmp_path / "eager"), rtol=1e-4, atol=0)
    saved = torch.load(tmp_path / "compiled" / "last.pt", weights_only=False)["model"]
    assert list(saved) == list(eager.model.state_dict())  # the model's names, no "_orig_mod." prefix
    one_eager = make_trainer(tmp_path / "eager1", images, max_steps=1)
    one_eager.fit()
    one_compiled = make_trainer(tmp_path / "compiled1", images, max_steps=1, compile=True)
    one_compiled.fit()
    for a, b in zip(one_eager.model.parameters(), one_compiled.model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["compile", "resume", "progress", "tensorboard"])
def test_switches_must_be_booleans(name):
    with pytest.raises(ValueError, match=f"train.{name} must be true or false, got 'yes'"):
        TrainConfig(**{name: "yes"})


def test_compile_without_a_cxx_compiler_is_one_clear_error(tmp_path, images, monkeypatch):
    monkeypatch.setattr("mimkit.engine.trainer.shutil.which", lambda name: None)
    with pytest.raises(ValueError, match="train.compile=true on the CPU needs a C\\+\\+ compiler"):
        make_trainer(tmp_path, images, compile=True)


def budget_trainer(run_dir, images, **cfg):
    """A trainer whose clock reads one second per optimizer step done: a fake, deterministic clock."""
    trainer = make_trainer(run_dir, images, **{"epochs": 6, "min_lr": 0.0, **cfg})  # 6 epochs: 30 steps
    trainer.clock = lambda: float(trainer.step)
    return trainer


def test_time_budget_fits_the_schedule_and_ends_it_cleanly(tmp_path, images):
    from mimkit.engine.budget import BUDGET_MARGIN, CALIBRATION_SKIP, CALIBRATION_STEPS

    trainer = budget_trainer(tmp_path, images, max_minutes=0.3)  # 18 s at 1 s per step
    trainer.fit()
    # timed from step 2 to 12 (1 s each); 6 s left, less the 3% margin (5.82 s), buy 5 more steps: 17 in
    # all, not the scheduled 30
    assert (CALIBRATION_SKIP, CALIBRATION_STEPS, BUDGET_MARGIN) == (2, 10, 0.03)
    assert trainer.planned_steps == 17 and trainer.step == 17 and trainer.total_steps == 30
    # warm-up (1 epoch = 5 steps) is capped at a quarter of the 17 steps: 4.25; then cosine down to min_lr,
    # reached by the last step run (0-based step 16)
    base = trainer.base_lr
    assert trainer.lr_at(1) == pytest.approx(base / 4.25)
    assert trainer.lr_at(10) == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 5.75 / 11.75)))
    assert trainer.lr_at(16) == pytest.approx(0.0, abs=1e-12)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 17  # the last step is logged, with the lr it ran at
    assert records[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["step"] == 17 and saved["planned_steps"] == 17 and saved["elapsed_s"] == 17.0
    assert saved["budget_minutes"] == 0.3
    again = budget_trainer(tmp_path, images, max_minutes=0.3)  # the same command again: nothing left to do
    again.fit()
    assert again.step == 17


def test_time_budget_keeps_a_short_warm_up_and_the_whole_schedule_when_affordable(tmp_path, images):
    # 3 epochs = 15 steps at 1 s each, budget 60 s: the plan is the whole schedule, warm-up its 5 steps
    trainer = budget_trainer(tmp_path, images, max_minutes=1.0, epochs=3)
    trainer.fit()
    assert trainer.planned_steps == 15 and trainer.step == 15
    assert trainer.lr_at(1) == pytest.approx(trainer.base_lr / 5)


def test_time_budget_leaves_epoch_end_evaluation_out(tmp_path, images):
    class SlowEval:  # each evaluation takes 100 s of the (fake) clock
        def on_epoch_end(self, epoch, model):
            spent[0] += 100.0
            return {"eval": 1.0}

    spent = [0.0]
    trainer = make_trainer(tmp_path, images, epochs=6, min_lr=0.0, max_minutes=0.3)
    trainer.callbacks = [SlowEval()]
    trainer.clock = lambda: float(trainer.step) + spent[0]
    trainer.fit()
    # epochs end at steps 5, 10, 15 (inside the timing of steps 2-12, too): 17 steps as without them
    assert trainer.planned_steps == 17 and trainer.step == 17 and trainer.elapsed_s == 17.0
    assert spent[0] == 300.0


def test_time_budget_run_resumes_exactly(tmp_path, images):
    straight = budget_trainer(tmp_path / "a", images, max_minutes=0.3)
    straight.fit()
    budget_trainer(tmp_path / "b", images, max_minutes=0.3, max_steps=14).fit()  # stopped after the plan
    torch.manual_seed(999)
    rest = budget_trainer(tmp_path / "b", images, max_minutes=0.3)
    rest.fit()
    assert rest.step == straight.step == 17 and rest.planned_steps == 17
    for a, b in zip(straight.model.parameters(), rest.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_time_budget_stops_when_spent_even_if_the_machine_slowed(tmp_path, images, caplog):
    # no logging step before the end, so no refit (tests/engine/test_health.py): the safety net alone
    trainer = make_trainer(tmp_path, images, epochs=6, max_minutes=0.3, log_every=100)
    # 1 s per step while timed, 3 s per step after: the 17-step plan would take 27 s, the budget is 18
    trainer.clock = lambda: float(trainer.step if trainer.step <= 12 else 12 + 3 * (trainer.step - 12))
    with caplog.at_level("INFO", logger="mimkit"):
        trainer.fit()
    assert trainer.planned_steps == 17 and trainer.step == 14  # 12 + 3 * 2 = 18 s: out of time
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 14
    assert any("budget ran out before the planned 17 steps" in r.getMessage() for r in caplog.records)


def test_time_budget_spent_near_the_end_of_the_plan_finishes_it(tmp_path, images, caplog):
    from mimkit.engine.budget import FINISH_SHARE

    # 100 steps, 60 s; no logging step before the end, so no refit: the rule alone
    trainer = make_trainer(tmp_path, images, epochs=20, min_lr=0.0, max_minutes=1.0, log_every=100)
    # 1 s per step while timed, 1.1 s after: the plan, 12 + floor(48 * 0.97) = 58 steps, needs 62.6 s
    trainer.clock = lambda: float(trainer.step if trainer.step <= 12 else 12 + 1.1 * (trainer.step - 12))
    with caplog.at_level("INFO", logger="mimkit"):
        trainer.fit()
    # spent at step 56 (60.4 s), past 95% of the 58 planned steps: they are finished, 62.6 s < 1.05 * 60
    assert FINISH_SHARE == 0.05 and trainer.planned_steps == 58 and trainer.step == 58
    assert trainer.lr_at(57) == pytest.approx(0.0, abs=1e-12)  # the schedule ended at min_lr
    assert not any("budget ran out" in r.getMessage() for r in caplog.records)


def test_fp16_trains_with_a_gradient_scaler_and_resumes_it(tmp_path, images):
    with pytest.warns(RuntimeWarning, match="fp16 is not native on this cpu"):  # CPUs emulate fp16
        trainer = make_trainer(tmp_path, images, precision="fp16", max_steps=2)
    assert trainer.scaler is not None
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.fit()
    assert trainer.step == 2
    moved = [not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True)]
    assert sum(moved) > len(moved) // 2  # the steps were taken, not skipped as overflows
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["scaler"]["scale"] == trainer.scaler.get_scale()
    saved["scaler"]["scale"] = 1024.0  # as if overflows had lowered it: resume must bring it back
    torch.save(saved, tmp_path / "last.pt")
    with pytest.warns(RuntimeWarning):
        resumed = make_trainer(tmp_path, images, precision="fp16")
    assert resumed.scaler.get_scale() == 65536.0  # a fresh scaler's
    resumed.resume(tmp_path / "last.pt")
    assert resumed.scaler.get_scale() == 1024.0


@pytest.mark.parametrize(
    ("precision", "fused", "expected"),
    [
        ("fp32", "auto", "attention: fused scaled_dot_product_attention;"),
        ("bf16", "auto", "attention: plain softmax(q k^T) v (on the CPU under autocast"),
        ("bf16", True, "attention: fused scaled_dot_product_attention;"),
        ("fp32", False, "attention: plain softmax(q k^T) v;"),
    ],
)
def test_the_first_line_names_the_attention_the_model_runs(
    tmp_path, images, caplog, precision, fused, expected
):
    """The trainer imports no model: the attention modules say what they run (the ``"auto"`` policy: plain
    math for bf16 training on the CPU, SDPA otherwise; a fixed setting is what it says)."""
    trainer = make_trainer(tmp_path, images, precision=precision)
    for module in trainer.model.modules():
        if hasattr(module, "fused"):
            module.fused = fused
    with caplog.at_level("INFO", logger="mimkit"):
        trainer._announce()
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training on cpu")]
    assert expected in line, line


def test_a_model_without_attention_says_none(tmp_path, images, caplog):
    model = torch.nn.Linear(64, 1)
    model.training_step = lambda batch: {"loss": model(batch[0].flatten(1).float()).mean()}
    cfg = TrainConfig(
        precision="fp32", device="cpu", progress=False, tensorboard=False, epochs=1, warmup_epochs=0
    )
    trainer = Trainer(model, TensorLoader(images, 8), cfg, tmp_path)
    with caplog.at_level("INFO", logger="mimkit"):
        trainer._announce()
    assert any("; attention: none;" in r.getMessage() for r in caplog.records)


def test_a_step_cut_inside_the_schedule_is_said_with_the_lr_it_stops_at(tmp_path, images, caplog):
    # 40 images / batch 8 = 5 steps an epoch: 4 epochs = 20 steps, warm-up 5; base lr 1e-2 * 8 / 256.
    # Cut after 7 steps: the last step (index 6) is 1 step into the cosine of 14 (steps 5..19).
    base = 1e-2 * 8 / 256
    lr_last = base * 0.5 * (1 + math.cos(math.pi * 1 / 14))
    with caplog.at_level("INFO", logger="mimkit"):
        make_trainer(tmp_path / "cut", images, epochs=4, max_steps=7).fit()
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train.max_steps=")]
    assert len(said) == 1
    assert "at 35% of its 20-step schedule (train.epochs=4)" in said[0]
    assert f"the lr is still {lr_last:.3g} of its peak {base:.3g}" in said[0]
    assert "train.epochs=1 (5 steps)" in said[0]
    caplog.clear()
    with caplog.at_level("INFO", logger="mimkit"):  # a cut at or past the schedule's end cuts nothing
        make_trainer(tmp_path / "whole", images, epochs=4, max_steps=20).fit()
    assert not [r for r in caplog.records if r.getMessage().startswith("train.max_steps=")]
