"""ModelScope / Zeroscope text-to-video (diffusers' ``TextToVideoSDPipeline``).

Noise ``b 4 f h w`` -> UNet3D denoising with classifier-free guidance -> per-frame VAE decode.
Random draws happen in the same order and shapes as diffusers, so a seed gives the same video.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..sampling.loop import StepEnd
from .checks import check_call
from .lora import takes_cross_attention_kwargs
from .video_unet import VideoUNetPipeline


class TextToVideoPipeline(VideoUNetPipeline):
    # -- call -----------------------------------------------------------------------------------
    @torch.no_grad()
    @takes_cross_attention_kwargs
    def __call__(self, prompt: str | list[str] | None = None, height: int | None = None, width: int | None = None,
                 num_frames: int = 16, num_inference_steps: int = 50, guidance_scale: float = 9.0,
                 negative_prompt: str | list[str] | None = None, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 output_type: str = "np", return_dict: bool = True,
                 callback: Callable[[int, int, torch.Tensor], None] | None = None, callback_steps: int = 1,
                 clip_skip: int | None = None, num_videos_per_prompt: int = 1, decode_chunk_size: int | None = None,
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
                 context_length: int | None = None, context_stride: int | None = None,
                 context_weighting: str = "pyramid", cross_attention_kwargs: dict | None = None):
        """Generate videos from text. Argument names and defaults follow diffusers' TextToVideoSDPipeline;
        ``num_videos_per_prompt``, ``decode_chunk_size`` and ``callback_on_step_end`` are additions, and so are
        FreeNoise (``enable_free_noise``; then ``prompt`` / ``negative_prompt`` may be ``{frame: prompt}``
        dicts) and sliding context windows for videos longer than the model's clips
        (:mod:`vidcore.sampling.windows`): ``context_length`` frames per window (None: the whole video, no
        windows), starts ``context_stride`` apart (default ``context_length // 4``), blended with
        ``context_weighting`` "pyramid" | "flat"; the two exclude each other."""
        check_call(self, locals())
        height, width = self.default_size(height, width, 32)
        self.check_inputs(prompt, height, width, num_frames, prompt_embeds, negative_prompt_embeds, output_type,
                          num_videos_per_prompt, callback_steps)
        windows = self.plan_context(num_frames, context_length, context_stride, context_weighting)
        device = self.device
        videos, embeds = self.encode_text(prompt, num_frames, device, num_videos_per_prompt, guidance_scale > 1.0,
                                          negative_prompt, prompt_embeds, negative_prompt_embeds, clip_skip)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        s = self.vae_scale_factor
        shape = (videos, self.unet.config.in_channels, num_frames, height // s, width // s)
        latents = self.free_noise_latents(shape, embeds.dtype, device, generator, latents)  # FreeNoise: rescheduled
        latents = self.prepare_latents(shape, embeds.dtype, device, generator, latents)
        step_end = StepEnd(self, callback_on_step_end, callback_on_step_end_tensor_inputs, {"prompt_embeds": embeds},
                           callback, callback_steps)
        latents = self.free_init_denoise(latents, num_inference_steps, self.schedule, lambda x, timesteps: self.denoise(
            x, timesteps, guidance_scale, eta, generator, step_end.fresh(), windows, context_weighting), generator,
            timesteps=self.scheduler.timesteps, stop=lambda: step_end.interrupted)
        return self.finish(latents, output_type, return_dict, decode_chunk_size)
