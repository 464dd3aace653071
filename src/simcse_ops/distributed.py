"""Multi-process training helpers (torchrun; gloo on CPU, NCCL on CUDA).

Negatives span the global batch: each rank gathers every rank's embeddings, puts its own local
tensor (which carries the autograd graph) in its own slot, and computes the loss over the whole
global batch, as the SimCSE reference does. Every rank then holds the same loss L; rank r's
backward yields dL/dtheta through its own slice only, so the SUM of the ranks' gradients is exactly
the single-process gradient of L on the same global batch (`sum_gradients`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def gather_with_grad(x: Tensor, ctx: DistContext) -> Tensor:
    """(b, H) on each rank -> (world * b, H); this rank's slice is `x` itself (keeps its grad)."""
    if not ctx.enabled:
        return x
    chunks = [torch.empty_like(x) for _ in range(ctx.world_size)]
    dist.all_gather(chunks, x.detach().contiguous())
    chunks[ctx.rank] = x
    return torch.cat(chunks, dim=0)


def sum_gradients(params, ctx: DistContext) -> None:
    """All-reduce (sum) the gradients of `params` in one flat buffer."""
    if not ctx.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def broadcast_parameters(module: torch.nn.Module, ctx: DistContext) -> None:
    """Make every rank start from rank 0's weights."""
    if not ctx.enabled:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def all_gather_object(obj, ctx: DistContext) -> list:
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
