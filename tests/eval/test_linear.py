"""Linear probe on cached features: separable data, lr chosen on held-out training data only, heads
independent of each other, one trainer run per sweep."""

import json
import math

import pytest
import torch

from mimkit.data.subsets import holdout_split
from mimkit.eval.linear import LinearProbe, LinearProbeConfig, linear_probe, train_heads


def clusters(n_per_class, classes=4, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    y = torch.arange(classes).repeat(n_per_class)
    return centers[y] + torch.randn(len(y), dim, generator=g), y


def cfg(**kw):
    # LARS moves a matrix by lr * 0.001 * |w| a step: few steps need a large blr (1e-6 is the "bad" choice)
    opts = dict(blrs=[1e-6, 30.0], epochs=10, warmup_epochs=1, batch_size=32, device="cpu")
    opts.update(kw)
    return LinearProbeConfig(**opts)


def test_separable_features_reach_100_and_the_good_lr_is_chosen(tmp_path):
    train_f, train_y = clusters(100)
    test_f, test_y = clusters(50, seed=1)
    result = linear_probe(train_f, train_y, test_f, test_y, tmp_path, cfg())
    assert result["test_top1"] == 100.0
    assert result["best_blr"] == 30.0  # blr 1e-6 barely moves the heads from their N(0, 0.01) start
    assert result["holdout_images"] == 40 and result["fit_images"] == 360  # 10% of each class of 100
    assert json.loads((tmp_path / "linear_probe.json").read_text())["best_blr"] == 30.0
    assert (tmp_path / "select" / "last.pt").is_file() and (tmp_path / "refit" / "last.pt").is_file()


def test_choice_never_looks_at_the_test_set(tmp_path):
    train_f, train_y = clusters(60)
    test_f, test_y = clusters(30, seed=2)
    good = linear_probe(train_f, train_y, test_f, test_y, tmp_path / "a", cfg(refit=False))
    # the same training data with scrambled test labels, or no test set at all: the same choice
    wrong = linear_probe(train_f, train_y, test_f, (test_y + 1) % 4, tmp_path / "b", cfg(refit=False))
    none = linear_probe(train_f, train_y, None, None, tmp_path / "c", cfg(refit=False))
    assert good["best_blr"] == wrong["best_blr"] == none["best_blr"]
    assert good["holdout_top1"] == wrong["holdout_top1"] == none["holdout_top1"]
    assert none["test_top1"] is None and wrong["test_top1"] < good["test_top1"]


def test_holdout_is_a_per_class_part_of_the_training_set():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    fit, held = holdout_split(labels, 0.1, seed=0)
    assert torch.bincount(labels[held]).tolist() == [5, 3, 2]
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(100))  # a partition of the training indices


def test_heads_trained_together_equal_heads_trained_alone(tmp_path):
    # one stacked sweep == separate runs: each head gets exactly its own gradient and LARS ratio
    f, y = clusters(20)
    probe_c = cfg(epochs=2, batch_size=16)
    both = train_heads(f, y, [30.0, 3.0], probe_c, tmp_path / "both")
    alone = train_heads(f, y, [30.0], probe_c, tmp_path / "alone")
    assert torch.allclose(both.heads[0].weight, alone.heads[0].weight, atol=1e-6)
    assert torch.allclose(both.heads[0].bias, alone.heads[0].bias, atol=1e-6)
    assert not torch.allclose(both.heads[0].weight, both.heads[1].weight)


def test_probe_shape_init_and_lr_groups(tmp_path):
    probe = LinearProbe(dim=300, num_classes=10, num_heads=3)
    assert not any(p.requires_grad for p in probe.norm.parameters())  # affine=False: nothing to learn
    assert probe.norm.eps == 1e-6
    assert probe(torch.randn(5, 300)).shape == (3, 5, 10)
    w = probe.heads[0].weight
    assert abs(w.std().item() - 0.01) < 0.001 and probe.heads[0].bias.abs().sum() == 0


def test_unlabeled_features_rejected(tmp_path):
    f, y = clusters(5)
    with pytest.raises(ValueError, match="labeled"):
        linear_probe(f, torch.full_like(y, -1), None, None, tmp_path, cfg())


def test_bad_blrs_named():
    with pytest.raises(ValueError, match=r"blrs .*\[0\.1, -1\.0\]"):
        LinearProbeConfig(blrs=[0.1, -1.0])


def test_a_finished_sweep_is_reloaded_not_retrained(tmp_path):
    f, y = clusters(10)
    first = train_heads(f, y, [30.0], cfg(epochs=2, batch_size=8), tmp_path)
    again = train_heads(
        f, y, [30.0], cfg(epochs=2, batch_size=8), tmp_path
    )  # resumes the finished run (LARS state)
    assert torch.equal(first.heads[0].weight, again.heads[0].weight)
    assert torch.equal(first.norm.running_var, again.norm.running_var)
    with pytest.raises(ValueError, match="was written by a run with"):
        train_heads(f + 1, y, [30.0], cfg(epochs=2, batch_size=8), tmp_path)  # other features: refused


def test_a_head_that_is_no_longer_finite_drops_out_of_the_loss():
    x, y = clusters(4)
    probe = LinearProbe(dim=16, num_classes=4, num_heads=2)
    with torch.no_grad():
        probe.heads[1].weight[0, 0] = float("nan")
    loss = probe.training_step((x, y))["loss"]
    head0 = torch.nn.functional.cross_entropy(probe.heads[0](probe.norm(x)), y)  # by hand, head 0 only
    assert torch.isfinite(loss) and torch.allclose(loss, head0)
    loss.backward()
    alone = LinearProbe(dim=16, num_classes=4, num_heads=1)
    alone.heads[0].load_state_dict(probe.heads[0].state_dict())
    alone.training_step((x, y))["loss"].backward()
    assert torch.allclose(probe.heads[0].weight.grad, alone.heads[0].weight.grad)
    assert probe.diverged() == [1] and alone.diverged() == []


def test_a_diverging_blr_is_skipped_and_leaves_the_others_as_they_were(tmp_path):
    train_f, train_y = clusters(100)
    test_f, test_y = clusters(50, seed=1)
    # blr 1e6: each LARS step multiplies |w| by ~1000, so the head overflows to inf/NaN within the run
    result = linear_probe(train_f, train_y, test_f, test_y, tmp_path / "sweep", cfg(blrs=[30.0, 1e6]))
    assert result["diverged_blrs"] == [1e6] and result["best_blr"] == 30.0
    alone = linear_probe(train_f, train_y, test_f, test_y, tmp_path / "alone", cfg(blrs=[30.0]))
    assert alone["diverged_blrs"] == []
    assert result["holdout_top1"][30.0] == alone["holdout_top1"][30.0]
    assert result["test_top1"] == alone["test_top1"] == 100.0
    with pytest.raises(ValueError, match=r"every blr of \[1000000.0\] diverged"):
        linear_probe(train_f, train_y, test_f, test_y, tmp_path / "bad", cfg(blrs=[1e6]))


def test_the_result_line_rounds_the_accuracy(tmp_path, caplog):
    train_f, train_y = clusters(30)
    test_f, test_y = clusters(7, seed=1)  # 28 test images: accuracies like 96.42857... need rounding
    with caplog.at_level("INFO", logger="mimkit"):
        result = linear_probe(train_f, train_y, test_f, test_y, tmp_path, cfg(refit=False))
    line = next(r.getMessage() for r in caplog.records if "test top-1" in r.getMessage())
    assert line.endswith(f"test top-1 {result['test_top1']:.2f}%") and " chosen on 12 held-out" in line


def test_the_probe_extends_its_blr_sweep_past_the_edge(tmp_path, monkeypatch):
    """The sweep's wiring: a fake head trainer whose held-out accuracy peaks at blr 100, above the sweep."""
    import mimkit.eval.linear as linear

    real = linear.train_heads
    trained = []

    def fake(features, labels, blrs, cfg, run_dir, num_classes=None):
        probe = real(features, labels, blrs, cfg, run_dir, num_classes)
        trained.append((list(blrs), run_dir.name))
        peak = {b: 100.0 - abs(math.log10(b) - 2) for b in blrs}
        probe.accuracy = lambda x, y, chunk=8192: torch.tensor([peak[b] for b in blrs])
        return probe

    monkeypatch.setattr(linear, "train_heads", fake)
    f, y = clusters(10)
    result = linear_probe(f, y, f, y, tmp_path, cfg(blrs=[1.0, 10.0], epochs=1))
    assert trained == [([1.0, 10.0], "select"), ([100.0], "select_100"), ([1000.0], "select_1000"),
                       ([100.0], "refit")]  # fmt: skip
    assert result["best_blr"] == 100.0 and sorted(result["holdout_top1"]) == [1.0, 10.0, 100.0, 1000.0]
    assert result["grid"]["extensions"] == 2 and "100 lies inside" in result["grid"]["stopped"]
