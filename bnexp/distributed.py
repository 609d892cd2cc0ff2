"""Data-parallel runs under torchrun: one process per device, and rank 0 writes.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE. Every process runs the same `bnexp train`
command; they agree on one run dir (rank 0's time stamp) before Hydra names it, each trains on
its own part of every global batch, DistributedDataParallel averages the gradients, and only
rank 0 writes logs, checkpoints and the summary. Torch is imported where a process group is used,
so that reading the rank (the CLI, before it knows whether it trains) costs nothing.
"""

from __future__ import annotations

import os
from datetime import datetime

STAMP = "BNEXP_RUN_STAMP"  # configs/config.yaml names the run dir after it when set


def rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def start() -> None:
    """Join the process group (gloo carries CPU tensors, NCCL CUDA ones) and share rank 0's time stamp."""
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    stamp = [datetime.now().strftime("%Y-%m-%d_%H-%M-%S")]
    dist.broadcast_object_list(stamp, src=0)
    os.environ[STAMP] = stamp[0]


def stop() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def any_process(flags: list[bool], device) -> list[bool]:
    """Each flag, true if it is true in any process: all processes take the same branch."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return flags
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def mean_over_processes(t):
    """The mean of tensor `t` over all processes (each holds the value for its part of the global batch)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()
