"""HostSyncBatchNorm on 2 gloo processes against one BatchNorm on the combined batch: outputs, input and
parameter gradients, running statistics."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from mimkit.engine.sync_bn import HostSyncBatchNorm, sync_batch_norms

N, C, L = 12, 5, 3  # 6 rows per process


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, L, generator=g) * 3 + 1
    upstream = torch.randn(N, C, L, generator=g)
    weight, bias = torch.randn(C, generator=g), torch.randn(C, generator=g)
    return x, upstream, weight, bias


def _worker(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    x, upstream, weight, bias = _data()
    bn = HostSyncBatchNorm(C, momentum=0.1)
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    rows = slice(rank * N // 2, (rank + 1) * N // 2)
    mine = x[rows].clone().requires_grad_()
    for _ in range(2):  # two batches: running statistics move twice
        mine.grad, bn.weight.grad, bn.bias.grad = None, None, None
        y = bn(mine)
        (y * upstream[rows]).sum().backward()
    torch.save(
        {
            "y": y.detach(),
            "x_grad": mine.grad,
            "w_grad": bn.weight.grad,
            "b_grad": bn.bias.grad,
            "mean": bn.running_mean,
            "var": bn.running_var,
            "tracked": bn.num_batches_tracked,
        },
        f"{out}/{rank}.pt",
    )
    dist.destroy_process_group()


def test_two_processes_normalise_as_one_batch_norm_on_the_whole_batch(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]
    x, upstream, weight, bias = _data()
    ref = nn.BatchNorm1d(C, momentum=0.1)
    with torch.no_grad():
        ref.weight.copy_(weight)
        ref.bias.copy_(bias)
    x = x.requires_grad_()
    for _ in range(2):
        x.grad, ref.weight.grad, ref.bias.grad = None, None, None
        y = ref(x)
        (y * upstream).sum().backward()
    close = dict(atol=1e-5, rtol=1e-5)
    assert torch.allclose(torch.cat([p["y"] for p in parts]), y, **close)
    # each process receives the gradient of the whole batch's loss for its own rows
    assert torch.allclose(torch.cat([p["x_grad"] for p in parts]), x.grad, **close)
    # parameter gradients: each process holds its rows' share; DDP's sum over processes is the whole
    assert torch.allclose(parts[0]["w_grad"] + parts[1]["w_grad"], ref.weight.grad, **close)
    assert torch.allclose(parts[0]["b_grad"] + parts[1]["b_grad"], ref.bias.grad, **close)
    for p in parts:  # running statistics: the global batch's (unbiased variance), on every process
        assert torch.allclose(p["mean"], ref.running_mean, **close)
        assert torch.allclose(p["var"], ref.running_var, **close)
        assert int(p["tracked"]) == 2


def test_outside_a_process_group_it_is_batch_norm():
    x, upstream, weight, bias = _data()
    ref = nn.BatchNorm1d(C)
    model, converted = sync_batch_norms(nn.Sequential(nn.Linear(L, L), ref), torch.device("cpu"))
    assert converted == 1 and isinstance(model[1], HostSyncBatchNorm)
    assert model[1].weight is ref.weight and model[1].running_mean is ref.running_mean  # shared, not copied
    plain = nn.BatchNorm1d(C)
    assert torch.allclose(model[1](x), plain(x), atol=1e-6)
    assert torch.allclose(model[1].running_var, plain.running_var)
    assert sync_batch_norms(model, torch.device("cpu"))[1] == 0  # converting twice converts nothing
