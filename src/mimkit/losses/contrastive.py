"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al., 2020), used by SiT."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sends each process the gradient of its own rows, summed over
    every process's loss (the all-reduce of the incoming gradients, then this rank's slice). Written here
    because torch's ``torch.distributed.nn.functional.all_gather`` is deprecated and its replacement is
    private API."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # reduced in place: our own copy
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        rank = dist.get_rank()
        return grad[rank * n : (rank + 1) * n]


def _gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process along dim 0, keeping the graph (gradients flow back)."""
    return _GatherWithGrad.apply(x)


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.2, gather: bool = True) -> torch.Tensor:
    """NT-Xent between two batches of embeddings, ``a[i]`` and ``b[i]`` being a positive pair.

    Every embedding of ``[a; b]`` is an anchor; its positive is its pair, its negatives the other
    ``2M - 2`` embeddings, where ``M`` is the batch size over all processes:

        loss = mean over anchors u of  -log( exp(s(u, u+) / T) / sum_{v != u} exp(s(u, v) / T) )

    with ``s`` the cosine similarity. When ``torch.distributed`` is initialised (and ``gather``), the
    negatives are gathered from every process with gradient; each process averages over its own
    anchors, so the mean over processes (what DDP's gradient averaging optimises) is the loss over the
    global batch. Every process must hold the same batch size.

    Args:
        a, b: ``[N, E]`` embeddings (normalised here).
        temperature: ``T`` > 0 (SiT: 0.2).
        gather: gather negatives across processes when distributed.

    Returns:
        Scalar loss (float32).
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"a and b must both be [N, E] of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    n = a.shape[0]
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        all_a, all_b = _gather_with_grad(a), _gather_with_grad(b)  # [M, E]
        offset = dist.get_rank() * n
    else:
        all_a, all_b, offset = a, b, 0
    m = all_a.shape[0]
    with torch.autocast(device_type=a.device.type, enabled=False):  # similarities in float32
        anchors = torch.cat([a, b], dim=0)  # [2N, E]
        candidates = torch.cat([all_a, all_b], dim=0)  # [2M, E]
        logits = anchors @ candidates.T / temperature  # [2N, 2M]
    local = torch.arange(n, device=a.device) + offset  # global index of the local pairs
    self_index = torch.cat([local, local + m])  # [2N], each anchor's own column
    positive = torch.cat([local + m, local])  # [2N], its pair's column
    is_self = torch.arange(2 * m, device=a.device)[None, :] == self_index[:, None]  # [2N, 2M]
    logits = logits.masked_fill(is_self, float("-inf"))
    return F.cross_entropy(logits, positive)
