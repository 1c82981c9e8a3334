"""Exact multi-process inference on torch.distributed (NCCL on GPU, gloo on CPU), under torchrun.

``pipe.enable_parallel(cfg=True, frames=True)`` splits classifier-free guidance's two halves and/or
the frames of the video over the processes; outputs equal the single-process run (float32
tolerance). See ``group`` (process groups), ``comm`` (all-to-all, halo exchange, all-reduced
GroupNorm statistics), ``frames`` (the frame-mixing ops' handler, frame slices) and ``pipeline``
(``ParallelRunner.wrap`` around any model call, the split decode).
"""

from .comm import frames_to_pixels, gather, group_norm, halo_exchange, pixels_to_frames
from .frames import FrameShardHandler, frame_parallel, shard_frames
from .group import ParallelConfig, init_distributed
from .pipeline import ParallelPipelineMixin, ParallelRunner

__all__ = ["FrameShardHandler", "ParallelConfig", "ParallelPipelineMixin", "ParallelRunner", "frame_parallel",
           "frames_to_pixels", "gather",
           "group_norm", "halo_exchange", "init_distributed", "pixels_to_frames", "shard_frames"]
