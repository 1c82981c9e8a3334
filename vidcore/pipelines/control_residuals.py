"""One ControlNet step for the Stable Diffusion 1.x pipelines with a ControlNet (controlled video, the
``StableDiffusionControlNetPipeline``): its residuals for the UNet, and the steps it runs at."""

from __future__ import annotations

import torch

from ..errors import ModelNotFoundError


def no_controlnet_error(where: str, example: str) -> ModelNotFoundError:
    """What a ControlNet pipeline raises when its folder has no controlnet/ (image models ship none)."""
    return ModelNotFoundError(f"{where} has no controlnet/ folder (an SD model has none): pass controlnet= (CLI: "
                              f"--controlnet), e.g. {example} or vidcore.ControlNetModel.from_pretrained(...)")


def in_control_window(step: int, steps: int, start: float, end: float) -> bool:
    """Whether the ControlNet runs at ``step`` of ``steps`` (diffusers' ``control_guidance_start`` / ``_end``);
    outside the window its residuals would be zeros, so it is skipped."""
    return not (step / steps < start or (step + 1) / steps > end)


def controlnet_residuals(controlnet, scheduler, latents: torch.Tensor, model_in: torch.Tensor, t,
                         embeds: torch.Tensor, control: torch.Tensor, scale: float, guess_mode: bool,
                         guidance: bool) -> dict:
    """The UNet's ``down_block_additional_residuals`` / ``mid_block_additional_residual`` from one ControlNet run.

    ``model_in``: the UNet's (scaled, guidance-batched ``[uncond; cond]``) input; ``embeds``: its text embeddings.
    In guess mode with guidance the ControlNet sees the conditional half only (``latents`` scaled, the second half
    of ``embeds``, ``control`` for that half) and the unconditional half gets zero residuals, as in diffusers."""
    only_cond = guess_mode and guidance
    c_in = scheduler.scale_model_input(latents, t) if only_cond else model_in
    down, mid = controlnet(c_in, t, embeds.chunk(2)[1] if only_cond else embeds, control,
                           conditioning_scale=scale, guess_mode=guess_mode)
    if only_cond:
        down = [torch.cat([torch.zeros_like(d), d]) for d in down]
        mid = torch.cat([torch.zeros_like(mid), mid])
    return dict(down_block_additional_residuals=tuple(down), mid_block_additional_residual=mid)


__all__ = ["controlnet_residuals", "in_control_window"]
