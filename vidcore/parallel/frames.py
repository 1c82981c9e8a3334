"""Frame parallelism for any video model built from ``nn/`` (ModelScope's UNet3D, AnimateDiff's UNetMotion,
I2VGen-XL's and SVD's UNets): each rank of a frame group runs the model on a contiguous slice of the frames
(:func:`shard_frames`, inside :func:`frame_parallel`); only the ops that mix frames communicate. No model's
forward is repeated here: ``ParallelRunner.wrap`` (``pipeline.py``) slices the inputs and gathers the output.

Per-frame work (res blocks, spatial transformers, up/down sampling, conv in/out and their
per-frame GroupNorms) needs nothing. The frame-mixing ops in ``nn/`` consult ``nn.frame_hooks``, and
:class:`FrameShardHandler` answers them:

* temporal attention: q, k, v (``(b f_l) n (heads d)``) switch to pixel-sharded ``(b f) n_l c`` in
  one all_to_all (stacked), attend over all frames locally, and switch back in a second;
* temporal convolutions (3x1x1): one-frame halo exchange with the neighbouring ranks;
* GroupNorms over frames (temporal conv stacks, temporal transformers, ``transformer_in``): statistics
  merged across ranks.
* frame-indexed embeddings (SVD's frame-index embedding, AnimateDiff's positions) start at the rank's
  first frame.

Frames are split as ``torch.tensor_split`` does (the first ``f % W`` ranks hold one more), so any
frame count of at least the group size works (:func:`~vidcore.parallel.group.check_frames`).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..nn.attention import local_temporal_attend
from ..nn.frame_hooks import use_frame_handler
from . import comm
from .group import check_frames


class FrameShardHandler:
    """Answers the frame-mixing ops of ``nn/`` for a rank that holds a slice of every video's
    ``num_frames`` frames (``comm.split_sizes`` of them)."""

    def __init__(self, group, num_frames: int):
        self.group = group
        self.sizes = comm.split_sizes(num_frames, comm.group_size(group))
        check_frames(num_frames, len(self.sizes))

    def temporal_attend(self, q, k, v, num_frames: int, heads: int, backend=None, slice_size=None) -> torch.Tensor:
        # q, k, v: (b f_l) n (heads d), f_l = num_frames local frames
        n, inner = q.shape[1], q.shape[2]
        world = comm.group_size(self.group)
        qkv = torch.cat([q, k, v], dim=-1)
        padded = max(n, world)  # fewer pixels than ranks (tiny latents): zero pixels, dropped after
        if padded > n:
            qkv = torch.cat([qkv, qkv.new_zeros(qkv.shape[0], padded - n, qkv.shape[2])], dim=1)
        qkv = comm.frames_to_pixels(qkv, num_frames, self.group, self.sizes)  # (b f) n_l 3c
        q, k, v = qkv.split(inner, dim=-1)
        out = local_temporal_attend(q.contiguous(), k.contiguous(), v.contiguous(), sum(self.sizes), heads, backend,
                                    slice_size)
        return comm.pixels_to_frames(out, num_frames, padded, self.group, self.sizes)[:, :n]  # (b f_l) n c

    def frame_conv(self, conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
        return comm.frame_conv(conv, x, self.group)

    def group_norm(self, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        return comm.group_norm(norm, x, self.group)

    def frame_start(self, num_frames: int) -> int:
        rank = comm.group_rank(self.group)
        if num_frames != self.sizes[rank]:
            raise ValueError(f"rank {rank} holds {self.sizes[rank]} frames, an op was given {num_frames}")
        return sum(self.sizes[:rank])


@contextmanager
def frame_parallel(group, num_frames: int):
    """Inside the block, the frame-mixing ops of every model treat their input as this rank's slice
    (:func:`shard_frames`) of videos of ``num_frames`` frames split over ``group`` (None or one rank:
    ordinary ops)."""
    with use_frame_handler(FrameShardHandler(group, num_frames) if comm.group_size(group) > 1 else None):
        yield


def frame_sizes(num_frames: int, group) -> list[int]:
    """Frames per rank of ``group`` (the first ``num_frames % W`` ranks hold one more)."""
    world = comm.group_size(group)
    check_frames(num_frames, world)
    return comm.split_sizes(num_frames, world)


def shard_frames(x: torch.Tensor, group, dim: int = 2) -> torch.Tensor:
    """This rank's contiguous slice of the frames along ``dim``."""
    sizes = frame_sizes(x.shape[dim], group)
    rank = comm.group_rank(group)
    return x.narrow(dim, sum(sizes[:rank]), sizes[rank])
