"""Which process this is, as the launcher (torchrun, SLURM, Lightning's DDP launcher) numbered it."""

from __future__ import annotations

import os


def launch_rank() -> int:
    """The global rank the launcher gave this process (torchrun, SLURM, Lightning's launcher); 0 if none.

    Known before any trainer exists, so the first process alone can scan the data or reserve the run folder.
    """
    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")) or 0)
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    return 0 if node == 0 and local == 0 else max(1, node + local)


def close_process_group() -> None:
    """Destroy the default process group, if any, once a command has finished on every process.

    Without it the interpreter can shut down while Gloo's worker threads still hold tensors, and a process that
    trained and tested correctly aborts at exit ("terminate called without an active exception", SIGABRT), so
    torchrun reports the whole job failed (pytorch/pytorch#179291). Only after success: after an error other ranks
    may still be inside a collective, and destroying the group under them could hang.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
