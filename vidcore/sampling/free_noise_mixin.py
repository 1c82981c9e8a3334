"""The pipeline side of FreeNoise and prompt travel: ``enable_free_noise`` and its hooks on video pipelines.

A pipeline composes :class:`FreeNoiseMixin` and calls, inside its ``__call__``:

* :meth:`FreeNoiseMixin.free_noise_prompts` before encoding its prompt: it returns per-frame embeddings for a
  ``{frame: prompt}`` schedule (or None when the prompts are plain text, which keeps the plain path and its
  results bit for bit);
* :meth:`FreeNoiseMixin.free_noise_latents` before scaling its initial noise: it draws the noise (same shape,
  same generator call as the plain path) and reschedules it.

The windowed temporal attention needs no call: during each sampling run (:meth:`FreeNoiseMixin.free_noise_scope`,
entered with the run's progress bar) a :class:`~vidcore.sampling.free_noise.FrameWindows` hangs on every temporal
block of ``self.unet`` (see :meth:`FreeNoiseMixin.temporal_blocks`), which the blocks consult in their forward.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager

import torch

from ..nn.resnet import ResBlock2D
from ..nn.resample import Downsample, Upsample
from ..nn.transformer import (
    SpatialTransformer,
    SpatioTemporalTransformer,
    TemporalTransformer,
)
from .combinations import check_combination
from .free_noise import (
    FrameWindows,
    FreeNoiseSettings,
    check_prompt_schedule,
    reschedule_noise,
    schedule_embeddings,
)

log = logging.getLogger(__name__)

PER_FRAME_MODULES = (ResBlock2D, SpatialTransformer, Downsample, Upsample)


class FreeNoiseMixin:
    """``pipe.enable_free_noise(context_length=16, context_stride=4, weighting_scheme="pyramid",
    noise_type="shuffle_context", prompt_interpolation_callback=None)``, ``disable_free_noise()``,
    ``enable_free_noise_split_inference(spatial_split_size=256, temporal_split_size=16)`` (and its
    ``disable_``), and prompt travel: ``prompt={0: "a cat", 16: "a dog"}`` while FreeNoise is on.
    See :mod:`vidcore.sampling.free_noise` for the method. The settings are the pipeline's; its UNet's temporal
    blocks see the windows only while the pipeline samples."""

    free_noise_frame_dim = 2  # where the frames sit in the pipeline's initial noise (SVD: 1)

    # -- the denoiser's temporal blocks -------------------------------------------------------------
    def temporal_blocks(self) -> list[torch.nn.Module]:
        """The blocks whose frame-mixing step FreeNoise windows: every block of each temporal transformer of
        ``self.unet`` (AnimateDiff's motion modules, ModelScope's / I2VGen-XL's temporal transformers) and SVD's
        temporal blocks."""
        blocks = []
        for module in self.unet.modules():
            if isinstance(module, TemporalTransformer):
                blocks.extend(module.transformer_blocks)
            elif isinstance(module, SpatioTemporalTransformer):
                blocks.extend(module.temporal_transformer_blocks)
        return blocks

    def free_noise_max_length(self) -> int | None:
        """The longest window the temporal blocks' frame-position tables allow (None: no table)."""
        limits = [b.pos_embed.max_len for b in self.temporal_blocks() if getattr(b, "pos_embed", None) is not None]
        return min(limits) if limits else None

    @property
    def free_noise(self) -> FreeNoiseSettings | None:
        """The settings of ``enable_free_noise``, or None when it is off."""
        return getattr(self, "_free_noise", None)

    @property
    def free_noise_enabled(self) -> bool:
        return self.free_noise is not None

    @contextmanager
    def sampling_scope(self):
        """The run's scope of the other settings (the step cache ...) plus FreeNoise's windows."""
        with super().sampling_scope(), self.free_noise_scope():
            yield

    @contextmanager
    def free_noise_scope(self):
        """FreeNoise's attention windows (and split inference's pixel chunks) on the temporal blocks of
        ``self.unet`` for the ``with`` block (a sampling run), restored after: the settings stay on the pipeline,
        so a UNet shared with another pipeline or called directly is untouched."""
        split = getattr(self, "_free_noise_spatial_split", None)
        hook = FrameWindows(self.free_noise, split) if (self.free_noise is not None or split) else None
        blocks = self.temporal_blocks() if hook is not None else []
        saved = [(block, getattr(block, "frame_windows", None)) for block in blocks]
        try:
            for block in blocks:
                block.frame_windows = hook
            yield
        finally:
            for block, previous in saved:
                block.frame_windows = previous

    # -- switches -----------------------------------------------------------------------------------
    def enable_free_noise(self, context_length: int | None = 16, context_stride: int = 4,
                          weighting_scheme: str = "pyramid", noise_type: str = "shuffle_context",
                          prompt_interpolation_callback: Callable | None = None, match_diffusers: bool = True) -> None:
        """Sample videos longer than the model's training clips (FreeNoise); same arguments as diffusers'.

        ``context_length`` frames per attention window (None: the longest the frame-position table allows,
        else 16), window starts ``context_stride`` apart; ``weighting_scheme`` "flat" | "pyramid" |
        "delayed_reverse_sawtooth"; ``noise_type`` "shuffle_context" | "repeat_context" | "random";
        ``prompt_interpolation_callback(start_frame, end_frame, start_embeds, end_embeds) -> embeds`` (rows for
        frames ``start_frame..end_frame``; default linear) for prompt schedules. ``match_diffusers=False``
        repairs two diffusers quirks (see :mod:`vidcore.sampling.free_noise`)."""
        limit = self.free_noise_max_length()
        if context_length is None:
            context_length = limit or 16
        settings = FreeNoiseSettings(context_length, context_stride, weighting_scheme, noise_type,
                                     prompt_interpolation_callback, bool(match_diffusers))
        if limit is not None and context_length > limit:
            raise ValueError(f"context_length={context_length} is more than the {limit} frame positions of this "
                             f"model's temporal layers (motion_max_seq_length); use at most {limit}")
        self._free_noise = settings

    def disable_free_noise(self) -> None:
        """Back to plain sampling (split inference, if on, stays on)."""
        self._free_noise = None

    def enable_free_noise_split_inference(self, spatial_split_size: int = 256, temporal_split_size: int = 16) -> None:
        """Lower the peak memory of long videos without changing the result: the temporal blocks run on at
        most ``spatial_split_size`` pixels at a time, and the per-frame layers of the UNet (res blocks, spatial
        transformers, down/up samplers) on at most ``temporal_split_size`` frames at a time."""
        for name, value in (("spatial_split_size", spatial_split_size), ("temporal_split_size", temporal_split_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.disable_free_noise_split_inference()
        self._free_noise_spatial_split = spatial_split_size
        for module in self.unet.modules():
            if isinstance(module, PER_FRAME_MODULES):
                module.row_chunk = temporal_split_size  # vidcore.nn.row_chunks

    def disable_free_noise_split_inference(self) -> None:
        self._free_noise_spatial_split = None
        for module in self.unet.modules():
            if isinstance(module, PER_FRAME_MODULES):
                module.row_chunk = None

    def check_free_noise_parallel(self) -> None:
        """Frame-parallel ranks hold slices of the video, which the attention windows cannot see whole."""
        runner = getattr(self, "parallel", None)
        check_combination(self, free_noise=self.free_noise is not None,
                          frame_parallel=runner is not None and runner.config.frame_size > 1)

    # -- hooks for __call__ -------------------------------------------------------------------------
    def free_noise_latents(self, shape, dtype, device, generator, latents=None) -> torch.Tensor | None:
        """The initial noise before the scheduler's scaling: with FreeNoise on, drawn as the plain path draws it
        (``randn_tensor(shape, generator)``; ``shape`` has the frames at ``free_noise_frame_dim``) and then
        rescheduled; a given ``latents`` with every frame is used as it is, one with ``context_length`` frames
        is extended. With FreeNoise off, ``latents`` is returned untouched."""
        settings = self.free_noise
        if settings is None:
            return latents
        from ..random import randn_tensor

        if isinstance(generator, list) and len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for an effective batch of {shape[0]} videos")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        return self.free_noise_reschedule(latents.to(device), shape[self.free_noise_frame_dim], generator,
                                          self.free_noise_frame_dim)

    def free_noise_reschedule(self, noise: torch.Tensor, num_frames: int, generator, frame_dim: int) -> torch.Tensor:
        """``noise`` (frames along ``frame_dim``) rescheduled by FreeNoise; untouched when it is off. For
        pipelines that draw their noise elsewhere (video-to-video noises the encoded video)."""
        if self.free_noise is None:
            return noise
        return reschedule_noise(noise, num_frames, self.free_noise, generator, frame_dim)

    def free_noise_prompts(self, prompt, negative_prompt, num_frames: int, device, num_videos_per_prompt: int,
                           guidance: bool, prompt_embeds=None, negative_prompt_embeds=None, clip_skip=None,
                           negative_clip_skip=None, encode: Callable | None = None):
        """Per-frame ``(b f) m d`` (cond, uncond or None) embeddings when ``prompt`` or ``negative_prompt`` is a
        ``{frame: prompt}`` schedule (prompt travel), else None (the pipeline encodes as usual).

        Each schedule's key prompts are encoded once and interpolated between key frames (the callback of
        ``enable_free_noise``, default linear); a text negative prompt counts as ``{0: text}``. ``encode``:
        ``(prompts, clip_skip) -> k m d`` (default: the pipeline's ``embed_prompts``, its text encoder; the negatives
        with ``negative_clip_skip``, None as diffusers' SD pipelines)."""
        if not isinstance(prompt, dict) and not isinstance(negative_prompt, dict):
            return None
        if self.free_noise is None:
            raise ValueError("prompt / negative_prompt as a {frame_index: prompt} dict (prompt travel) needs "
                             "pipe.enable_free_noise() first")
        if prompt_embeds is not None or negative_prompt_embeds is not None:
            raise ValueError("prompt_embeds / negative_prompt_embeds do not combine with a {frame_index: prompt} "
                             "dict; pass the prompts as text")
        for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if value is not None and not isinstance(value, (str, dict)):
                raise ValueError(f"with a prompt schedule, {name} must be a string or a {{frame_index: prompt}} "
                                 f"dict, got {type(value).__name__}")
        if encode is None:
            def encode(prompts, skip):
                return self.embed_prompts(prompts, device, skip)
        interpolate = self.free_noise.prompt_interpolation_callback

        def per_frame(value, name, skip):
            schedule = check_prompt_schedule(value if isinstance(value, dict) else {0: value}, num_frames, name)
            rows = schedule_embeddings(schedule, num_frames, lambda p: encode(p, skip), interpolate)
            return rows.repeat(num_videos_per_prompt, 1, 1)  # (b f) m d, videos outermost

        cond = per_frame(prompt, "prompt", clip_skip)
        uncond = (per_frame("" if negative_prompt is None else negative_prompt, "negative_prompt", negative_clip_skip)
                  if guidance else None)
        return cond, uncond
