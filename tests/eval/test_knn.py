import math

import pytest
import torch

from mimkit.eval import knn_accuracy, knn_classify


def test_weighted_vote_hand_case():
    # bank on the unit circle; the query at angle 0
    angles = torch.tensor([0.1, 0.2, 1.5, 1.6, 1.7])
    bank = torch.stack([angles.cos(), angles.sin()], 1)
    labels = torch.tensor([0, 0, 1, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    # k=5: class 0 gets exp(cos .1/.07)+exp(cos .2/.07), class 1 three far votes; class 0 wins by far
    w = [math.exp(math.cos(a) / 0.07) for a in angles.tolist()]
    assert w[0] + w[1] > w[2] + w[3] + w[4]
    preds = knn_classify(bank, labels, query, ks=(1, 5))
    assert preds[1].tolist() == [0] and preds[5].tolist() == [0]


def test_temperature_decides_between_many_far_and_few_near():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1, 1])
    query = torch.tensor([[0.8, 0.6]])  # cos 0.8 to class 0, cos 0.6 to class 1 (x3)
    # T=0.07: exp(0.8/.07) = 9.4e4 > 3 exp(0.6/.07) = 1.6e4 -> class 0; T=10: 1.08 < 3.18 -> class 1
    assert knn_classify(bank, labels, query, ks=(4,), temperature=0.07)[4].item() == 0
    assert knn_classify(bank, labels, query, ks=(4,), temperature=10.0)[4].item() == 1


def test_accuracy_on_separable_clusters_and_scale_invariance():
    torch.manual_seed(0)
    centers = torch.eye(3) * 5
    train = torch.cat([c + 0.1 * torch.randn(20, 3) for c in centers])
    train_y = torch.arange(3).repeat_interleave(20)
    test = torch.cat([c + 0.1 * torch.randn(5, 3) for c in centers]) * 7.0  # scaling changes nothing
    test_y = torch.arange(3).repeat_interleave(5)
    assert knn_accuracy(train, train_y, test, test_y, ks=(1, 20)) == {1: 100.0, 20: 100.0}


def test_k_larger_than_bank_rejected():
    with pytest.raises(ValueError, match="k=30 is outside \\[1, 4\\]"):
        knn_classify(torch.randn(4, 2), torch.zeros(4, dtype=torch.long), torch.randn(1, 2), ks=(30,))
