"""ActNorm initialisation under multi-process training: ranks diverge without the broadcast, agree with it."""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ipoke.models.cinn import ConditionalINN, broadcast_actnorm


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, results: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        model = ConditionalINN(z_dim=4, condition_channels=2, spatial_size=4, architecture="coupling",
                               hidden_channels=4, num_blocks=2)
        # Every rank sees its own first batch, as under DDP.
        generator = torch.Generator().manual_seed(100 + rank)
        z = torch.randn(8, 4, 4, 4, generator=generator) * (1 + rank) + rank
        h = torch.randn(8, 2, 4, 4, generator=generator)
        model.initialize_actnorm(z, h)

        def gathered() -> list[torch.Tensor]:
            local = torch.cat([p.detach().flatten() for layer in model.actnorm_layers()
                               for p in (layer.log_scale, layer.bias)])
            out = [torch.empty_like(local) for _ in range(world_size)]
            dist.all_gather(out, local)
            return out

        before = gathered()
        broadcast_actnorm(model)
        after = gathered()
        if rank == 0:
            results["spread_before"] = (before[0] - before[1]).abs().max().item()
            results["spread_after"] = (after[0] - after[1]).abs().max().item()
        results[f"initialized_{rank}"] = model.actnorm_initialized
    finally:
        dist.destroy_process_group()


def test_broadcast_makes_actnorm_identical_across_ranks():
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), results), nprocs=2, join=True)
        results = dict(results)
    assert results["spread_before"] > 0.1
    assert results["spread_after"] == 0.0
    assert results["initialized_0"] and results["initialized_1"]


def test_broadcast_is_a_no_op_without_a_process_group():
    model = ConditionalINN(z_dim=4, condition_channels=2, spatial_size=4, architecture="coupling",
                           hidden_channels=4, num_blocks=1)
    broadcast_actnorm(model)
    assert not model.actnorm_initialized
