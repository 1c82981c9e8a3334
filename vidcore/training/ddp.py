"""Data-parallel training under torchrun, with nothing heavier than one all-reduce of the LoRA gradients.

Only the LoRA branches train (a few MB), so instead of wrapping the UNet in ``DistributedDataParallel`` (which
hooks every parameter and buckets gradients for models whose weights all train) each process runs the plain
model on its share of the batch and the branches' gradients are averaged in one flat all-reduce before the
optimizer step. Every process then takes the same step from the same state, so the replicas never drift and no
weights are ever broadcast after the start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..parallel.group import init_distributed as join_process_group


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: ``rank`` of ``world_size`` (1: a single process, no group)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")  # where collectives run (NCCL needs CUDA tensors)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file (checkpoints, samples, the LoRA, the log) and shows the progress bar."""
        return self.rank == 0


def init_distributed(device: torch.device) -> Distributed:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 (through the inference side's
    :func:`vidcore.parallel.group.init_distributed`: gloo on the CPU, NCCL on CUDA); a group someone already made
    (tests, a caller's own launcher) is used as it is."""
    joined = dist.is_available() and dist.is_initialized()
    if not joined and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed()
    device = join_process_group(device=device)
    return Distributed(dist.get_rank(), dist.get_world_size(), _collective_device(device))


def _collective_device(device: torch.device) -> torch.device:
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def average_gradients(params: list[torch.nn.Parameter], ddp: Distributed) -> None:
    """Replace each gradient by its mean over the processes (one all-reduce of a flat buffer). Parameters without
    a gradient are left out; every process skips the same ones, because what decides it (MotionDirector's
    masked spatial path) is drawn from the shared seed."""
    if not ddp.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads]).to(ddp.device)
    dist.all_reduce(flat)
    flat /= ddp.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))  # copy_ moves it back to the gradient's device
        offset += g.numel()


def mean_over_processes(value: float, ddp: Distributed) -> float:
    """The mean of a per-process number (each process's batch loss -> the global batch's)."""
    if not ddp.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ddp.device)
    dist.all_reduce(t)
    return float(t) / ddp.world_size


def gather_objects(obj, ddp: Distributed) -> list:
    """Every process's ``obj`` (e.g. its RNG state for the checkpoint), in rank order."""
    if not ddp.enabled:
        return [obj]
    out = [None] * ddp.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ddp: Distributed) -> None:
    if ddp.enabled:
        dist.barrier()


__all__ = ["Distributed", "average_gradients", "barrier", "gather_objects", "init_distributed", "mean_over_processes"]
