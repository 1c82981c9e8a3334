"""Communication primitives for frame-parallel inference, each exact against its single-process op.

Frames are split into contiguous slices over the ranks of a frame group, and pixels (where they are
sharded) likewise, both as ``torch.tensor_split`` does (:func:`split_sizes`: the first ``n % W`` ranks
get one more), so any frame or pixel count of at least ``W`` works. Functions that switch or gather
frames take ``frame_sizes`` (every rank's frame count, in rank order; None: all equal).

* :func:`frames_to_pixels` / :func:`pixels_to_frames` – the Ulysses-style layout switch for temporal
  attention, one ``all_to_all`` each way: ``(b f_l) n c`` (frames sharded) <-> ``(b f) n_l c``
  (pixels sharded).
* :func:`halo_exchange` – the edge frames a kernel-``2p+1`` convolution over frames needs from the
  neighbouring ranks (zeros at the video's ends, as the convolution's zero padding).
* :func:`group_norm` – GroupNorm of ``b c f_l h w`` with statistics over all ranks' frames (one
  ``all_gather`` of per-rank count, mean and centred sum of squares, merged with Chan's formula).
* :func:`gather` – all_gather + cat along a dim (slices of equal or given sizes).

``group`` None means a group of one (no communication). Inference only: no autograd.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def group_size(group) -> int:
    return 1 if group is None else dist.get_world_size(group)


def group_rank(group) -> int:
    return 0 if group is None else dist.get_rank(group)


def split_sizes(n: int, world: int) -> list[int]:
    """Items per rank for ``n`` items (frames or pixels) over ``world`` ranks: torch.tensor_split's sizes."""
    base, extra = divmod(n, world)
    return [base + (j < extra) for j in range(world)]


def _frame_layout(frame_sizes, num_frames: int, group) -> tuple[int, int, list[int]]:
    """``(world, rank, every rank's frame count)`` for the layout switches, checked against this rank's count."""
    world, rank = group_size(group), group_rank(group)
    sizes = list(frame_sizes) if frame_sizes is not None else [num_frames] * world
    if len(sizes) != world or sizes[rank] != num_frames:
        raise ValueError(f"frame_sizes {sizes} do not fit {world} ranks with {num_frames} frames on rank {rank}")
    return world, rank, sizes


def frames_to_pixels(x: torch.Tensor, num_frames: int, group, frame_sizes=None) -> torch.Tensor:
    """``(b f_l) n c`` with this rank's ``f_l = num_frames`` frames -> ``(b f) n_l c``: every frame of
    this rank's pixel slice (``f = sum(frame_sizes)`` in rank order). One all_to_all."""
    if group_size(group) == 1:
        return x
    world, rank, fsizes = _frame_layout(frame_sizes, num_frames, group)
    bf, n, c = x.shape
    b = bf // num_frames
    if n < world:
        raise ValueError(f"frames_to_pixels: {n} pixels cannot be split over {world} ranks (pad them first)")
    sizes = split_sizes(n, world)
    send = rearrange(x, "(b f) n c -> n b f c", f=num_frames).contiguous()
    out = x.new_empty(sizes[rank] * b * sum(fsizes) * c)
    recv_splits = [sizes[rank] * b * fj * c for fj in fsizes]  # rank j sends its frames of my pixels
    dist.all_to_all_single(out, send.view(-1), recv_splits, [s * b * num_frames * c for s in sizes], group=group)
    parts = [p.view(sizes[rank], b, fj, c) for p, fj in zip(out.split(recv_splits), fsizes)]
    return rearrange(torch.cat(parts, dim=2), "n b f c -> (b f) n c")


def pixels_to_frames(y: torch.Tensor, num_frames: int, num_pixels: int, group, frame_sizes=None) -> torch.Tensor:
    """Inverse of :func:`frames_to_pixels`: ``(b f) n_l c`` -> ``(b f_l) n c`` with ``f_l = num_frames``
    and ``n = num_pixels``. One all_to_all."""
    if group_size(group) == 1:
        return y
    world, rank, fsizes = _frame_layout(frame_sizes, num_frames, group)
    _, n_local, c = y.shape
    b = y.shape[0] // sum(fsizes)
    sizes = split_sizes(num_pixels, world)
    if sizes[rank] != n_local:
        raise ValueError(f"pixels_to_frames: this rank holds {n_local} pixels, expected {sizes[rank]} of {num_pixels}")
    # to rank j: its frames of my pixels, n_l b f_j c
    by_frames = rearrange(y, "(b f) n c -> n b f c", b=b).split(fsizes, dim=2)
    send = torch.cat([p.reshape(-1) for p in by_frames])
    out = y.new_empty(num_pixels * b * num_frames * c)
    dist.all_to_all_single(out, send, [s * b * num_frames * c for s in sizes], [n_local * b * fj * c for fj in fsizes],
                           group=group)
    return rearrange(out.view(num_pixels, b, num_frames, c), "n b f c -> (b f) n c")


def _global(group, r: int) -> int:
    return dist.get_global_rank(group, r)


def halo_exchange(x: torch.Tensor, width: int, group, dim: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``width`` frames before and after this rank's slice ``x`` (frames along ``dim``): the previous
    rank's last and the next rank's first frames; zeros at the first/last rank (zero padding).
    Point-to-point with the two neighbours only."""
    if x.shape[dim] < width:
        raise ValueError(f"halo exchange needs at least {width} frames per rank, this rank has {x.shape[dim]}")
    world, rank = group_size(group), group_rank(group)
    before = x.new_zeros(*x.shape[:dim], width, *x.shape[dim + 1:])
    after = torch.zeros_like(before)
    if world == 1:
        return before, after
    ops = []
    if rank > 0:
        ops += [dist.P2POp(dist.isend, x.narrow(dim, 0, width).contiguous(), _global(group, rank - 1), group),
                dist.P2POp(dist.irecv, before, _global(group, rank - 1), group)]
    if rank < world - 1:
        ops += [dist.P2POp(dist.isend, x.narrow(dim, x.shape[dim] - width, width).contiguous(),
                           _global(group, rank + 1), group),
                dist.P2POp(dist.irecv, after, _global(group, rank + 1), group)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return before, after


def frame_conv(conv: nn.Conv3d, x: torch.Tensor, group) -> torch.Tensor:
    """A ``(k, 1, 1)`` Conv3d with frame padding ``(k - 1) / 2`` over ``b c f_l h w`` frame slices: the
    halo frames from the neighbours replace the zero padding, so each rank gets its output frames."""
    k, pad = conv.weight.shape[2], conv.padding[0]
    if conv.weight.shape[3:] != (1, 1) or k != 2 * pad + 1 or conv.stride[0] != 1 or conv.dilation[0] != 1:
        raise ValueError(f"frame-parallel conv supports (k, 1, 1) kernels with 'same' frame padding, got kernel "
                         f"{tuple(conv.weight.shape[2:])} padding {conv.padding}")
    before, after = halo_exchange(x, pad, group)
    padded = torch.cat([before, x, after], dim=2)
    b, c, f, h, w = padded.shape
    out = F.conv2d(padded.reshape(b, c, f, h * w), conv.weight.squeeze(-1), conv.bias)
    return out.view(b, -1, f - 2 * pad, h, w)


def group_norm(norm: nn.GroupNorm, x: torch.Tensor, group) -> torch.Tensor:
    """``norm`` on ``b c f_l h w`` with statistics over the frames of every rank in ``group``.

    Each rank computes count, mean and centred sum of squares per (video, group) in float32; one
    all_gather; Chan's parallel merge gives the mean and (biased) variance of the whole video."""
    if group_size(group) == 1:
        return norm(x)
    b, c = x.shape[:2]
    g = norm.num_groups
    xf = x.float().reshape(b, g, -1)
    count = xf.shape[-1]
    mean = xf.mean(-1)  # b g
    m2 = (xf - mean[..., None]).square().sum(-1)
    local = torch.stack([torch.full_like(mean, count), mean, m2])  # 3 b g
    parts = [torch.empty_like(local) for _ in range(group_size(group))]
    dist.all_gather(parts, local, group=group)
    counts, means, m2s = torch.stack(parts).unbind(1)  # each W b g
    total = counts.sum(0)
    gmean = (counts * means).sum(0) / total
    var = (m2s.sum(0) + (counts * (means - gmean).square()).sum(0)) / total
    y = (xf - gmean[..., None]) * torch.rsqrt(var + norm.eps)[..., None]
    y = y.view(x.shape)
    if norm.affine:
        shape = (1, c) + (1,) * (x.ndim - 2)
        y = y * norm.weight.float().view(shape) + norm.bias.float().view(shape)
    return y.to(x.dtype)


def gather(x: torch.Tensor, group, dim: int, sizes=None) -> torch.Tensor:
    """All ranks' slices ``x`` concatenated along ``dim`` in rank order, on every rank. ``sizes``: every
    rank's extent along ``dim`` when they differ (slices are padded to the largest for the all_gather)."""
    world = group_size(group)
    if world == 1:
        return x
    sizes = list(sizes) if sizes is not None else [x.shape[dim]] * world
    if sizes[group_rank(group)] != x.shape[dim]:
        raise ValueError(f"gather: this rank's slice has {x.shape[dim]} along dim {dim}, sizes say {sizes}")
    top = max(sizes)
    if x.shape[dim] < top:
        pad = x.new_zeros(*x.shape[:dim], top - x.shape[dim], *x.shape[dim + 1:])
        x = torch.cat([x, pad], dim=dim)
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes)], dim=dim)
