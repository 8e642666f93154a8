"""torchrun / DistributedDataParallel: process placement and the few collectives we need.

Under torchrun every process has RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE in its
environment; `cifarlab train` then joins the process group (NCCL on CUDA, gloo on the CPU)
and trains with DDP. Without them it is a single process and nothing here communicates.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..run.device import pick_device


@dataclass(frozen=True)
class Placement:
    """Where this training process runs."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # rank within this node: it fetches the node's data

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device_name: str) -> Placement:
    """Join the process group if torchrun started us; pick this process's device."""
    if not launched_by_torchrun():
        return Placement(pick_device(device_name))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    device = pick_device(device_name)
    if device.type == "cuda":
        available = torch.cuda.device_count()
        if local_world > available:
            raise ConfigError(f"{local_world} processes on this node but only {available} CUDA device(s): "
                              f"use --nproc-per-node {available} or fewer, or --device cpu")  # fmt: skip
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size
        )
    return Placement(device, rank=rank, world_size=world_size, local_rank=local_rank)


def teardown() -> None:
    if dist.is_initialized():
        # The DDP wrapper sits in reference cycles (its hooks refer back to the module), so
        # it can outlive the training state until a later collection, with its reducer
        # still holding the process group. Collect it first, so the group is not destroyed
        # under it; once (unreproduced) a rank aborted at exit with "terminate called
        # without an active exception", which points at such a leftover thread.
        gc.collect()
        dist.destroy_process_group()


def broadcast_object(obj: Any, placement: Placement) -> Any:
    """Rank 0's `obj` on every rank (pickled; for configs and checkpoints, not per step)."""
    if placement.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(
        box, src=0, device=placement.device if placement.device.type == "cuda" else None
    )
    return box[0]


def barrier(placement: Placement) -> None:
    if placement.world_size > 1:
        dist.barrier()


def any_rank(flags: list[torch.Tensor | int | bool], placement: Placement) -> list[int]:
    """Element-wise max of small integer flags across ranks (one all-reduce): every rank
    takes the same decision to stop, so none is left waiting in a collective."""
    values = torch.stack(
        [torch.as_tensor(f, device=placement.device).reshape(()).to(torch.int32) for f in flags]
    )
    if placement.world_size > 1:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values.tolist()


def gather_batch(values: torch.Tensor, placement: Placement) -> torch.Tensor:
    """Each rank's [B] values -> the global batch's [world_size x B], in rank order, on
    every rank (one all-gather); on one process, the values themselves."""
    if placement.world_size == 1:
        return values
    parts = [torch.empty_like(values) for _ in range(placement.world_size)]
    dist.all_gather(parts, values)
    return torch.cat(parts)


def per_rank_batch_size(run, world_size: int) -> int:
    """Images per process per step (`run`: a RunConfig): --batch-size, or
    --global-batch-size split evenly (config.global_batch_size: the total)."""
    from ..config import global_batch_size

    total = global_batch_size(run, world_size)
    if total % world_size:
        raise ConfigError(f"global batch {total} does not divide among {world_size} processes")
    return total // world_size
