"""Device and process-group handling, in one place.

Under ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK in the environment) a process group is started and
each process takes its local GPU; otherwise it is a single process on the chosen device. Only the main
process (rank 0) logs and writes files.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
import torch.nn as nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> the local CUDA device if there is one, else the CPU."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available; use 'cpu' or 'auto'")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None


def is_main_process() -> bool:
    """Rank 0 of the processes a launcher started (or a process started alone): the one that speaks."""
    return os.environ.get("RANK", "0") == "0"


def setup(device: str = "auto") -> DistEnv:
    """Read the launcher's environment and start the process group when there are several processes."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not torch_dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        torch_dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def replica_env(device: torch.device) -> DistEnv:
    """This process, training alone on data every process holds (a linear probe on gathered features):
    no gradient sharing, and only rank 0 writes."""
    rank = torch_dist.get_rank() if torch_dist.is_available() and torch_dist.is_initialized() else 0
    return DistEnv(rank=rank, world_size=1, local_rank=0, device=device)


def gather_rows(local: torch.Tensor, total: int) -> torch.Tensor:
    """Rows ``r, r + W, r + 2W, ...`` of a tensor, held by process ``r`` (each the same count, padded as
    the loader pads), put back in order on every process: the first ``total`` rows."""
    world = torch_dist.get_world_size()
    parts = [torch.empty_like(local) for _ in range(world)]
    torch_dist.all_gather(parts, local.contiguous())
    return torch.stack(parts, dim=1).reshape(-1, *local.shape[1:])[:total]


def max_over_ranks(value: float, device: torch.device) -> float:
    """The largest of every process's ``value`` (a collective: every process calls it), e.g. the slowest
    process's clock, so that all of them take the same decision."""
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return float(t.item())


def teardown(clean: bool = True) -> None:
    """End the process group if one was started, before the interpreter exits.

    After a clean run every process waits for the others first (``clean``): a process that tears its
    connections down while a peer still holds them open aborts in gloo. After an error there is no wait,
    since a peer may never arrive.
    """
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return
    if clean:
        torch_dist.barrier()
    torch_dist.destroy_process_group()


def _in_layout(stride: tuple[int, ...], grad: torch.Tensor) -> torch.Tensor:
    if grad.stride() == stride:
        return grad
    return torch.empty_strided(grad.shape, stride, dtype=grad.dtype, device=grad.device).copy_(grad)


def match_grad_layout(module: nn.Module) -> None:
    """Make convolution weights' gradients arrive in their parameter's strides.

    Some kernels return a weight gradient whose stride on a size-1 dimension differs from the
    parameter's (SiT's transposed-convolution pixel head on grey images: ``(49, 1, 7, 1)`` for a
    ``(49, 49, 7, 1)`` weight): the same memory, but DDP then warns that gradient strides do not match its
    buckets and copies them. A hook restrides such a gradient before it is accumulated (a copy only
    when the strides differ).
    """
    for param in module.parameters():
        if param.requires_grad and param.ndim >= 3:
            param.register_hook(functools.partial(_in_layout, param.stride()))


def wrap(module: nn.Module, env: DistEnv, strategy: str = "ddp") -> nn.Module:
    """The module for several processes: DistributedDataParallel (``ddp``) or FSDP2 sharding (``fsdp``,
    :mod:`mimkit.engine.fsdp`); the module itself in one process.

    Batch norms are synchronised across processes first (:mod:`mimkit.engine.sync_bn`), as SiT's reference
    does, so that their statistics are those of the global batch.
    """
    if not env.distributed:
        if strategy == "fsdp":
            logger.info("train.strategy=fsdp in one process: nothing to shard, the model is trained whole")
        return module
    from mimkit.engine.sync_bn import sync_batch_norms

    module, synced = sync_batch_norms(module, env.device)
    if synced and env.is_main:
        logger.info("%d batch-norm layer(s) synchronised across %d processes", synced, env.world_size)
    if strategy == "fsdp":
        from mimkit.engine import fsdp

        module, blocks = fsdp.shard(module)
        if env.is_main:
            logger.info(
                "FSDP2: parameters, gradients and optimizer state sharded across %d processes (%d blocks "
                "gathered one at a time)",
                env.world_size,
                blocks,
            )
        return module
    match_grad_layout(module)
    ids = [env.device.index] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)
