"""Online kNN during pretraining: a trainer callback scoring the encoder every N epochs.

    knn = OnlineKNN(train_set, test_set, every=1, bank_size=5000, query_size=1000)
    Trainer(method, loader, cfg, run_dir, callbacks=[knn]).fit()   # logs "knn_top1" with the metrics

The bank and the queries are fixed per-class samples of the training and test splits (drawn once, with
``seed``), so the numbers of successive epochs are comparable. ``on_score(epoch, top1)`` hears each score as
it is made (a sweep's pruner: :mod:`mimkit.sweep`); an exception it raises ends the run there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from mimkit.data.datasets import ImageDataset
from mimkit.data.subsets import per_class_subset, subset_dataset
from mimkit.engine.precision import auto_to_native
from mimkit.eval.features import FeaturePass
from mimkit.eval.frozen import Encoder, Split, features
from mimkit.eval.knn import knn_accuracy


def _sample(dataset: ImageDataset, size: int | None, seed: int, what: str) -> ImageDataset:
    if dataset.num_classes == 0:
        raise ValueError(
            f"online kNN needs labeled data; the {what} split at {dataset.root!r} has no class labels"
        )
    if size is None or size >= len(dataset):
        return dataset
    if size < 1:
        raise ValueError(f"online kNN {what} size must be >= 1, got {size}")
    return subset_dataset(dataset, per_class_subset(dataset.labels, size / len(dataset), seed))


class OnlineKNN:
    """``on_epoch_end(epoch, model) -> {"knn_top1": %}`` every ``every`` epochs (None on the others).

    Args:
        train_set: labeled training split; a per-class sample of ``bank_size`` images is the memory bank.
        test_set: labeled test split; a sample of ``query_size`` images is scored.
        every: epochs between evaluations (the trainer counts finished epochs from 1).
        k: neighbours (DINO's weighted vote, T = 0.07).
        pool: ``"token"`` or ``"avg"``.
        bank_size, query_size: sample sizes (None: the whole split).
        batch_size: extraction batch size.
        seed: the samples.
        on_score: called with ``(epoch, top1 %)`` after each evaluation; what it raises stops the training.
    """

    def __init__(
        self,
        train_set: ImageDataset,
        test_set: ImageDataset,
        every: int = 1,
        k: int = 20,
        pool: str = "token",
        bank_size: int | None = 5000,
        query_size: int | None = 1000,
        batch_size: int = 512,
        seed: int = 0,
        on_score: Callable[[int, float], None] | None = None,
    ):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"online kNN every must be a positive number of epochs, got {every!r}")
        if pool not in ("token", "avg"):
            raise ValueError(f"pool must be 'token' or 'avg', got {pool!r}")
        self.bank = _sample(train_set, bank_size, seed, "training")
        self.queries = _sample(test_set, query_size, seed, "test")
        if not 1 <= k <= len(self.bank):
            raise ValueError(
                f"k={k} is outside [1, {len(self.bank)}]: the memory bank has {len(self.bank)} images"
            )
        self.every = every
        self.k = k
        self.pool = pool
        self.batch_size = batch_size
        self.on_score = on_score
        self.history: list[tuple[int, float]] = []

    def __call__(self, model: nn.Module) -> float:
        """kNN top-1 (%) of ``model``'s encoder (``model.encoder`` if it has one, else ``model``)."""
        encoder = getattr(model, "encoder", model)
        device = next(encoder.parameters()).device
        # the evaluation's feature pass in this process alone, in the device's native precision
        run = FeaturePass(device, auto_to_native("auto", device), self.batch_size)
        entry = Encoder("online kNN", encoder)
        (bank_f, bank_y), (query_f, query_y) = (
            features(entry, Split(data), run, (self.pool,))[self.pool] for data in (self.bank, self.queries)
        )
        return knn_accuracy(bank_f, bank_y, query_f, query_y, ks=(self.k,))[self.k]

    @torch.no_grad()
    def on_epoch_end(self, epoch: int, model: nn.Module) -> dict[str, float] | None:
        if epoch % self.every:
            return None
        accuracy = self(model)
        self.history.append((epoch, accuracy))
        if self.on_score is not None:
            self.on_score(epoch, accuracy)
        return {"knn_top1": accuracy}
