"""Parallel denoising and decoding for the ModelScope, I2VGen-XL, AnimateDiff and SVD pipelines
(``pipe.enable_parallel``).

Every rank runs the same pipeline code on the same inputs; the ranks split the model's work. A pipeline's
prediction wraps its model call in :meth:`ParallelRunner.wrap`, as it wraps it in guidance: the wrapper knows
no model family, only which axis of which input holds the guidance batch (dim 0) and the frames (given as
data: ``frame_dim`` and the ``framed`` conditions).

* CFG parallel: the CFG group's rank 0 runs the model on the unconditional half of the guidance
  batch, rank 1 on the conditional half; one all_gather (dim 0) per step joins them.
* Frame parallel: the frame group's ranks each run their slice of frames (``frames.py``: the frame-mixing
  ops communicate); one all_gather over the frame group per step joins the slices.

Guidance then runs on the full prediction as in a single process. After each step every rank holds the same
full latents and steps the scheduler itself (so the scheduler's random draws must match: pass the same seed on
every rank; the initial latents are broadcast from rank 0). The VAE decode is split over all ranks by frames
and gathered on rank 0.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.distributed as dist

from ..sampling.guidance import batch_part
from . import comm
from .frames import frame_parallel, frame_sizes, shard_frames
from .group import ParallelConfig, check_frames, init_distributed


class ParallelPipelineMixin:
    """``enable_parallel`` / ``disable_parallel`` / ``parallel`` for the pipelines that support it.

    A pipeline composes it where its prediction runs through :class:`ParallelRunner`; the others have no
    ``enable_parallel`` (:mod:`vidcore.pipelines.features`)."""

    def enable_parallel(self, cfg: bool = True, frames: bool = True) -> None:
        """Split the denoising over the processes of a torchrun launch (``vidcore.parallel``): ``cfg``
        puts the unconditional and conditional halves of classifier-free guidance on two ranks,
        ``frames`` gives each rank a contiguous slice of the frames (temporal layers communicate).
        Both together need 2 x (frame ranks) processes. The VAE decode is split over all ranks by
        frames; the video is returned on rank 0 only (``frames`` is None on the others). Results
        equal the single-process run; every rank must pass the same arguments and seed."""
        init_distributed(device=self.device)
        self._parallel = ParallelRunner(ParallelConfig.create(cfg=cfg, frames=frames))
        self.check_step_cache_parallel()

    def disable_parallel(self) -> None:
        self._parallel = None

    @property
    def parallel(self) -> "ParallelRunner | None":
        """The :class:`ParallelRunner` after ``enable_parallel``, else None."""
        return getattr(self, "_parallel", None)


class ParallelRunner:
    """The per-step work of a parallel pipeline for one :class:`ParallelConfig`: checks, the initial
    broadcast, the model call split over the ranks (:meth:`wrap`, the same for every family) and the split
    VAE decode."""

    def __init__(self, config: ParallelConfig):
        self.config = config

    def check(self, num_frames: int) -> None:
        """Raise before any work if the frames cannot be split over the frame group (fewer than one per rank)."""
        check_frames(num_frames, self.config.frame_size)

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        """Rank 0's tensor on every rank (initial latents)."""
        x = x.contiguous()
        dist.broadcast(x, src=0)
        return x

    def wrap(self, model: Callable[..., torch.Tensor], guidance: bool, frame_dim: int,
             framed: Iterable[str] = ()) -> Callable[..., torch.Tensor]:
        """``model(x, **conditions) -> prediction`` run split over the ranks, for any model family: the result
        has the same signature and gives every rank the full single-process prediction, so guidance and the
        loop around it stay as they are (``guided(runner.wrap(model, ...), latents, scale, **conditions)``).

        What is split is data, not code: ``x`` and every condition tensor carry the batch on dim 0; with
        ``guidance`` it is the ``[uncond; cond]`` batch and a CFG group of 2 runs one half per rank.
        ``x``, the prediction and the conditions named in ``framed`` carry the frames on ``frame_dim``
        (2 for ``b c f h w``, 1 for SVD's ``b f c h w``); each frame rank runs its contiguous slice inside
        :func:`~vidcore.parallel.frames.frame_parallel`, where the frame-mixing ops communicate. Conditions
        not in ``framed`` reach every frame rank whole (a model that needs their frames takes its own with
        ``vidcore.nn.frame_hooks.frame_start``, as I2VGen-XL's image latents). Whatever is the same for both
        halves and all frames (timestep, motion scale) belongs in the model's closure."""
        pc = self.config
        framed = frozenset(framed)
        split_cfg = guidance and pc.cfg_size == 2

        def parallel_model(x: torch.Tensor, **conditions) -> torch.Tensor:
            missing = framed - conditions.keys()
            if missing:
                raise TypeError(f"framed names conditions the model was not given: {sorted(missing)}")
            if split_cfg:  # this rank's half of [uncond; cond], split as guidance batching splits it
                x, conditions = batch_part(x, pc.cfg_index, 2), batch_part(conditions, pc.cfg_index, 2)
            num_frames = x.shape[frame_dim]
            sizes = frame_sizes(num_frames, pc.frame_group)
            x = shard_frames(x, pc.frame_group, frame_dim)
            conditions = {k: shard_frames(v, pc.frame_group, frame_dim) if k in framed else v
                          for k, v in conditions.items()}
            with frame_parallel(pc.frame_group, num_frames):
                out = model(x, **conditions)
            out = comm.gather(out, pc.frame_group, dim=frame_dim, sizes=sizes)
            return comm.gather(out, pc.cfg_group, dim=0) if split_cfg else out

        return parallel_model

    def decode_parts(self, decode_fn, parts: list[torch.Tensor], frame_shape: tuple[int, ...]) -> torch.Tensor | None:
        """``decode_fn`` on each of ``parts`` (latent chunks decoded independently, e.g. SVD's temporal
        decoder chunks), contiguous runs of parts per rank; all decoded frames in order on rank 0, None
        elsewhere."""
        pc = self.config
        world, rank = pc.world_size, pc.rank
        counts = comm.split_sizes(len(parts), world)  # parts per rank
        first = sum(counts[:rank])
        sizes = [sum(p.shape[0] for p in parts[sum(counts[:r]): sum(counts[:r + 1])]) for r in range(world)]
        device = parts[0].device
        buf = torch.zeros(max(sizes), *frame_shape, dtype=torch.float32, device=device)
        mine = [decode_fn(p).float() for p in parts[first: first + counts[rank]]]
        if mine:
            buf[: sizes[rank]] = torch.cat(mine)
        gathered = [torch.empty_like(buf) for _ in range(world)] if rank == 0 else None
        dist.gather(buf, gathered, dst=0)
        return torch.cat([g[:n] for g, n in zip(gathered, sizes)]) if rank == 0 else None

    def decode(self, decode_fn, z: torch.Tensor, frame_shape: tuple[int, ...]) -> torch.Tensor | None:
        """``decode_fn`` (n c h w latents -> n *frame_shape images) over all ranks, each on a contiguous
        chunk of the frames; the frames in order on rank 0, None elsewhere."""
        pc = self.config
        world, rank = pc.world_size, pc.rank
        n = z.shape[0]
        per = -(-n // world)
        mine = z[rank * per: (rank + 1) * per]
        out = decode_fn(mine) if mine.shape[0] else None
        buf = torch.zeros(per, *frame_shape, dtype=torch.float32, device=z.device)
        if out is not None:
            buf[: out.shape[0]] = out.float()
        parts = [torch.empty_like(buf) for _ in range(world)] if rank == 0 else None
        dist.gather(buf, parts, dst=0)
        return torch.cat(parts)[:n] if rank == 0 else None
