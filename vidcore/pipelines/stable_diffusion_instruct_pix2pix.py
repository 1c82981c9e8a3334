"""diffusers' ``StableDiffusionInstructPix2PixPipeline`` (image + instruction -> edited image) on vidcore's 8-channel
UNet2D. Text2Video-Zero's video editing recipe runs it on the frames as a batch with the instruction repeated and
``CrossFrameAttnProcessor(batch_size=3)`` (three guidance branches); :class:`~vidcore.pipelines.
video_instruct_pix2pix.VideoInstructPix2PixPipeline` does the same edit in one call."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import PIL.Image
import torch

from ..sampling.guidance import guidance_batch
from .checks import check_call
from .sd_image import CALLBACK_TENSOR_INPUTS, SDImagePipeline
from .video_instruct_pix2pix import image_latents
from .video_processing import preprocess_video


class StableDiffusionInstructPix2PixPipeline(SDImagePipeline):
    """Edit images following an instruction; same images as diffusers' pipeline for the same seed."""

    def encode_images(self, image, total: int, dtype, device) -> torch.Tensor:
        """Image(s) -> ``total`` unscaled VAE latents (the posterior's mode): one image or one per prompt, tiled
        over ``num_images_per_prompt`` as diffusers tiles them (``[img0, img1, img0, img1]`` for 2 images x 2)."""
        if image is None:
            raise ValueError("image is required: a PIL image, a list of them, an array or a tensor")
        if isinstance(image, PIL.Image.Image) or (isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 3):
            image = [image]
        images = preprocess_video(image, self.vae_scale_factor)[0].transpose(0, 1)  # n c H W in [-1, 1]
        latents = image_latents(self._run_on_device("vae") if images.shape[1] != 4 else self.vae, images, dtype,
                                device)
        if total % latents.shape[0]:
            raise ValueError(f"got {latents.shape[0]} images for {total} images to make (prompts x "
                             "num_images_per_prompt): give one image, or one per prompt")
        return latents.repeat(total // latents.shape[0], 1, 1, 1)

    callback_tensor_inputs = (*CALLBACK_TENSOR_INPUTS, "image_latents")

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, image=None, num_inference_steps: int = 100,
                 guidance_scale: float = 7.5, image_guidance_scale: float = 1.5,
                 negative_prompt: str | list[str] | None = None, num_images_per_prompt: int = 1, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True, callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",)):
        """Arguments as diffusers' ``StableDiffusionInstructPix2PixPipeline.__call__``: ``image`` (one, or one per
        prompt; its size, cut to a multiple of the VAE factor, is the output's), guidance when ``guidance_scale > 1``
        and ``image_guidance_scale >= 1`` (branches: instruction + image, image only, neither).
        ``callback_on_step_end`` may read and replace ``image_latents`` (the three branches' image latents)."""
        check_call(self, locals())
        allowed = (*CALLBACK_TENSOR_INPUTS, "image_latents")
        self.check_image_inputs(prompt, 8, 8, prompt_embeds, negative_prompt, negative_prompt_embeds, output_type,
                                num_images_per_prompt, callback_on_step_end_tensor_inputs, allowed)
        device = self.device
        guidance = guidance_scale > 1.0 and image_guidance_scale >= 1.0
        cond, uncond = self.encode_prompt(prompt, device, num_images_per_prompt, guidance, negative_prompt,
                                          prompt_embeds, negative_prompt_embeds)
        embeds = torch.cat([cond, uncond, uncond]) if guidance else cond
        images = self.encode_images(image, cond.shape[0], cond.dtype, device)
        if guidance:
            images = torch.cat([images, images, torch.zeros_like(images)])

        timesteps = self.schedule(num_inference_steps)
        shape = (cond.shape[0], self.vae.config.latent_channels, *images.shape[-2:])
        if shape[1] + images.shape[1] != self.unet.config.in_channels:
            raise ValueError(f"InstructPix2Pix needs a UNet taking {shape[1] + images.shape[1]} channels (latents + "
                             f"image latents); this one takes {self.unet.config.in_channels}")
        x = self.prepare_latents(shape, cond.dtype, device, generator, latents)
        step_end = self.step_end(callback_on_step_end, callback_on_step_end_tensor_inputs,
                                 {"prompt_embeds": embeds, "negative_prompt_embeds": uncond, "image_latents": images})
        unet = self._run_on_device("unet")

        def predict(latents, t, i):
            def model(x, embeds, images):
                return unet(torch.cat([self.scheduler.scale_model_input(x, t), images], dim=1), t, embeds)

            state = step_end.tensors
            if not guidance:
                return model(latents, state["prompt_embeds"], state["image_latents"])
            noise = guidance_batch(model, latents, 3, self.guidance_batches(), embeds=state["prompt_embeds"],
                                   images=state["image_latents"])
            text, image_only, neither = noise.chunk(3)
            return neither + guidance_scale * (text - image_only) + image_guidance_scale * (image_only - neither)

        x = self.sample(x, timesteps, predict, self.step_fn(eta, generator), step_end)
        return self.output(x, output_type, return_dict)


__all__ = ["StableDiffusionInstructPix2PixPipeline"]
