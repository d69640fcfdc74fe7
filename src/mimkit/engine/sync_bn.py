"""Batch norms synchronised across processes, for ``torchrun`` runs whose models have them (SiT's heads).

On CUDA, torch's :class:`~torch.nn.SyncBatchNorm`; on CPUs (gloo), where torch's refuses its input and DDP
refuses to wrap it, :class:`HostSyncBatchNorm`, written here: two all-reduces with gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
import torch.nn as nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward sums the incoming gradients over processes too: every process's
    output depends on every process's input."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        torch_dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch_dist.all_reduce(grad)
        return grad


class HostSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A batch norm synchronised across processes on the CPU (gloo), where :class:`torch.nn.SyncBatchNorm`
    refuses to run (and DDP refuses to wrap it).

    In training, the batch mean and variance are those of the images of every process (two all-reduces:
    count and sum, then the sum of squared deviations, so the variance is as exact as one process's), with
    gradients flowing through them to every process; running statistics move as BatchNorm's do. Outside
    training, or in one process, it is BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch_dist.is_initialized() and torch_dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.ndim)]
        shape = [1, -1] + [1] * (x.ndim - 2)
        xf = x.float()
        local = torch.cat([xf.sum(dims), xf.new_tensor([x.numel() // x.shape[1]])])
        total = _AllReduceSum.apply(local)
        count = total[-1].detach()
        mean = total[:-1] / count
        centred = xf - mean.view(shape)
        var = _AllReduceSum.apply(centred.square().sum(dims)) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                factor = self._count_batch()
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                unbiased = var.detach() * count / (count - 1).clamp_min(1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    def _count_batch(self) -> float:
        """Count this batch; BatchNorm's exponential-average factor for it."""
        self.num_batches_tracked.add_(1)
        return 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum


def sync_batch_norms(module: nn.Module, device: torch.device) -> tuple[nn.Module, int]:
    """Every BatchNorm of ``module`` synchronised across processes (:class:`torch.nn.SyncBatchNorm` on
    CUDA, :class:`HostSyncBatchNorm` elsewhere), with the same parameters and buffers, so optimizers and
    state-dict names are unchanged; returns (module, how many were converted)."""
    batch_norms = (nn.modules.batchnorm._BatchNorm,)
    count = sum(
        isinstance(m, batch_norms) and not isinstance(m, (nn.SyncBatchNorm, HostSyncBatchNorm))
        for m in module.modules()
    )
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module), count

    def convert(child: nn.Module) -> nn.Module:
        if not isinstance(child, batch_norms) or isinstance(child, (nn.SyncBatchNorm, HostSyncBatchNorm)):
            for name, grandchild in child.named_children():
                setattr(child, name, convert(grandchild))
            return child
        sync = HostSyncBatchNorm(
            child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
        )
        sync.weight, sync.bias = child.weight, child.bias
        sync.running_mean, sync.running_var = child.running_mean, child.running_var
        sync.num_batches_tracked = child.num_batches_tracked
        sync.train(child.training)
        return sync

    return convert(module), count
