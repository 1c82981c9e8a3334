"""Parallel denoising and decoding for the ModelScope, I2VGen-XL, AnimateDiff and SVD pipelines
(``pipe.enable_parallel``).

Every rank runs the same pipeline code on the same inputs; the ranks split the UNet's work:

* CFG parallel: the CFG group's rank 0 runs the UNet on the unconditional half of the guidance
  batch, rank 1 on the conditional half; one all_gather of the noise predictions per step (of the
  rank's frames; the guided frames are then gathered over the frame group).
* Frame parallel: the frame group's ranks each run their slice of frames (``frames.py``); the
  guided noise of the slices is gathered once per step.

After each step every rank holds the same full latents and steps the scheduler itself (so the
scheduler's random draws must match: pass the same seed on every rank; the initial latents are
broadcast from rank 0). The VAE decode is split over all ranks by frames and gathered on rank 0.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..sampling.guidance import apply_guidance
from . import comm
from .frames import frame_sizes, i2vgen_unet_forward, svd_unet_forward, unet3d_forward
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
    broadcast, the guided noise prediction (UNet3D / UNetMotion or SVD) and the split VAE decode."""

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

    def predict_noise(self, unet, model_in: torch.Tensor, t, embeds: torch.Tensor, guidance_scale: float,
                      image_conditioning: tuple[torch.Tensor, ...] | None = None, motion_scale=None) -> torch.Tensor:
        """Guided noise for ``model_in`` (b c f h w, already scaled); ``embeds`` is [uncond; cond]
        (2b m d) with guidance, else cond (b m d). ``image_conditioning``: I2VGen-XL's (fps, image
        latents, image embeddings), batched like ``embeds``; ``motion_scale``: AnimateDiff's per-frame motion
        scale (UNetMotion). Returns the full b c f h w noise on every rank."""
        pc = self.config
        guidance = guidance_scale > 1.0
        sizes = frame_sizes(model_in.shape[2], pc.frame_group)

        def forward(x, text, extra):  # this rank's frames of unet(x, t, text)
            if extra is None:
                return unet3d_forward(unet, x, t, text, pc.frame_group, gather=False, motion_scale=motion_scale)
            return i2vgen_unet_forward(unet, x, t, *extra, text, pc.frame_group, gather=False)

        if guidance and pc.cfg_size == 2:
            i = pc.cfg_index
            extra = None if image_conditioning is None else tuple(c.chunk(2)[i] for c in image_conditioning)
            local = forward(model_in, embeds.chunk(2)[i], extra)  # b c f_l h w
            noise = apply_guidance(comm.gather(local, pc.cfg_group, dim=0), guidance_scale)
        else:  # frames only (or cfg ranks without guidance: both compute the same)
            batch = torch.cat([model_in] * 2) if guidance else model_in
            noise = forward(batch, embeds, image_conditioning)
            if guidance:
                noise = apply_guidance(noise, guidance_scale)
        return comm.gather(noise, pc.frame_group, dim=2, sizes=sizes)

    def predict_noise_svd(self, unet, model_in: torch.Tensor, t, image_latents: torch.Tensor, embeds: torch.Tensor,
                          time_ids: torch.Tensor, guidance_scale: torch.Tensor | None) -> torch.Tensor:
        """SVD's guided prediction for ``model_in`` (b f 4 h w, scaled). With guidance the conditions
        (image latents b f 4 h w, image embeddings b 1 d, added time ids b k) are [uncond; cond] and
        ``guidance_scale`` holds per-frame scales ``b f 1 1 1``. Full b f 4 h w on every rank."""
        pc = self.config
        guidance = guidance_scale is not None
        sizes = frame_sizes(model_in.shape[1], pc.frame_group)
        if guidance and pc.cfg_size == 2:
            i = pc.cfg_index
            x = torch.cat([model_in, image_latents.chunk(2)[i]], dim=2)
            local = svd_unet_forward(unet, x, t, embeds.chunk(2)[i], time_ids.chunk(2)[i], pc.frame_group, gather=False)
            local = comm.gather(local, pc.cfg_group, dim=0)  # [uncond; cond] of this rank's frames
        else:
            x = torch.cat([torch.cat([model_in] * 2) if guidance else model_in, image_latents], dim=2)
            local = svd_unet_forward(unet, x, t, embeds, time_ids, pc.frame_group, gather=False)
            if not guidance:
                return comm.gather(local, pc.frame_group, dim=1, sizes=sizes)
        scale = guidance_scale[:, pc.frame_slice(model_in.shape[1])]
        return comm.gather(apply_guidance(local, scale), pc.frame_group, dim=1, sizes=sizes)

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
