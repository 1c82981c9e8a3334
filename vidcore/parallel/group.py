"""Process groups for exact parallel inference: setup from torchrun's environment and the layout of
the CFG and frame groups.

Ranks form a grid ``cfg_size x frame_size`` (``rank = cfg_index * frame_size + frame_index``):
ranks with the same ``cfg_index`` hold the same half of the guidance batch and split its frames;
ranks with the same ``frame_index`` hold the same frames of the two halves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


def init_distributed(backend: str | None = None, device: str | torch.device | None = None,
                     timeout_s: float = 1800.0) -> torch.device:
    """Initialise the default process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``) unless one exists; returns this process's device.

    ``backend`` defaults to NCCL when the device is CUDA and gloo otherwise. On CUDA each process
    takes GPU ``LOCAL_RANK``.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(f"no process group and no torchrun environment (missing {missing}); launch with "
                               "`torchrun --nproc-per-node N ...` or call torch.distributed.init_process_group first")
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    return device


@dataclass
class ParallelConfig:
    """Who does what. ``cfg_group``/``frame_group`` are None where that dimension has size 1."""

    cfg: bool
    frames: bool
    rank: int
    world_size: int
    cfg_size: int
    cfg_index: int
    cfg_group: dist.ProcessGroup | None
    frame_size: int
    frame_index: int
    frame_group: dist.ProcessGroup | None
    world_group: dist.ProcessGroup | None = None

    @classmethod
    def create(cls, cfg: bool = True, frames: bool = True) -> "ParallelConfig":
        """Build the groups over the default process group (every rank must call this, in the same order).

        ``cfg`` needs 2 ranks per frame slice; ``frames`` splits the frames over the remaining
        ``world_size / 2`` (cfg+frames) or ``world_size`` (frames only) ranks.
        """
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised; call vidcore.parallel.init_distributed() "
                               "(under torchrun) first")
        if not (cfg or frames):
            raise ValueError("enable_parallel: choose cfg=True, frames=True or both")
        world, rank = dist.get_world_size(), dist.get_rank()
        if cfg and not frames and world != 2:
            raise ValueError(f"CFG parallel alone runs on exactly 2 processes, got world size {world}; "
                             "use cfg+frames for more")
        if cfg and frames and world % 2:
            raise ValueError(f"cfg+frames parallel needs an even world size (2 x frame ranks), got {world}")
        cfg_size = 2 if cfg else 1
        frame_size = world // cfg_size if frames else 1
        if not frames and cfg_size != world:
            raise ValueError(f"frames=False: the world size must be {cfg_size}, got {world}")
        cfg_index, frame_index = divmod(rank, frame_size)
        cfg_group = frame_group = None
        # new_group is collective over the default group: every rank creates every group, in order
        for j in range(frame_size):
            ranks = [i * frame_size + j for i in range(cfg_size)]
            g = dist.new_group(ranks) if cfg_size > 1 else None
            if j == frame_index:
                cfg_group = g
        for i in range(cfg_size):
            ranks = [i * frame_size + j for j in range(frame_size)]
            g = dist.new_group(ranks) if frame_size > 1 else None
            if i == cfg_index:
                frame_group = g
        return cls(cfg, frames, rank, world, cfg_size, cfg_index, cfg_group, frame_size, frame_index, frame_group,
                   dist.group.WORLD)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def frame_slice(self, num_frames: int) -> slice:
        """This rank's contiguous frames (the first ``num_frames % frame_size`` ranks hold one more)."""
        check_frames(num_frames, self.frame_size)
        base, extra = divmod(num_frames, self.frame_size)
        start = self.frame_index * base + min(self.frame_index, extra)
        return slice(start, start + base + (self.frame_index < extra))


def check_frames(num_frames: int, frame_size: int) -> None:
    """Every rank of a frame group needs at least one frame."""
    if num_frames < frame_size:
        raise ValueError(f"frame parallel over {frame_size} processes needs at least {frame_size} frames (one per "
                         f"process), got num_frames={num_frames}; use fewer processes (--nproc-per-node)")
