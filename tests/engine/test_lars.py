"""LARS against steps worked out by hand from the trust-ratio formula."""

import math

import pytest
import torch

from mimkit.engine.lars import LARS


def _norm(v):
    return math.sqrt(sum(x * x for x in v))


def test_two_steps_match_the_formula():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([w, b], lr=0.1, weight_decay=0.5, momentum=0.9, trust_coefficient=0.001)
    grad_w, grad_b = [0.0, 2.0], 0.5

    # by hand, step 1: d = g + 0.5 w = [1.5, 4]; ratio = 0.001 * |w| / |d| = 0.001 * 5 / sqrt(18.25)
    d1 = [1.5, 4.0]
    r1 = 0.001 * 5.0 / math.sqrt(18.25)
    mu1 = [x * r1 for x in d1]
    w1 = [3.0 - 0.1 * mu1[0], 4.0 - 0.1 * mu1[1]]
    # step 2 (same gradient): the decay and the ratio use the new weights; momentum 0.9 on the buffer
    d2 = [grad_w[0] + 0.5 * w1[0], grad_w[1] + 0.5 * w1[1]]
    r2 = 0.001 * _norm(w1) / _norm(d2)
    mu2 = [0.9 * m + x * r2 for m, x in zip(mu1, d2, strict=True)]
    w2 = [w1[0] - 0.1 * mu2[0], w1[1] - 0.1 * mu2[1]]
    # the bias: plain SGD with momentum, no decay, no trust ratio: 1 - 0.1 * 0.5, then - 0.1 * (0.45 + 0.5)
    b1, b2 = 0.95, 0.95 - 0.1 * 0.95

    for expected_w, expected_b in ((w1, b1), (w2, b2)):
        w.grad = torch.tensor([grad_w])
        b.grad = torch.tensor([grad_b])
        opt.step()
        assert w.detach()[0].tolist() == pytest.approx(expected_w, rel=1e-6)
        assert b.item() == pytest.approx(expected_b, rel=1e-6)


def test_matrix_update_ignores_the_gradient_scale():
    # the trust ratio normalises the update: a 100x larger gradient moves a matrix by the same amount
    moved = []
    for scale in (1.0, 100.0):
        w = torch.nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
        opt = LARS([w], lr=1.0, momentum=0.0)
        w.grad = scale * torch.tensor([[0.3, 0.1], [-0.2, 0.4]])
        opt.step()
        moved.append(w.detach() - torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
    assert torch.allclose(moved[0], moved[1], rtol=1e-5)
    # and its size is trust * |w| * lr
    assert torch.linalg.vector_norm(moved[0]).item() == pytest.approx(
        0.001 * math.sqrt(1 + 4 + 0.25 + 9), rel=1e-4
    )


def test_zero_weights_take_a_plain_step():
    w = torch.nn.Parameter(torch.zeros(2, 2))
    opt = LARS([w], lr=0.5, momentum=0.0)
    w.grad = torch.ones(2, 2)
    opt.step()  # |w| = 0: ratio 1, so w = -lr * g
    assert torch.equal(w.detach(), torch.full((2, 2), -0.5))


def test_group_lr_and_state_round_trip():
    w = torch.nn.Parameter(torch.ones(2, 2))
    opt = LARS([{"params": [w], "lr": 0.2, "weight_decay": 0.0}], momentum=0.9)
    w.grad = torch.ones(2, 2)
    opt.step()
    again = LARS([w], momentum=0.9)
    again.load_state_dict(opt.state_dict())
    assert torch.equal(again.state[w]["mu"], opt.state[w]["mu"])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"lr": -1.0}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"trust_coefficient": 0.0}, "trust_coefficient"),
        ({"weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_bad_settings(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LARS([torch.nn.Parameter(torch.ones(1))], **kwargs)
