"""AnimateDiff video-to-video (diffusers' ``AnimateDiffVideoToVideoPipeline``): re-render a video to follow a
prompt, keeping its layout and motion as far as ``strength`` says.

The input frames are resized to ``height x width`` (default the UNet's sample size, 512 px for SD1.5, as
diffusers), encoded by the VAE ``decode_chunk_size`` frames at a time (each chunk samples its posterior from the
generator, as diffusers), noised to the first timestep of the last ``strength`` of the schedule and denoised
from there by :meth:`~vidcore.pipelines.animatediff.AnimateDiffBase.animate`, so sliding context windows
(videos longer than the motion adapter's table), FreeInit, step caches and motion LoRAs all apply.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..random import randn_tensor
from ..sampling import FreeNoiseMixin
from .animatediff import AnimateDiffBase
from .base import upcast_vae
from .checks import check_call
from .lora import takes_cross_attention_kwargs
from .video_processing import preprocess_video
from .video_to_video import strength_timesteps


class AnimateDiffVideoToVideoPipeline(FreeNoiseMixin, AnimateDiffBase):
    """Stable Diffusion 1.5 + motion adapter: video + text -> video. Components and loading as
    :class:`~vidcore.pipelines.animatediff.AnimateDiffBase` (the same folders and motion adapters)."""

    def strength_schedule(self, num_inference_steps: int, strength: float) -> torch.Tensor:
        """The last ``strength`` of the schedule (FreeInit's rounds start there too)."""
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps = strength_timesteps(self.scheduler, num_inference_steps, strength)
        if len(timesteps) == 0:
            raise ValueError(f"strength={strength} with num_inference_steps={num_inference_steps} leaves no "
                             f"steps to run")
        return timesteps

    def free_init_renoise_timestep(self, timesteps):
        return int(timesteps[0])

    def encode_noised(self, video: torch.Tensor, first_timestep: torch.Tensor, encode_chunk: int, shape, dtype,
                      device, generator) -> torch.Tensor:
        """``video`` (b c f H W in [-1, 1]) encoded ``encode_chunk`` frames at a time and noised to
        ``first_timestep``: ``b c f h w`` latents."""
        batch = shape[0]
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for an effective batch of {batch} videos")
        vae = self._run_on_device("vae")
        encoded = []
        with upcast_vae(vae):
            for i, clip in enumerate(video):  # c f H W
                g = generator[i] if isinstance(generator, list) else generator
                frames = clip.permute(1, 0, 2, 3).to(device=device, dtype=vae.dtype)  # f c H W
                parts = [vae.encode(part).sample(g) for part in frames.split(encode_chunk)]
                encoded.append(torch.cat(parts))
        init = torch.stack(encoded).to(dtype) * vae.config.scaling_factor  # b f c h w
        noise = randn_tensor(init.shape, generator=generator, device=device, dtype=dtype)  # drawn b f c h w
        steps = first_timestep.to(device).repeat(batch)
        return self.scheduler.add_noise(init, noise, steps).permute(0, 2, 1, 3, 4)  # b c f h w

    @torch.no_grad()
    @takes_cross_attention_kwargs
    def __call__(self, video=None, prompt: str | list[str] | None = None, height: int | None = None,
                 width: int | None = None, num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 strength: float = 0.8, negative_prompt: str | list[str] | None = None, num_videos_per_prompt: int = 1,
                 eta: float = 0.0, generator=None, latents: torch.Tensor | None = None, decode_chunk_size: int = 16,
                 *, prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True, clip_skip: int | None = None,
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: tuple[str, ...] | list[str] = ("latents",),
                 context_length: int | None = None, context_stride: int | None = None,
                 context_weighting: str = "pyramid", ip_adapter_image=None,
                 ip_adapter_image_embeds: list[torch.Tensor] | None = None, motion_scale: float | list[float] = 1.0,
                 cross_attention_kwargs: dict | None = None):
        """Re-render ``video`` (a list of PIL frames, an ``f h w 3`` array, an ``f 3 h w`` tensor, or a batch of
        those, one per prompt x ``num_videos_per_prompt``, or one for all) to follow ``prompt``. Other arguments
        as :meth:`AnimateDiffPipeline.__call__` (``context_length`` windows, callbacks, ``output_type`` ...).

        Differences from diffusers: one input video is used for every prompt and video per prompt (diffusers
        raises); ``latents``, if given, are the starting latents at the first timestep (as diffusers). With
        ``enable_free_noise`` the noise added to the video is not rescheduled (as diffusers' video-to-video).
        """
        check_call(self, locals())
        if video is None and latents is None:
            raise ValueError("video is required for video-to-video (or latents at the first timestep)")
        if not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength!r}")
        height, width = self.default_size(height, width, 64)
        clip = None
        if latents is not None:
            num_frames = latents.shape[2]
        else:
            clip = preprocess_video(video, self.vae_scale_factor, size=(height, width))  # n c f H W
            num_frames = clip.shape[2]
            batch = self._batch_size(prompt, prompt_embeds) * num_videos_per_prompt
            if clip.shape[0] not in (1, batch):
                raise ValueError(f"got {clip.shape[0]} videos for {batch} prompts x videos per prompt")
            clip = clip.expand(batch, *clip.shape[1:]) if clip.shape[0] != batch else clip
        strength, encode_chunk = float(strength), decode_chunk_size or num_frames
        if encode_chunk == "auto":  # the decoder's estimate bounds the encoder's chunks too
            s = self.vae_scale_factor
            encode_chunk = self.auto_decode_chunk(height // s, width // s, num_frames)
        first = []  # the first timestep of the latest schedule (FreeInit reschedules per round)

        def schedule(steps: int) -> torch.Tensor:
            timesteps = self.strength_schedule(steps, strength)
            first[:] = [timesteps[:1]]
            return timesteps

        def initial(shape, dtype, device, generator, latents):
            """The encoded video noised to the first timestep (``latents``, if given, are used as they are)."""
            if latents is not None:
                if tuple(latents.shape) != tuple(shape):
                    raise ValueError(f"latents must have shape {tuple(shape)}, got {tuple(latents.shape)}")
                return latents.to(device=device, dtype=dtype)
            return self.encode_noised(clip, first[0], encode_chunk, shape, dtype, device, generator)

        return self.animate_with(locals(), schedule=schedule, initial=initial)

    @staticmethod
    def _batch_size(prompt, prompt_embeds) -> int:
        if isinstance(prompt, (str, dict)):  # a dict: one {frame: prompt} schedule (FreeNoise prompt travel)
            return 1
        if isinstance(prompt, (list, tuple)):
            return len(prompt)
        if prompt_embeds is not None:
            return prompt_embeds.shape[0]
        raise ValueError("pass exactly one of prompt or prompt_embeds")


__all__ = ["AnimateDiffVideoToVideoPipeline"]
