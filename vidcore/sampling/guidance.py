"""Classifier-free guidance on a prediction whose batch holds the unconditional half first, and how that guidance
batch meets the model (:class:`GuidanceBatching`: one joint call, as diffusers, or one call per branch, which
halves the activation peak at the same result)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

BATCHING_MODES = ("joint", "split", "auto")


def apply_guidance(noise: torch.Tensor, guidance_scale) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)`` for a ``[uncond; cond]`` batch (``guidance_scale`` a number or a
    tensor broadcasting over the halves, e.g. SVD's per-frame scales)."""
    uncond, cond = noise.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def batch_part(value, index: int, parts: int):
    """Part ``index`` of ``parts`` equal parts along dim 0 of a batched model input: a tensor, or a list / tuple /
    dict of them (IP-Adapter embeddings per adapter, SDXL's ``added_cond_kwargs``) part by part; None stays None.
    The one splitting rule for guidance batching and CFG-parallel (``ParallelRunner.wrap``)."""
    if value is None:
        return None
    if torch.is_tensor(value):
        if value.shape[0] % parts:
            raise ValueError(f"a guidance-batched model input has batch {value.shape[0]}, not a multiple of the "
                             f"{parts} guidance branches")
        return value.chunk(parts)[index]
    if isinstance(value, dict):
        return {k: batch_part(v, index, parts) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(batch_part(v, index, parts) for v in value)
    raise TypeError(f"a guidance-batched model input must be a tensor or a list / tuple / dict of them, "
                    f"got {type(value).__name__}")


@dataclass(frozen=True)
class GuidanceBatching:
    """How a pipeline call runs its guidance batch (``pipe.set_guidance_batching``): ``"joint"`` one model call
    on all branches, ``"split"`` one call per branch in turn, ``"auto"`` split when ``activation_bytes(latents)``
    (one branch's estimated activation peak, :func:`vidcore.sampling.memory.unet_activation_bytes`) times the
    branches exceeds ``budget`` (joint when the budget is unknown)."""

    mode: str = "joint"
    budget: int | None = None
    activation_bytes: Callable[[torch.Tensor], int] | None = None

    def splits(self, latents: torch.Tensor, branches: int) -> bool:
        if self.mode == "auto":
            return self.budget is not None and branches * self.activation_bytes(latents) > self.budget
        return self.mode == "split"


JOINT = GuidanceBatching()


def guidance_batch(model: Callable[..., torch.Tensor], latents: torch.Tensor, branches: int = 2,
                   batching: GuidanceBatching = JOINT, **conditions) -> torch.Tensor:
    """``model`` on ``[latents] * branches`` with ``conditions`` batched branch by branch (dim 0): one call, or,
    when ``batching`` splits, one call per branch with its part of every condition, concatenated (the same
    prediction within float rounding, a ``branches``-th of the activations)."""
    if not batching.splits(latents, branches):
        return model(torch.cat([latents] * branches), **conditions)
    return torch.cat([model(latents, **batch_part(conditions, i, branches)) for i in range(branches)])


def guided(model: Callable[..., torch.Tensor], latents: torch.Tensor, guidance_scale: float,
           batching: GuidanceBatching = JOINT, **conditions) -> torch.Tensor:
    """Classifier-free guidance around ``model`` (``model(latents, **conditions) -> prediction``, its conditions
    batched negatives first): with ``guidance_scale > 1`` the model on ``[latents; latents]`` (see
    :func:`guidance_batch`) and the halves combined, else one call on ``latents`` (the conditional half only).
    Conditions passed here rather than closed over are visible to the wrappers that split them (``batching``,
    ``ParallelRunner.wrap``)."""
    if guidance_scale > 1.0:
        return apply_guidance(guidance_batch(model, latents, 2, batching, **conditions), guidance_scale)
    return model(latents, **conditions)


__all__ = ["BATCHING_MODES", "GuidanceBatching", "JOINT", "apply_guidance", "batch_part", "guidance_batch", "guided"]
