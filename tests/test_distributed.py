"""Gathered InfoNCE on 2 gloo processes: same loss and, after summing, the same gradients as one
process on the whole global batch."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from simcse_ops.distributed import DistContext, gather_with_grad, sum_gradients
from simcse_ops.loss import info_nce

B, D_IN, D = 8, 6, 5  # global batch, input and embedding sizes


def _problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, B, D_IN, generator=g)  # anchors, positives, negatives
    w = torch.randn(D, D_IN, generator=g)
    return x, w


def _worker(rank: int, world: int, port: int, out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ctx = DistContext(rank=rank, world_size=world)
        x, w0 = _problem()
        w = torch.nn.Parameter(w0.clone())
        b = B // world
        local = [t[rank * b:(rank + 1) * b] @ w.T for t in x]  # each (b, D)
        loss = info_nce(*(gather_with_grad(z, ctx) for z in local), temperature=0.05, hard_negative_weight=0.3)
        loss.backward()
        own = w.grad.clone()
        sum_gradients([w], ctx)
        out[rank] = (loss.item(), own, w.grad.clone())
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_give_single_process_loss_and_gradient():
    x, w0 = _problem()
    w = torch.nn.Parameter(w0.clone())
    ref = info_nce(*(t @ w.T for t in x), temperature=0.05, hard_negative_weight=0.3)
    ref.backward()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
    for rank in (0, 1):
        loss, own, summed = out[rank]
        assert abs(loss - ref.item()) < 1e-5
        torch.testing.assert_close(summed, w.grad, rtol=1e-5, atol=1e-6)
        # Before the sum a rank holds only its own slice's share of the gradient.
        assert not torch.allclose(own, w.grad, rtol=1e-3, atol=1e-5)
