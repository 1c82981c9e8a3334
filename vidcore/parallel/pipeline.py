"""Parallel denoising and decoding for the ModelScope pipelines (``pipe.enable_parallel``).

Every rank runs the same pipeline code on the same inputs; the ranks split the UNet's work:

* CFG parallel: the CFG group's rank 0 runs the UNet on the unconditional half of the guidance
  batch, rank 1 on the conditional half; one all_gather of the noise predictions per step.
* Frame parallel: the frame group's ranks each run their slice of frames (``frames.py``); the
  guided noise of the slices is gathered once per step.

After each step every rank holds the same full latents and steps the scheduler itself (so the
scheduler's random draws must match: pass the same seed on every rank; the initial latents are
broadcast from rank 0). The VAE decode is split over all ranks by frames and gathered on rank 0.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from . import comm
from .frames import unet3d_forward
from .group import ParallelConfig, check_frames


class ParallelRunner:
    def __init__(self, config: ParallelConfig):
        self.config = config

    def check(self, num_frames: int) -> None:
        """Raise before any work if the frames cannot be split over the frame group."""
        check_frames(num_frames, self.config.frame_size)

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        """Rank 0's tensor on every rank (initial latents)."""
        x = x.contiguous()
        dist.broadcast(x, src=0)
        return x

    def predict_noise(self, unet, model_in: torch.Tensor, t, embeds: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """Guided noise for ``model_in`` (b c f h w, already scaled); ``embeds`` is [uncond; cond]
        (2b m d) with guidance, else cond (b m d). Returns the full b c f h w noise on every rank."""
        pc = self.config
        guidance = guidance_scale > 1.0
        if guidance and pc.cfg_size == 2:
            half = embeds.chunk(2)[pc.cfg_index]
            local = unet3d_forward(unet, model_in, t, half, pc.frame_group, gather=False)  # b c f_l h w
            uncond, cond = comm.gather(local, pc.cfg_group, dim=0).chunk(2)
            noise = uncond + guidance_scale * (cond - uncond)
        else:  # frames only (or cfg ranks without guidance: both compute the same)
            batch = torch.cat([model_in] * 2) if guidance else model_in
            noise = unet3d_forward(unet, batch, t, embeds, pc.frame_group, gather=False)
            if guidance:
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance_scale * (cond - uncond)
        return comm.gather(noise, pc.frame_group, dim=2)

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
