"""Per-frame classifier-free guidance scales for image-to-video models (SVD).

SVD guides each frame with its own scale: diffusers ramps it linearly from ``min_guidance_scale`` on the first
frame (the one that copies the input image, where strong guidance only over-saturates) to ``max_guidance_scale``
on the last. ComfyUI's ``VideoTriangleCFGGuidance`` instead peaks in the middle and falls back at the end, which
keeps the last frames from burning in long clips. A list gives every frame its own scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

GUIDANCE_SCHEDULES = ("linear", "triangle", "constant")


def frame_guidance_scales(schedule: str | Sequence[float], min_scale: float, max_scale: float,
                          num_frames: int) -> torch.Tensor:
    """``f`` float32 scales: "linear" ``min -> max`` over the frames (diffusers), "triangle" ``min`` at both ends
    and ``max`` in the middle, "constant" ``max`` everywhere, or the list itself (one value per frame)."""
    if isinstance(schedule, str):
        if schedule == "linear":
            return torch.linspace(min_scale, max_scale, num_frames)
        if schedule == "triangle":
            peak = 1 - (2 * torch.linspace(0, 1, num_frames) - 1).abs()  # 0 at both ends, 1 in the middle
            return min_scale + peak * (max_scale - min_scale)
        if schedule == "constant":
            return torch.full((num_frames,), float(max_scale))
        raise ValueError(f"guidance_schedule must be one of {GUIDANCE_SCHEDULES} or a list of per-frame scales, got "
                         f"{schedule!r}")
    values = [float(v) for v in schedule]
    if len(values) != num_frames:
        raise ValueError(f"guidance_schedule has {len(values)} scales for num_frames={num_frames}; give one per frame")
    return torch.tensor(values, dtype=torch.float32)


def guided(schedule: str | Sequence[float], max_scale: float) -> bool:
    """Whether classifier-free guidance runs: some frame's scale exceeds 1 (diffusers: ``max_guidance_scale > 1``)."""
    if isinstance(schedule, str):
        return max_scale > 1
    return any(float(v) > 1 for v in schedule)


__all__ = ["GUIDANCE_SCHEDULES", "frame_guidance_scales", "guided"]
