"""The collectives the quantiser needs (no-ops when only one process runs), and how a multi-process run ends.

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


# The default process group, referenced for the life of the process (see `keep_process_group_alive`).
_KEPT: list[object] = []


def keep_process_group_alive() -> None:
    """Hold the default process group until the process ends, so that no Python object's deallocation destroys it.

    Under gloo, when the last reference to the group goes with DDP's reducer (freed as the training
    function returns, after `destroy_process_group` dropped the registry's), `~ProcessGroupGloo` joins
    gloo's worker threads while holding the GIL; a worker still releasing a finished collective's tensors
    needs the GIL: a deadlock that hung about one 2-process run in six after its work was done and saved
    (seen with gdb: the main thread in `~ProcessGroupGloo` joining, a `pt_gloo_runloop` thread in
    `~AsyncAllgatherWork` waiting for the GIL). Held here, the group outlives every such object, and the
    scripts leave through `leave_after_distributed_run`.
    """
    if dist.is_available() and dist.is_initialized() and not _KEPT:
        _KEPT.append(dist.group.WORLD)


def leave_after_distributed_run() -> None:
    """End a finished multi-process script without tearing the process group down at interpreter exit
    (where the same deadlock as in `keep_process_group_alive` can strike): everything is written by then,
    so the process flushes its output and leaves at once. A single process returns normally."""
    import logging
    import os
    import sys

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
