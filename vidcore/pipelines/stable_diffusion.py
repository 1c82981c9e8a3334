"""diffusers' ``StableDiffusionPipeline`` (text -> image) on vidcore's UNet2D: the base of Text2Video-Zero's image
recipes (one prompt per frame, shared ``latents``, ``unet.set_attn_processor(CrossFrameAttnProcessor(2))``)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..sampling.guidance import apply_guidance, guidance_batch
from .animatediff_sdxl import rescale_guidance
from .checks import check_call
from .sd_image import CALLBACK_TENSOR_INPUTS, SDImagePipeline


class StableDiffusionPipeline(SDImagePipeline):
    """Text -> images with a Stable Diffusion 1.x model; same images as diffusers' pipeline for the same seed."""

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 negative_prompt: str | list[str] | None = None, num_images_per_prompt: int = 1, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True, guidance_rescale: float = 0.0,
                 clip_skip: int | None = None, callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",)):
        """Arguments as diffusers' ``StableDiffusionPipeline.__call__`` (guidance when ``guidance_scale > 1``;
        ``latents``: the initial noise ``(n, 4, h, w)``, n = prompts x ``num_images_per_prompt``). Returns
        ``.images``. ``callback_on_step_end`` sees diffusers' tensors: ``prompt_embeds`` is the guidance batch
        (negatives first) that the UNet reads, and may be replaced."""
        check_call(self, locals())
        height, width = self.default_size(height, width, 64)
        self.check_image_inputs(prompt, height, width, prompt_embeds, negative_prompt, negative_prompt_embeds,
                                output_type, num_images_per_prompt, callback_on_step_end_tensor_inputs,
                                CALLBACK_TENSOR_INPUTS)
        device = self.device
        guidance = guidance_scale > 1.0
        cond, uncond = self.encode_prompt(prompt, device, num_images_per_prompt, guidance, negative_prompt,
                                          prompt_embeds, negative_prompt_embeds, clip_skip)
        embeds = torch.cat([uncond, cond]) if guidance else cond

        timesteps = self.schedule(num_inference_steps)
        s = self.vae_scale_factor
        shape = (cond.shape[0], self.unet.config.in_channels, height // s, width // s)
        x = self.prepare_latents(shape, cond.dtype, device, generator, latents)
        step_end = self.step_end(callback_on_step_end, callback_on_step_end_tensor_inputs,
                                 {"prompt_embeds": embeds, "negative_prompt_embeds": uncond})
        unet = self._run_on_device("unet")

        def predict(latents, t, i):
            def model(x, embeds):
                return unet(self.scheduler.scale_model_input(x, t), t, embeds)

            if not guidance:
                return model(latents, step_end.tensors["prompt_embeds"])
            noise = guidance_batch(model, latents, 2, self.guidance_batches(), embeds=step_end.tensors["prompt_embeds"])
            guided = apply_guidance(noise, guidance_scale)
            return rescale_guidance(guided, noise.chunk(2)[1], guidance_rescale) if guidance_rescale > 0 else guided

        x = self.sample(x, timesteps, predict, self.step_fn(eta, generator), step_end)
        return self.output(x, output_type, return_dict)


__all__ = ["StableDiffusionPipeline"]
