"""Classifier-free guidance on a prediction whose batch holds the unconditional half first."""

from __future__ import annotations

from typing import Callable

import torch


def apply_guidance(noise: torch.Tensor, guidance_scale) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)`` for a ``[uncond; cond]`` batch (``guidance_scale`` a number or a
    tensor broadcasting over the halves, e.g. SVD's per-frame scales)."""
    uncond, cond = noise.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def guided(model: Callable[..., torch.Tensor], latents: torch.Tensor, guidance_scale: float,
           **conditions) -> torch.Tensor:
    """Classifier-free guidance around ``model`` (``model(latents, **conditions) -> prediction``, its conditions
    batched negatives first): with ``guidance_scale > 1`` one call on ``[latents; latents]`` and the halves
    combined, else one call on ``latents`` (the conditional half only). Conditions passed here rather than
    closed over are visible to a wrapper such as ``ParallelRunner.wrap``, which splits them."""
    if guidance_scale > 1.0:
        return apply_guidance(model(torch.cat([latents] * 2), **conditions), guidance_scale)
    return model(latents, **conditions)


__all__ = ["apply_guidance", "guided"]
