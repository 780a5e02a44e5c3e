"""The two collectives the quantiser needs, as no-ops when only one process runs.

Every call site must be reached by every rank: a collective inside a branch that some
ranks skip hangs the job (the classic vector-quantize-pytorch DDP report).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes, in place."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite `tensor` on every process with the copy held by rank `src`, in place."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor
