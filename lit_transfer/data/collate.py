"""Collating image items into batches: bad files carried along, worker batches allocated in shared memory."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import get_worker_info

from lit_transfer.core.batches import BadSample, Batch


def collate_skipping_bad(items: list[Any]) -> Batch:
    """Stack the good items; carry the skipped files along so the main process can report them.

    Items' images are ``(C, H, W)``, or ``(V, C, H, W)`` TTA views (``data.init_args.tta``), stacked to
    ``(B, V, C, H, W)``.
    """
    good = [item for item in items if not isinstance(item, BadSample)]
    bad = [item for item in items if isinstance(item, BadSample)]
    if not good:
        empty = torch.empty(0, dtype=torch.long)
        return Batch(torch.empty(0, 3, 1, 1, dtype=torch.uint8), empty, empty, bad)
    return Batch(
        stack_shared([g[0] for g in good]),
        _shared(torch.tensor([g[1] for g in good], dtype=torch.long)),
        _shared(torch.tensor([g[2] for g in good], dtype=torch.long)),
        bad,
    )


def stack_shared(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack``; in a loader worker, straight into shared memory, as PyTorch's default collate does.

    A worker's batch travels to the training process through shared memory (``/dev/shm``). Left to the queue's
    background thread, a full ``/dev/shm`` fails there, unseen, and the training process waits forever for the
    batch; allocated here, the error reaches the training process and names shared memory.
    """
    if get_worker_info() is None:
        return torch.stack(tensors)
    first = tensors[0]
    storage = first._typed_storage()._new_shared(sum(t.numel() for t in tensors), device=first.device)
    out = first.new(storage).resize_(len(tensors), *first.shape)
    return torch.stack(tensors, out=out)


def _shared(tensor: torch.Tensor) -> torch.Tensor:
    """In a loader worker, ``tensor`` moved to shared memory now, so a full ``/dev/shm`` fails here (see above)."""
    return tensor.share_memory_() if get_worker_info() is not None else tensor
