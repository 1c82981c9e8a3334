"""Exact multi-process inference on torch.distributed (NCCL on GPU, gloo on CPU), under torchrun.

``pipe.enable_parallel(cfg=True, frames=True)`` splits classifier-free guidance's two halves and/or
the frames of the video over the processes; outputs equal the single-process run (float32
tolerance). See ``group`` (process groups), ``comm`` (all-to-all, halo exchange, all-reduced
GroupNorm statistics), ``frames`` (frame-parallel UNet3D, I2VGen-XL and SVD UNets) and ``pipeline`` (denoise/decode).
"""

from .comm import frames_to_pixels, gather, group_norm, halo_exchange, pixels_to_frames
from .frames import FrameShardHandler, frame_parallel, i2vgen_unet_forward, shard_frames, svd_unet_forward, unet3d_forward
from .group import ParallelConfig, init_distributed
from .pipeline import ParallelPipelineMixin, ParallelRunner

__all__ = ["FrameShardHandler", "ParallelConfig", "ParallelPipelineMixin", "ParallelRunner", "frame_parallel",
           "frames_to_pixels", "gather",
           "group_norm", "halo_exchange", "i2vgen_unet_forward", "init_distributed", "pixels_to_frames", "shard_frames", "svd_unet_forward",
           "unet3d_forward"]
