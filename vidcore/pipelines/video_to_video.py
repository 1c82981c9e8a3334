"""Zeroscope-style video-to-video (diffusers' ``VideoToVideoSDPipeline``).

The input video is VAE-encoded, noised to the timestep that ``strength`` selects, then denoised
with the text-to-video loop; ``strength=1`` starts from almost pure noise.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..random import randn_tensor
from ..sampling.loop import StepEnd
from .checks import check_call
from .lora import takes_cross_attention_kwargs
from .video_unet import VideoUNetPipeline
from .video_processing import preprocess_video


def strength_timesteps(scheduler, num_inference_steps: int, strength: float) -> torch.Tensor:
    """The scheduler's timesteps (already set) without their first ``(1 - strength)``; sigma samplers are told
    where they begin."""
    keep = min(int(num_inference_steps * strength), num_inference_steps)
    start = max(num_inference_steps - keep, 0) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]


class VideoToVideoPipeline(VideoUNetPipeline):

    def timesteps_for_strength(self, num_inference_steps: int, strength: float):
        """Skip the first ``(1 - strength)`` of the schedule; returns the remaining timesteps."""
        return strength_timesteps(self.scheduler, num_inference_steps, strength)

    def free_init_renoise_timestep(self, timesteps):
        return int(timesteps[0])  # FreeInit's rounds start where the strength puts the first step

    def encode_video(self, video: torch.Tensor, timestep, dtype, device, generator) -> torch.Tensor:
        """b 3 f H W in [-1, 1] (or b 4 f h w latents) -> noised latents b 4 f h w at ``timestep``."""
        video = video.to(device=device, dtype=dtype)
        b, c, f, h, w = video.shape
        frames = video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        if c == 4:
            latents = frames
        else:
            if isinstance(generator, list):
                raise ValueError("video-to-video takes a single torch.Generator (the whole video is encoded at once)")
            vae = self._run_on_device("vae")
            latents = vae.encode(frames.to(vae.dtype)).sample(generator).to(dtype) * vae.config.scaling_factor
        noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=dtype)  # (b f) c h w
        noise = self.free_noise_reschedule(noise.view(b, f, *noise.shape[1:]), f, generator, 1).reshape(noise.shape)
        latents = self.scheduler.add_noise(latents, noise, timestep)
        return latents.reshape(b, f, *latents.shape[1:]).permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    @takes_cross_attention_kwargs
    def __call__(self, prompt: str | list[str] | None = None, video=None, strength: float = 0.6,
                 num_inference_steps: int = 50, guidance_scale: float = 15.0,
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
        """Re-render ``video`` (list of PIL frames, ``f h w 3`` array, ``f 3 h w`` tensor, or a batch) to
        follow ``prompt``. Output size is the input size cut down to a multiple of 8.

        ``latents``, if given, replaces the noised encoding of the video (diffusers accepts and ignores it).
        With ``enable_free_noise`` the noise added to the video is rescheduled and ``prompt`` may be a
        ``{frame: prompt}`` dict.
        ``context_length`` / ``context_stride`` / ``context_weighting``: sliding context windows over the frames,
        as in :meth:`TextToVideoPipeline.__call__` (default: the whole video at once).
        """
        check_call(self, locals())
        if video is None:
            raise ValueError("video is required for video-to-video")
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        video_t = preprocess_video(video, self.vae_scale_factor)
        _, c, f, h, w = video_t.shape
        px = 1 if c != 4 else self.vae_scale_factor  # latents given instead of pixels
        self.check_inputs(prompt, h * px, w * px, f, prompt_embeds, negative_prompt_embeds, output_type,
                          num_videos_per_prompt, callback_steps)
        windows = self.plan_context(f, context_length, context_stride, context_weighting)
        device = self.device
        batch, embeds = self.encode_text(prompt, f, device, num_videos_per_prompt, guidance_scale > 1.0,
                                         negative_prompt, prompt_embeds, negative_prompt_embeds, clip_skip)
        if video_t.shape[0] not in (1, batch):
            raise ValueError(f"got {video_t.shape[0]} videos for {batch} prompts x videos per prompt")
        if video_t.shape[0] != batch:
            video_t = video_t.expand(batch, *video_t.shape[1:])

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.timesteps_for_strength(num_inference_steps, strength)
        if len(timesteps) == 0:
            raise ValueError(f"strength={strength} with num_inference_steps={num_inference_steps} leaves no steps to run")
        if latents is None:
            latents = self.encode_video(video_t, timesteps[:1].repeat(batch * f), embeds.dtype, device, generator)
        def schedule(steps: int) -> torch.Tensor:
            self.schedule(steps)
            return self.timesteps_for_strength(steps, strength)

        step_end = StepEnd(self, callback_on_step_end, callback_on_step_end_tensor_inputs, {"prompt_embeds": embeds},
                           callback, callback_steps)
        latents = self.free_init_denoise(latents.to(device), num_inference_steps, schedule, lambda x, ts: self.denoise(
            x, ts, guidance_scale, eta, generator, step_end.fresh(), windows, context_weighting), generator,
            timesteps=timesteps, stop=lambda: step_end.interrupted)
        return self.finish(latents, output_type, return_dict, decode_chunk_size)
