"""Global-translation motion for Text2Video-Zero (Khachatryan et al., arXiv 2303.13439, Sect. 3.3.1).

Frame ``k`` of a video is made from the first frame's latent by shifting it ``k * (strength_x,
strength_y)`` pixels. As in the reference implementation (and diffusers), the shift is expressed on a
fixed 512 x 512 pixel grid whatever the video size: the sampling positions are built on that grid,
normalised to [-1, 1], bilinearly resized to the latent size, and the latent is read at them with
nearest-neighbour sampling and reflection at the borders. A strength of 12 therefore moves a 64 x 64
SD1.5 latent by 1.5 cells per frame.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

FLOW_GRID = 512  # pixels per side of the grid the translation is defined on


def translation_sampling_grid(frame_ids: Sequence[int], strength_x: float, strength_y: float, height: int,
                              width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Sampling positions ``n h w 2`` (x, y in [-1, 1], ``grid_sample`` order) for frames ``frame_ids``
    shifted by ``frame_id * strength`` pixels of the 512 x 512 reference grid."""
    n = len(frame_ids)
    ys, xs = torch.meshgrid(torch.arange(FLOW_GRID, device=device), torch.arange(FLOW_GRID, device=device),
                            indexing="ij")
    base = torch.stack([xs, ys]).to(dtype)  # 2 G G, pixel (x, y) of every grid point
    # shifts computed in Python floats, then rounded to ``dtype`` (as diffusers fills its flow tensor)
    shift = torch.tensor([[strength_x * k, strength_y * k] for k in frame_ids], dtype=dtype, device=device)
    shift = shift.reshape(n, 2, 1, 1)
    pos = base[None] + shift  # n 2 G G
    pos = torch.stack([pos[:, 0] / FLOW_GRID, pos[:, 1] / FLOW_GRID], dim=1) * 2.0 - 1.0
    pos = F.interpolate(pos, size=(height, width), mode="bilinear")
    return pos.permute(0, 2, 3, 1)  # n h w 2


def warp_latents(latents: torch.Tensor, frame_ids: Sequence[int], strength_x: float = 12,
                 strength_y: float = 12) -> torch.Tensor:
    """Translate latents ``n c h w`` (one row per entry of ``frame_ids``) by the Text2Video-Zero motion field:
    row ``i`` moves ``frame_ids[i] * (strength_x, strength_y)`` reference pixels. Returns a new tensor."""
    if latents.ndim != 4:
        raise ValueError(f"latents must be (frames, channels, height, width), got shape {tuple(latents.shape)}")
    if len(frame_ids) != latents.shape[0]:
        raise ValueError(f"got {len(frame_ids)} frame ids for {latents.shape[0]} latents")
    grid = translation_sampling_grid(frame_ids, strength_x, strength_y, latents.shape[-2], latents.shape[-1],
                                     latents.device, latents.dtype)
    return F.grid_sample(latents, grid, mode="nearest", padding_mode="reflection", align_corners=False)
