"""ModelScope / Zeroscope text-to-video (diffusers' ``TextToVideoSDPipeline``).

Noise ``b 4 f h w`` -> UNet3D denoising with classifier-free guidance -> per-frame VAE decode.
Random draws happen in the same order and shapes as diffusers, so a seed gives the same video.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..parallel.pipeline import ParallelPipelineMixin
from ..random import randn_tensor
from ..sampling.loop import StepEnd, frames_in_batch, scheduler_step
from ..sampling.windows import blend_windows, check_free_noise_windows, check_parallel_windows, plan_windows
from .base import VideoPipeline, VideoPipelineOutput, apply_guidance
from .text import encode_prompt
from .video_processing import OUTPUT_TYPES, postprocess_video


class TextToVideoPipeline(ParallelPipelineMixin, VideoPipeline):
    parallel_support = True  # enable_parallel (vidcore.parallel)
    free_noise_support = True  # enable_free_noise (vidcore.sampling.free_noise_mixin); subclasses that do not
    # call its hooks set this back to False
    components = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for the real VAE, less for tiny test VAEs)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # -- checks ---------------------------------------------------------------------------------
    def default_size(self, height, width, sample_size: int) -> tuple[int, int]:
        """``height`` and ``width``, each defaulting to the UNet's sample size (``sample_size`` where its config
        has none) in pixels."""
        sample = self.unet.config.sample_size or sample_size
        sample = sample[0] if isinstance(sample, (tuple, list)) else sample
        return height or sample * self.vae_scale_factor, width or sample * self.vae_scale_factor

    def check_inputs(self, prompt, height, width, num_frames, prompt_embeds, negative_prompt_embeds, output_type,
                     num_videos_per_prompt, callback_steps):
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of prompt or prompt_embeds")
        if height % 8 or width % 8 or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of 8, got height={height}, width={width}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt must be at least 1, got {num_videos_per_prompt}")
        if callback_steps is not None and (not isinstance(callback_steps, int) or callback_steps <= 0):
            raise ValueError(f"callback_steps must be a positive integer, got {callback_steps!r}")
        if prompt_embeds is not None and negative_prompt_embeds is not None and prompt_embeds.shape != negative_prompt_embeds.shape:
            raise ValueError("prompt_embeds and negative_prompt_embeds must have the same shape")

    # -- parallel (enable_parallel / disable_parallel / parallel: ParallelPipelineMixin) ------------
    def predict_noise(self, unet, latents, t, prompt_embeds, guidance_scale, window=None, conditions=None):
        """Guided noise prediction for b c f h w latents at step ``t`` (negatives first in the embeds).
        ``window``: the ``(start, end)`` frames of the video that ``latents`` are (context windows), for
        subclasses with per-frame conditioning to slice; None is the whole video. ``conditions``: the call's
        further UNet inputs for subclasses that have them (I2VGen-XL's image and fps), None here."""
        guidance = guidance_scale > 1.0
        if self.parallel is not None:
            model_in = self.scheduler.scale_model_input(latents, t)
            return self.parallel.predict_noise(unet, model_in, t, prompt_embeds, guidance_scale)
        model_in = torch.cat([latents] * 2) if guidance else latents
        model_in = self.scheduler.scale_model_input(model_in, t)
        noise = unet(model_in, t, prompt_embeds)
        return apply_guidance(noise, guidance_scale) if guidance else noise

    def predict_video_noise(self, unet, latents, t, prompt_embeds, guidance_scale, windows, weighting,
                            conditions=None):
        """:meth:`predict_noise` over sliding context windows (:mod:`vidcore.sampling.windows`), blended; a
        single window over the whole video is one plain call."""
        def window_noise(start: int, end: int) -> torch.Tensor:
            return self.predict_noise(unet, latents[:, :, start:end], t, prompt_embeds, guidance_scale,
                                      (start, end), conditions)

        return blend_windows(window_noise, latents.shape[2], windows, weighting)

    # -- pieces ---------------------------------------------------------------------------------
    def encode_prompt(self, prompt, device, num_videos_per_prompt, guidance, negative_prompt=None, prompt_embeds=None,
                      negative_prompt_embeds=None, clip_skip=None, negative_clip_skip=None):
        """(prompt_embeds, negative_prompt_embeds or None) from :func:`vidcore.pipelines.text.encode_prompt`."""
        if self.text_encoder is None:  # embeddings given, no text encoder loaded
            if prompt_embeds is None or (guidance and negative_prompt_embeds is None):
                raise ValueError("this pipeline has no text_encoder: pass prompt_embeds (and negative_prompt_embeds "
                                 "with guidance_scale > 1)")
            dtype = self.unet.dtype
        else:
            self._run_on_device("text_encoder")
            dtype = self.text_encoder.dtype
        return encode_prompt(self.tokenizer, self.text_encoder, prompt, device, dtype, num_videos_per_prompt, guidance,
                             negative_prompt, prompt_embeds, negative_prompt_embeds, clip_skip, negative_clip_skip)

    def encode_guided_prompt(self, prompt, device, num_videos_per_prompt, guidance, negative_prompt, prompt_embeds,
                             negative_prompt_embeds, clip_skip):
        """(prompt_embeds, the UNet's text batch): with guidance the negatives come first, as ``predict_noise``
        splits them."""
        cond, uncond = self.encode_prompt(prompt, device, num_videos_per_prompt, guidance, negative_prompt,
                                          prompt_embeds, negative_prompt_embeds, clip_skip)
        return cond, (torch.cat([uncond, cond]) if guidance else cond)

    def encode_text(self, prompt, num_frames: int, device, num_videos_per_prompt: int, guidance: bool, negative_prompt,
                    prompt_embeds, negative_prompt_embeds, clip_skip, negative_clip_skip=None):
        """(videos, the UNet's text batch with the negatives first): one row per video for text prompts, one per
        frame ``(b f) m d`` for a ``{frame: prompt}`` schedule (prompt travel, with ``enable_free_noise``)."""
        self.check_free_noise_parallel()
        travel = self.free_noise_prompts(prompt, negative_prompt, num_frames, device, num_videos_per_prompt, guidance,
                                         prompt_embeds, negative_prompt_embeds, clip_skip, negative_clip_skip)
        if travel is not None:
            cond, uncond = travel
            return num_videos_per_prompt, (torch.cat([uncond, cond]) if guidance else cond)
        cond, embeds = self.encode_guided_prompt(prompt, device, num_videos_per_prompt, guidance, negative_prompt,
                                                 prompt_embeds, negative_prompt_embeds, clip_skip)
        return cond.shape[0], embeds

    def denoise(self, latents, timesteps, guidance_scale, eta, generator, step_end: StepEnd, windows=None,
                context_weighting="pyramid", conditions=None):
        """One sampling run. latents: b c f h w; ``step_end.tensors["prompt_embeds"]``: the UNet's text batch
        (2b or b) m d with the negatives first; ``windows``: sliding context windows
        (:func:`vidcore.sampling.windows.plan_windows`; None: the whole video at once); ``conditions``: see
        :meth:`predict_noise`."""
        unet = self._run_on_device("unet")
        windows = windows or [(0, latents.shape[2])]
        if self.parallel is not None:
            check_parallel_windows(windows, self.parallel.config.frame_size)
            self.parallel.check(latents.shape[2])
            latents = self.parallel.broadcast(latents)

        def predict(x, t, i):
            return self.predict_video_noise(unet, x, t, step_end.tensors["prompt_embeds"], guidance_scale, windows,
                                            context_weighting, conditions)

        step = frames_in_batch(scheduler_step(self.scheduler, eta=eta, generator=generator))
        return self.sample(latents, timesteps, predict, step, step_end)

    def decode_latents(self, latents: torch.Tensor, decode_chunk_size: int | None = None) -> torch.Tensor:
        """b c f h w latents -> b 3 f H W float32 video in [-1, 1], ``decode_chunk_size`` frames per VAE call
        (with ``enable_parallel``: split over the ranks, the video on rank 0 and None elsewhere).

        An fp16 VAE whose config asks for it (``force_upcast``) decodes in float32, avoiding overflow.
        """
        vae = self._run_on_device("vae")
        b, c, f, h, w = latents.shape
        z = (latents / vae.config.scaling_factor).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        if upcast:
            vae.float()
        z = z.to(vae.dtype)

        def decode(z):
            return torch.cat([vae.decode(part) for part in z.split(decode_chunk_size or z.shape[0])])

        if self.parallel is not None:  # frames split over all ranks, gathered on rank 0 (None elsewhere)
            s = self.vae_scale_factor
            frames = self.parallel.decode(decode, z, (vae.config.out_channels, h * s, w * s))
        else:
            frames = decode(z)
        if upcast:
            vae.half()
        if frames is None:
            return None
        return frames.reshape(b, f, *frames.shape[1:]).permute(0, 2, 1, 3, 4).float()

    def prepare_latents(self, shape, dtype, device, generator, latents=None):
        if isinstance(generator, list) and len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for an effective batch of {shape[0]} videos")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != tuple(shape):
            raise ValueError(f"latents must have shape {tuple(shape)}, got {tuple(latents.shape)}")
        return latents.to(device) * self.scheduler.init_noise_sigma

    def finish(self, latents, output_type, return_dict, decode_chunk_size, output_class=VideoPipelineOutput):
        """b c f h w latents -> the call's result: decoded and postprocessed unless ``output_type="latent"``
        (None on ranks > 0 with enable_parallel), as ``output_class`` or a 1-tuple."""
        if output_type == "latent":
            video = latents
        else:
            decoded = self.decode_latents(latents, decode_chunk_size)
            video = None if decoded is None else postprocess_video(decoded, output_type)
        return output_class(frames=video, cache_stats=self.cache_stats()) if return_dict else (video,)

    # -- call -----------------------------------------------------------------------------------
    @torch.no_grad()
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
                 context_weighting: str = "pyramid"):
        """Generate videos from text. Argument names and defaults follow diffusers' TextToVideoSDPipeline;
        ``num_videos_per_prompt``, ``decode_chunk_size`` and ``callback_on_step_end`` are additions, and so are
        FreeNoise (``enable_free_noise``; then ``prompt`` / ``negative_prompt`` may be ``{frame: prompt}``
        dicts) and sliding context windows for videos longer than the model's clips
        (:mod:`vidcore.sampling.windows`): ``context_length`` frames per window (None: the whole video, no
        windows), starts ``context_stride`` apart (default ``context_length // 4``), blended with
        ``context_weighting`` "pyramid" | "flat"; the two exclude each other."""
        height, width = self.default_size(height, width, 32)
        self.check_inputs(prompt, height, width, num_frames, prompt_embeds, negative_prompt_embeds, output_type,
                          num_videos_per_prompt, callback_steps)
        windows = plan_windows(num_frames, context_length, context_stride, context_weighting)
        check_free_noise_windows(getattr(self, "free_noise", None), windows)
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
            x, timesteps, guidance_scale, eta, generator, step_end, windows, context_weighting), generator,
            timesteps=self.scheduler.timesteps)
        return self.finish(latents, output_type, return_dict, decode_chunk_size)
