"""diffusers' ``StableDiffusionControlNetPipeline`` (text + control image -> image) on vidcore's UNet2D and
ControlNet. Text2Video-Zero's pose / edge recipes run it on frames: one prompt and one control image per frame,
shared ``latents``, ``CrossFrameAttnProcessor(batch_size=2)`` on the UNet and the ControlNet. For a video,
:class:`~vidcore.pipelines.controlled_video.ControlledVideoPipeline` does the same in one call (with frame 0 as
every frame's source in guess mode, its documented difference)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import PIL.Image
import torch

from ..loading.loaders import EXAMPLE_CONTROLNET, load_controlnet
from ..models.controlnet import ControlNet
from ..sampling.guidance import apply_guidance, guidance_batch
from .checks import check_call
from .control_residuals import controlnet_residuals, in_control_window, no_controlnet_error
from .controlled_video import control_frames_to_tensor
from .sd_image import CALLBACK_TENSOR_INPUTS, SDImagePipeline


def _one(value, name: str) -> float:
    """A ControlNet setting given as a number or diffusers' one-entry list (one ControlNet here)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"{name} has {len(value)} entries; this pipeline has one ControlNet (give a number)")
        value = value[0]
    return float(value)


class StableDiffusionControlNetPipeline(SDImagePipeline):
    """Text + control image -> images; same images as diffusers' pipeline for the same seed."""

    component_names = ("tokenizer", "text_encoder", "unet", "controlnet", "vae", "scheduler")
    loaders = {**SDImagePipeline.loaders, "controlnet": load_controlnet}
    arguments = {"controlnet": load_controlnet}

    def __init__(self, vae=None, text_encoder=None, tokenizer=None, unet=None, controlnet=None, scheduler=None,
                 safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False):
        if not isinstance(controlnet, ControlNet):
            raise TypeError(f"controlnet must be a vidcore ControlNet (vidcore.ControlNetModel), got "
                            f"{type(controlnet).__name__}")
        controlnet.check_compatible(unet)
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, controlnet=controlnet)

    @classmethod
    def missing_component(cls, name: str, where: str, single_file: bool) -> Exception:
        if name == "controlnet":
            return no_controlnet_error(where, EXAMPLE_CONTROLNET)
        return super().missing_component(name, where, single_file)

    def prepare_image(self, image, height, width, batch: int, num_images_per_prompt: int) -> torch.Tensor:
        """Control image(s) -> ``(batch * num_images_per_prompt) c H W`` in [0, 1]: one image serves every prompt,
        else one per prompt (each repeated ``num_images_per_prompt`` times), as diffusers."""
        if image is None:
            raise ValueError("image is required: a control image (PIL, array or tensor) or one per prompt")
        if isinstance(image, PIL.Image.Image) or (isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 3):
            image = [image]
        x = control_frames_to_tensor(image, height, width, self.vae_scale_factor)
        h, w = x.shape[-2:]
        if h % 8 or w % 8:
            raise ValueError(f"height and width must be multiples of 8, got height={h}, width={w} (from "
                             f"{'the arguments' if height or width else 'the control image'})")
        channels = self.controlnet.config.conditioning_channels
        if x.shape[1] != channels:
            raise ValueError(f"image has {x.shape[1]} channels; the ControlNet takes {channels}")
        if x.shape[0] not in (1, batch):
            raise ValueError(f"image holds {x.shape[0]} control images for {batch} prompts: give one, or one per "
                             "prompt")
        return x.repeat_interleave(batch * num_images_per_prompt if x.shape[0] == 1 else num_images_per_prompt, 0)

    callback_tensor_inputs = (*CALLBACK_TENSOR_INPUTS, "image")

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, image=None, height: int | None = None,
                 width: int | None = None, num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 negative_prompt: str | list[str] | None = None, num_images_per_prompt: int = 1, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True,
                 controlnet_conditioning_scale: float | list[float] = 1.0, guess_mode: bool = False,
                 control_guidance_start: float | list[float] = 0.0, control_guidance_end: float | list[float] = 1.0,
                 clip_skip: int | None = None, callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",)):
        """Arguments as diffusers' ``StableDiffusionControlNetPipeline.__call__``. ``image``: one control image for
        every prompt or one per prompt (PIL images, an ``n H W c`` array or ``n c H W`` tensor in [0, 1]); the size
        defaults to the control image's. ``guess_mode``: the ControlNet sees the conditional half only, its
        residuals growing from 0.1 to 1 with depth. ``callback_on_step_end`` may read and replace ``image`` too."""
        check_call(self, locals())
        scale = _one(controlnet_conditioning_scale, "controlnet_conditioning_scale")
        start, end = _one(control_guidance_start, "control_guidance_start"), _one(control_guidance_end,
                                                                                 "control_guidance_end")
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"need 0 <= control_guidance_start < control_guidance_end <= 1, got {start} and {end}")
        for name, value in (("height", height), ("width", width)):
            if value is not None and (value <= 0 or value % 8):
                raise ValueError(f"height and width must be positive multiples of 8, got {name}={value}")
        allowed = (*CALLBACK_TENSOR_INPUTS, "image")
        batch = self.batch_size(prompt, prompt_embeds) if (prompt is None) != (prompt_embeds is None) else 1
        self.check_image_inputs(prompt, height or 8, width or 8, prompt_embeds, negative_prompt,
                                negative_prompt_embeds, output_type, num_images_per_prompt,
                                callback_on_step_end_tensor_inputs, allowed)
        control = self.prepare_image(image, height, width, batch, num_images_per_prompt)
        height, width = control.shape[-2:]

        device = self.device
        guidance = guidance_scale > 1.0
        guess_mode = guess_mode or self.controlnet.config.global_pool_conditions
        cond, uncond = self.encode_prompt(prompt, device, num_images_per_prompt, guidance, negative_prompt,
                                          prompt_embeds, negative_prompt_embeds, clip_skip)
        embeds = torch.cat([uncond, cond]) if guidance else cond
        control = control.to(device=device, dtype=self.controlnet.dtype)
        if guidance and not guess_mode:
            control = torch.cat([control] * 2)

        timesteps = self.schedule(num_inference_steps)
        s = self.vae_scale_factor
        shape = (cond.shape[0], self.unet.config.in_channels, height // s, width // s)
        x = self.prepare_latents(shape, cond.dtype, device, generator, latents)
        step_end = self.step_end(callback_on_step_end, callback_on_step_end_tensor_inputs,
                                 {"prompt_embeds": embeds, "negative_prompt_embeds": uncond, "image": control})
        unet, controlnet = self._run_on_device("unet"), self._run_beside("controlnet")

        def predict(latents, t, i):
            embeds = step_end.tensors["prompt_embeds"]
            residuals = {}
            if in_control_window(i, len(timesteps), start, end):
                model_in = self.scheduler.scale_model_input(torch.cat([latents] * 2) if guidance else latents, t)
                residuals = controlnet_residuals(controlnet, self.scheduler, latents, model_in, t, embeds,
                                                 step_end.tensors["image"], scale, guess_mode, guidance)

            def model(x, embeds, **residuals):  # the residuals of the whole guidance batch, split with it
                return unet(self.scheduler.scale_model_input(x, t), t, embeds, **residuals)

            if not guidance:
                return model(latents, embeds, **residuals)
            return apply_guidance(guidance_batch(model, latents, 2, self.guidance_batches(), embeds=embeds,
                                                 **residuals), guidance_scale)

        x = self.sample(x, timesteps, predict, self.step_fn(eta, generator), step_end)
        return self.output(x, output_type, return_dict)


__all__ = ["StableDiffusionControlNetPipeline"]
