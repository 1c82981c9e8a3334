"""What diffusers' Stable Diffusion 1.x image pipelines share, on vidcore's modules (UNet2D, KL VAE, CLIP text).

Text2Video-Zero's recipes make videos with image pipelines: one prompt per frame, shared ``latents``, and
``CrossFrameAttnProcessor`` set on the UNet (and ControlNet). These pipelines take diffusers' arguments and return
``.images`` (one per prompt and ``num_images_per_prompt``), equal to diffusers' for the same seed. They sample
through the one loop (:func:`vidcore.sampling.loop.denoise`) with a ``predict`` of their own.

No safety checker: ``safety_checker=None`` / ``requires_safety_checker=`` / ``feature_extractor=`` are accepted and
ignored (outputs equal diffusers' with ``safety_checker=None``; ``nsfw_content_detected`` is None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..sampling.loop import StepEnd, check_callback_inputs, scheduler_step
from .base import check_negative_inputs, upcast_vae
from .sd_video import SDVideoPipeline
from .text2video_zero import SD_LOADERS
from .video_processing import postprocess_video

CALLBACK_TENSOR_INPUTS = ("latents", "prompt_embeds", "negative_prompt_embeds")


@dataclass
class ImagePipelineOutput:
    """``images``: a list of PIL images, np ``n h w 3`` / pt ``n 3 h w`` in [0, 1], or latents ``n c h w``."""

    images: Any
    nsfw_content_detected: list[bool] | None = None  # no safety checker: always None


def postprocess_images(images: torch.Tensor, output_type: str):
    """``n 3 H W`` in [-1, 1] -> list of PIL, np ``n H W 3`` or pt ``n 3 H W`` in [0, 1] (as diffusers)."""
    out = postprocess_video(images.transpose(0, 1)[None], output_type)  # one "video" of n frames
    return out[0]


class SDImagePipeline(SDVideoPipeline):
    """Tokenizer + CLIP text encoder + UNet2D + KL VAE + scheduler (the stored one, as
    :func:`~vidcore.pipelines.text2video_zero.sd_scheduler` reads it). Subclasses give ``__call__``."""

    component_names = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")
    loaders = SD_LOADERS
    accepts = ("safety_checker", "feature_extractor", "image_encoder")  # taken, never read (see module docstring)
    callback_tensor_inputs = CALLBACK_TENSOR_INPUTS

    def __init__(self, vae=None, text_encoder=None, tokenizer=None, unet=None, scheduler=None, safety_checker=None,
                 feature_extractor=None, image_encoder=None, requires_safety_checker: bool = False, **modules):
        if safety_checker is not None:
            raise ValueError("vidcore has no safety checker: pass safety_checker=None (or leave it out)")
        super().__init__(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                         **modules)

    @classmethod
    def from_pretrained(cls, path_or_repo, torch_dtype=None, variant=None, revision=None, token=None,
                        requires_safety_checker: bool | None = None, **components):
        """A Stable Diffusion 1.x folder or hub repo in diffusers' layout (see
        :meth:`~vidcore.pipelines.base.VideoPipeline.from_pretrained`); ``requires_safety_checker`` is ignored."""
        return super().from_pretrained(path_or_repo, torch_dtype, variant, revision, token, **components)

    # -- pieces ---------------------------------------------------------------------------------
    def check_image_inputs(self, prompt, height, width, prompt_embeds, negative_prompt, negative_prompt_embeds,
                           output_type, num_images_per_prompt, callback_on_step_end_tensor_inputs, allowed):
        self.check_inputs(prompt, height, width, 1, prompt_embeds, negative_prompt_embeds, output_type,
                          num_images_per_prompt, None)
        check_negative_inputs(negative_prompt, negative_prompt_embeds)
        check_callback_inputs(callback_on_step_end_tensor_inputs, allowed)

    def batch_size(self, prompt, prompt_embeds) -> int:
        """Images per ``num_images_per_prompt``: one per prompt (a string is one prompt)."""
        if isinstance(prompt, str):
            return 1
        return len(prompt) if prompt is not None else prompt_embeds.shape[0]

    def step_fn(self, eta, generator):
        return scheduler_step(self.scheduler, eta=eta, generator=generator)

    def step_end(self, callback_on_step_end, tensor_inputs, tensors: dict) -> StepEnd:
        return StepEnd(self, callback_on_step_end, tensor_inputs, tensors)

    def decode_images(self, latents: torch.Tensor, output_type: str):
        """``n c h w`` latents -> the output's images (the latents themselves for ``output_type="latent"``)."""
        if output_type == "latent":
            return latents
        vae = self._run_on_device("vae")
        with upcast_vae(vae):
            images = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype))
        return postprocess_images(images, output_type)

    def output(self, latents, output_type: str, return_dict: bool):
        images = self.decode_images(latents, output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images, None)


__all__ = ["CALLBACK_TENSOR_INPUTS", "ImagePipelineOutput", "SDImagePipeline", "postprocess_images"]
