"""Classifier-free guidance on a prediction whose batch holds the unconditional half first."""

from __future__ import annotations

import torch


def apply_guidance(noise: torch.Tensor, guidance_scale) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)`` for a ``[uncond; cond]`` batch (``guidance_scale`` a number or a
    tensor broadcasting over the halves, e.g. SVD's per-frame scales)."""
    uncond, cond = noise.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


__all__ = ["apply_guidance"]
