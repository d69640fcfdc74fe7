"""NT-Xent against cases worked out by hand, and its distributed (gathered negatives) form."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mimkit.losses.contrastive import nt_xent


def _hand_loss(temperature: float) -> float:
    # a = [(1, 0), (0, 1)], b = [(1, 0), (0.6, 0.8)], all unit length, pairs (a0, b0) and (a1, b1).
    # Cosine similarities: a0.a1 = 0, a0.b0 = 1, a0.b1 = 0.6, a1.b0 = 0, a1.b1 = 0.8, b0.b1 = 0.6.
    e = lambda s: math.exp(s / temperature)  # noqa: E731
    anchor_a0 = -math.log(e(1.0) / (e(0.0) + e(1.0) + e(0.6)))  # positive b0; negatives a1, b1
    anchor_a1 = -math.log(e(0.8) / (e(0.0) + e(0.0) + e(0.8)))  # positive b1; negatives a0, b0
    anchor_b0 = -math.log(e(1.0) / (e(1.0) + e(0.0) + e(0.6)))  # positive a0; negatives a1, b1
    anchor_b1 = -math.log(e(0.8) / (e(0.6) + e(0.8) + e(0.6)))  # positive a1; negatives a0, b0
    return (anchor_a0 + anchor_a1 + anchor_b0 + anchor_b1) / 4


@pytest.mark.parametrize("temperature", [0.2, 0.5, 1.0])
def test_two_samples_worked_by_hand(temperature):
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    assert nt_xent(a, b, temperature).item() == pytest.approx(_hand_loss(temperature), rel=1e-5)
    # Embeddings are L2-normalised first: lengths do not matter.
    assert nt_xent(3 * a, 0.5 * b, temperature).item() == pytest.approx(_hand_loss(temperature), rel=1e-5)


def test_orthonormal_pairs_formula():
    # a = b = identity in N dims: s(u, u+) = 1, and 0 with each of the 2N - 2 negatives.
    n, t = 5, 0.2
    eye = torch.eye(n)
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + (2 * n - 2)))
    assert nt_xent(eye, eye, t).item() == pytest.approx(expected, rel=1e-6)


def test_float32_under_autocast():
    torch.manual_seed(0)
    a, b = torch.randn(16, 32), torch.randn(16, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = nt_xent(a, b)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(nt_xent(a, b).item(), rel=1e-6)


def test_gradient_reaches_the_student_side_only_through_what_requires_it():
    a = torch.randn(6, 8, requires_grad=True)
    b = torch.randn(6, 8)  # a teacher: no grad
    nt_xent(a, b).backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="temperature.*0"):
        nt_xent(torch.randn(2, 3), torch.randn(2, 3), temperature=0.0)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 3\)"):
        nt_xent(torch.randn(2, 3), torch.randn(3, 3))


def _distributed_worker(rank: int, world: int, init_file: str, a_full, b_full, grad_full) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        n = a_full.shape[0] // world
        a = a_full[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        b = b_full[rank * n : (rank + 1) * n].clone()
        loss = nt_xent(a, b, temperature=0.3)
        losses = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(losses, loss.detach())
        # Mean over processes = the loss over the global batch computed in one process.
        reference = nt_xent(a_full, b_full, temperature=0.3, gather=False)
        assert torch.allclose(torch.stack(losses).mean(), reference, atol=1e-5)
        # Gradients flow back through the gather: summed over the processes' losses they are
        # world x the gradient of the global mean (DDP then averages over processes).
        loss.backward()
        assert torch.allclose(a.grad, world * grad_full[rank * n : (rank + 1) * n], atol=1e-5)
    finally:
        dist.destroy_process_group()


def test_negatives_are_gathered_across_processes(tmp_path):
    if not dist.is_available() or "fork" not in mp.get_all_start_methods():
        pytest.skip("needs torch.distributed and the fork start method")
    if torch.cuda.is_available():  # with a GPU, autograd's device threads start at the first backward
        pytest.skip("torch refuses fork once autograd has started its CUDA threads; CPU machines run this")
    torch.manual_seed(0)
    a_full, b_full = torch.randn(8, 4), torch.randn(8, 4)
    a_ref = a_full.clone().requires_grad_(True)
    nt_xent(a_ref, b_full, temperature=0.3).backward()
    # fork: the workers inherit this module (spawn would re-import it by a name it cannot resolve).
    mp.start_processes(
        _distributed_worker,
        args=(2, str(tmp_path / "init"), a_full, b_full, a_ref.grad),
        nprocs=2,
        join=True,
        start_method="fork",
    )
