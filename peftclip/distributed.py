"""One writer for files that every DDP rank needs: rank 0 goes first, the others then read.

Lightning starts one process per device (docs/multi_gpu.md). A cache that each of them would
compute and write (image-feature tables, frozen text heads) is computed once: the other ranks
wait at a barrier until rank 0 has read or computed and written it, then find it on disk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def world_size() -> int:
    """Processes of the current ``torch.distributed`` group (1 outside DDP)."""
    distributed = torch.distributed
    return distributed.get_world_size() if distributed.is_initialized() else 1


@contextlib.contextmanager
def rank_zero_first(enabled: bool = True) -> Iterator[None]:
    """Runs the body on rank 0 first and on the other ranks once rank 0 has left it.

    Every rank must enter it at the same point (it holds one collective barrier each). Without
    DDP, or with ``enabled`` false, it does nothing.
    """
    shared = enabled and world_size() > 1
    first = not shared or torch.distributed.get_rank() == 0
    if not first:
        torch.distributed.barrier()  # rank 0 reads, or computes and writes
    try:
        yield
    finally:
        if shared and first:
            torch.distributed.barrier()  # it is on disk: the other ranks read it
