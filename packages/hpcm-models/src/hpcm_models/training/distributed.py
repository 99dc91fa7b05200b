"""Several processes (``torchrun``): joining the process group, averaging across ranks, and who
logs. A single process is a world of one, and every function here is then a no-op."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..devices import resolve_device

__all__ = ["Dist", "init_distributed", "launched_processes", "reduce_mean", "reduce_sum"]


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: ``rank`` of ``world`` processes (``local_rank`` on its
    machine)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether there are several processes."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """Whether this process logs and writes files (rank 0)."""
        return self.rank == 0


def launched_processes() -> int:
    """How many processes ``torchrun`` started for this run (``WORLD_SIZE``; 1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_flag: str) -> tuple[Dist, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment, if any; the device
    of this process (``--device``; under torchrun each rank takes its ``LOCAL_RANK`` GPU)."""
    world = launched_processes()
    want_cuda = device_flag == "cuda" or (device_flag == "auto" and torch.cuda.is_available())
    if device_flag.startswith("cuda:") and world > 1:
        raise ValueError("under torchrun pass --device cuda (each rank takes its LOCAL_RANK GPU)")
    if world <= 1:
        return Dist(), resolve_device(device_flag, allow_auto=True)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Dist(rank=rank, world=world, local_rank=local_rank), device


def reduce_mean(values: torch.Tensor, d: Dist) -> torch.Tensor:
    """The mean of ``values`` over the ranks (a copy; ``values`` itself on a single process)."""
    if d.enabled:
        values = values.clone()
        dist.all_reduce(values)
        values /= d.world
    return values


def reduce_sum(values: torch.Tensor, d: Dist) -> None:
    """Sum ``values`` over the ranks, in place."""
    if d.enabled:
        dist.all_reduce(values)
