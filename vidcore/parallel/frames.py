"""Frame parallelism for video UNets (ModelScope's UNet3D, AnimateDiff's UNetMotion, SVD's UNet): each rank
of a frame group runs
the UNet on a contiguous slice of the frames; only the ops that mix frames communicate.

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

    def temporal_attend(self, q, k, v, num_frames: int, heads: int, backend=None) -> torch.Tensor:
        # q, k, v: (b f_l) n (heads d), f_l = num_frames local frames
        n, inner = q.shape[1], q.shape[2]
        world = comm.group_size(self.group)
        qkv = torch.cat([q, k, v], dim=-1)
        padded = max(n, world)  # fewer pixels than ranks (tiny latents): zero pixels, dropped after
        if padded > n:
            qkv = torch.cat([qkv, qkv.new_zeros(qkv.shape[0], padded - n, qkv.shape[2])], dim=1)
        qkv = comm.frames_to_pixels(qkv, num_frames, self.group, self.sizes)  # (b f) n_l 3c
        q, k, v = qkv.split(inner, dim=-1)
        out = local_temporal_attend(q.contiguous(), k.contiguous(), v.contiguous(), sum(self.sizes), heads, backend)
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


def _shard_folded(x: torch.Tensor, num_frames: int, group) -> torch.Tensor:
    """``(b f) ...`` -> ``(b f_l) ...`` (ControlNet residuals)."""
    video = x.view(x.shape[0] // num_frames, num_frames, *x.shape[1:])
    return shard_frames(video, group, dim=1).reshape(-1, *x.shape[1:])


def unet3d_forward(unet, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, group,
                   timestep_cond=None, down_block_additional_residuals=None, mid_block_additional_residual=None,
                   gather: bool = True, motion_scale=None) -> torch.Tensor:
    """``unet(sample b c f h w, ...)`` computed frame-parallel over ``group`` for ModelScope's UNet3D and
    AnimateDiff's UNetMotion; every rank passes the full inputs and gets the full output
    (``gather=False``: its own frames only). A per-frame context ``(b f) m d`` is sliced too; UNetMotion's
    ``motion_scale`` is passed whole (it takes the rank's frames itself)."""
    from ..models.motion import UNetMotion
    from ..models.unet3d import UNet3D

    if not isinstance(unet, (UNet3D, UNetMotion)):
        raise TypeError(f"unet3d_forward takes a UNet3D or UNetMotion, got {type(unet).__name__}")
    b, f = sample.shape[0], sample.shape[2]
    local = shard_frames(sample, group)
    if f > 1 and encoder_hidden_states.shape[0] == b * f:
        encoder_hidden_states = _shard_folded(encoder_hidden_states, f, group)
    if down_block_additional_residuals is not None:
        down_block_additional_residuals = tuple(_shard_folded(r, f, group) for r in down_block_additional_residuals)
    if mid_block_additional_residual is not None:
        mid_block_additional_residual = _shard_folded(mid_block_additional_residual, f, group)
    extra = {} if motion_scale is None else {"motion_scale": motion_scale}
    with frame_parallel(group, f):
        out = unet(local, timestep, encoder_hidden_states, timestep_cond, down_block_additional_residuals,
                   mid_block_additional_residual, **extra)
    return comm.gather(out, group, dim=2, sizes=frame_sizes(f, group)) if gather else out


def i2vgen_unet_forward(unet, sample: torch.Tensor, timestep, fps, image_latents: torch.Tensor,
                        image_embeddings: torch.Tensor, encoder_hidden_states: torch.Tensor, group,
                        gather: bool = True) -> torch.Tensor:
    """I2VGen-XL's ``unet(sample b c f h w, t, fps, image_latents b 4 f h w, image_embeddings b d, text b m d)``
    computed frame-parallel over ``group``. The image conditioning (its own small attention over frames
    at 4 channels) is computed whole on every rank; the backbone runs on this rank's frames."""
    from ..models.i2vgen_unet import I2VGenXLUNet

    if not isinstance(unet, I2VGenXLUNet):
        raise TypeError(f"i2vgen_unet_forward needs I2VGen-XL's UNet, got {type(unet).__name__}")
    f = sample.shape[2]
    x, temb, context = unet.prepare(sample, timestep, fps, image_latents, image_embeddings, encoder_hidden_states)
    with frame_parallel(group, f):
        out = unet.backbone(shard_frames(x, group), temb, context)
    return comm.gather(out, group, dim=2, sizes=frame_sizes(f, group)) if gather else out


def svd_unet_forward(unet, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                     added_time_ids: torch.Tensor, group, gather: bool = True) -> torch.Tensor:
    """SVD's ``unet(sample b f c h w, t, context b m d, added_time_ids b k)`` computed frame-parallel over
    ``group``; every rank passes the full inputs and gets the full output (``gather=False``: its frames)."""
    from ..models.svd_unet import SVDUNet

    if not isinstance(unet, SVDUNet):
        raise TypeError(f"svd_unet_forward needs SVD's UNet, got {type(unet).__name__}")
    f = sample.shape[1]
    local = shard_frames(sample, group, dim=1)
    with frame_parallel(group, f):
        out = unet(local, timestep, encoder_hidden_states, added_time_ids)
    return comm.gather(out, group, dim=1, sizes=frame_sizes(f, group)) if gather else out
