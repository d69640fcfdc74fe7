"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for ``train.strategy: fsdp``: parameters, gradients and
optimizer state sharded across processes, for encoders too large to replicate (ViT-L / ViT-H).

Sharding: every module that declares itself a unit (``fsdp_unit = True``: the transformer blocks) is its
own unit, so that one block's parameters are gathered at a time, then the whole model (the rest: embeddings,
norms, heads). The model says where its units are, as torchtitan's models supply their parallelize plan.

Checkpoints hold the **gathered full state** (model and optimizer), in the same format as a single
process's: one file that resumes on any number of processes and with either strategy, and that every
other mimkit command (evaluation, export, pictures) reads as it is. torch.distributed.checkpoint's sharded
directories would save the gather, but they tie every reader to the sharded format; the encoders mimkit
targets (up to ViT-H, ~630M parameters, ~7.5 GB with AdamW's state in fp32) fit in one node's host memory.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

# gathered on every process, kept on the CPU on rank 0 only
_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
_LOAD = StateDictOptions(full_state_dict=True)


def units(module: nn.Module) -> list[nn.Module]:
    """The submodules of ``module`` that declare themselves FSDP units (``fsdp_unit = True``)."""
    return [m for m in module.modules() if getattr(m, "fsdp_unit", False)]


def shard(module: nn.Module) -> tuple[nn.Module, int]:
    """Shard ``module`` in place: each transformer block, then the root; returns (module, blocks sharded).

    Rank 0's parameters and buffers are broadcast first, as DDP does: each process keeps a slice of its own
    copy, so copies initialised differently would make a model that no process built.
    """
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            torch.distributed.broadcast(tensor, src=0)
    blocks = units(module)
    for unit in blocks:
        fully_shard(unit)
    fully_shard(module)
    return module, len(blocks)


def _param_order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    names = {param: name for name, param in model.named_parameters()}
    return [names[p] for group in optimizer.param_groups for p in group["params"]]


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The model's and optimizer's full state (a collective: every process calls it; rank 0 gets the
    tensors, on the CPU), the optimizer's in ``Optimizer.state_dict()``'s format (states by index)."""
    weights = get_model_state_dict(model, options=_GATHER)
    by_name = get_optimizer_state_dict(model, optimizer, options=_GATHER)
    index = {name: i for i, name in enumerate(_param_order(model, optimizer))}
    optim = {
        "state": {index[name]: value for name, value in by_name.get("state", {}).items()},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]}
            for group in by_name.get("param_groups", [])
        ],
    }
    return weights, optim


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, Any], optim: dict[str, Any]
) -> None:
    """Load a full state (a checkpoint of any strategy and world size) into the sharded model and optimizer;
    every process passes the whole of it."""
    set_model_state_dict(model, weights, options=_LOAD)
    order = _param_order(model, optimizer)
    by_name = {
        "state": {order[i]: value for i, value in optim["state"].items()},
        "param_groups": [
            {**group, "params": [order[i] for i in group["params"]]} for group in optim["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=_LOAD)
