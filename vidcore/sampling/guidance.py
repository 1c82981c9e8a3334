"""Classifier-free guidance on a prediction whose batch holds the unconditional half first."""

from __future__ import annotations

from typing import Callable

import torch


def apply_guidance(noise: torch.Tensor, guidance_scale) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)`` for a ``[uncond; cond]`` batch (``guidance_scale`` a number or a
    tensor broadcasting over the halves, e.g. SVD's per-frame scales)."""
    uncond, cond = noise.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def guided(model: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance around ``model`` (latents -> prediction, its conditions batched negatives
    first): with ``guidance_scale > 1`` one call on ``[latents; latents]`` and the halves combined, else one call
    on ``latents`` (the conditional half only)."""
    if guidance_scale > 1.0:
        return apply_guidance(model(torch.cat([latents] * 2)), guidance_scale)
    return model(latents)


__all__ = ["apply_guidance", "guided"]
