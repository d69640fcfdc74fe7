"""Online kNN: a trainer callback scoring the encoder every N epochs, logged with the metrics."""

import json

import pytest
import torch

from mimkit import create_encoder, create_method
from mimkit.data.datasets import ImageDataset
from mimkit.data.loader import build_loader
from mimkit.engine import TrainConfig, Trainer
from mimkit.eval.online_knn import OnlineKNN


def dataset(n, seed=0, labeled=True):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = (torch.rand(n, 1, 8, 8, generator=g) * 100).to(torch.uint8)
    images[labels == 1, :, :4] += 120
    if not labeled:
        return ImageDataset(torch.full((n,), -1), [], 1, (8, 8), (0.3,), (0.2,), images=images)
    return ImageDataset(labels, ["a", "b"], 1, (8, 8), (0.3,), (0.2,), images=images)


def tiny_mae():
    torch.manual_seed(0)
    enc = create_encoder("vit_tiny_patch4_28", img_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=2)
    return create_method("mae", encoder=enc, decoder_dim=8, decoder_depth=1, decoder_heads=2)


def test_every_n_epochs_returns_a_percentage():
    knn = OnlineKNN(dataset(40), dataset(20, seed=1), every=2, k=5, bank_size=20, query_size=10)
    assert len(knn.bank) == 20 and len(knn.queries) == 10
    model = tiny_mae()
    assert knn.on_epoch_end(1, model) is None
    out = knn.on_epoch_end(2, model)
    assert set(out) == {"knn_top1"} and 0.0 <= out["knn_top1"] <= 100.0
    assert knn.history == [(2, out["knn_top1"])]


def test_logged_by_the_trainer(tmp_path):
    train = dataset(32)
    knn = OnlineKNN(train, dataset(16, seed=1), every=1, k=3)
    cfg = TrainConfig(
        epochs=2,
        batch_size=8,
        blr=1e-3,
        warmup_epochs=0,
        progress=False,
        tensorboard=False,
        precision="fp32",
        device="cpu",
        log_every=100,
    )
    Trainer(
        tiny_mae(),
        build_loader(train, 8),
        cfg,
        tmp_path,
        batch_transform=lambda x: x.float() / 255,
        callbacks=[knn],
    ).fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    knn_records = [r for r in records if "knn_top1" in r]
    assert [r["epoch"] for r in knn_records] == [1, 2]
    assert all(0 <= r["knn_top1"] <= 100 for r in knn_records)


def test_unlabeled_and_k_too_large_named():
    with pytest.raises(ValueError, match="labeled"):
        OnlineKNN(dataset(10, labeled=False), dataset(10))
    with pytest.raises(ValueError, match="k=50"):
        OnlineKNN(dataset(10), dataset(10), k=50)
