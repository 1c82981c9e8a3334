"""What the pipelines whose UNet denoises the whole ``b c f h w`` video with a text prompt share (ModelScope /
Zeroscope text- and video-to-video, I2VGen-XL): the guided prediction over sliding context windows, FreeNoise
prompt travel, and the sampling run. They compose FreeInit, FreeNoise, parallel sampling and LoRA loading."""

from __future__ import annotations

import torch

from ..parallel.pipeline import ParallelPipelineMixin
from ..sampling import FreeInitMixin, FreeNoiseMixin
from ..sampling.guidance import guided
from ..sampling.loop import StepEnd, frames_in_batch, scheduler_step
from ..sampling.windows import blend_windows, check_free_noise_windows, check_parallel_windows, plan_windows
from .lora import LoRAMixin
from .sd_video import SDVideoPipeline


class VideoUNetPipeline(LoRAMixin, ParallelPipelineMixin, FreeInitMixin, FreeNoiseMixin, SDVideoPipeline):
    """Not a pipeline of its own: the parts of :class:`~vidcore.pipelines.text_to_video.TextToVideoPipeline`,
    :class:`~vidcore.pipelines.video_to_video.VideoToVideoPipeline` and
    :class:`~vidcore.pipelines.i2vgen_xl.I2VGenXLPipeline` before and after their ``__call__``."""

    callback_tensor_inputs = ("latents", "prompt_embeds")

    # -- prediction (with enable_parallel: CFG halves / frame slices on the ranks) --------------------
    def predict_noise(self, unet, latents, t, prompt_embeds, guidance_scale, window=None, conditions=None):
        """Guided noise prediction for b c f h w latents at step ``t`` (negatives first in the embeds).
        ``window``: the ``(start, end)`` frames of the video that ``latents`` are (context windows), for
        subclasses with per-frame conditioning to slice; None is the whole video. ``conditions``: the call's
        further UNet inputs for subclasses that have them (I2VGen-XL's image and fps), None here."""
        def model(x, prompt_embeds):
            return unet(self.scheduler.scale_model_input(x, t), t, prompt_embeds)

        if self.parallel is not None:  # CFG halves / frame slices (b c f h w) on the ranks
            model = self.parallel.wrap(model, guidance_scale > 1.0, frame_dim=2)
        return guided(model, latents, guidance_scale, self.guidance_batches(), prompt_embeds=prompt_embeds)

    def predict_video_noise(self, unet, latents, t, prompt_embeds, guidance_scale, windows, weighting,
                            conditions=None):
        """:meth:`predict_noise` over sliding context windows (:mod:`vidcore.sampling.windows`), blended; a
        single window over the whole video is one plain call."""
        def window_noise(start: int, end: int) -> torch.Tensor:
            return self.predict_noise(unet, latents[:, :, start:end], t, prompt_embeds, guidance_scale,
                                      (start, end), conditions)

        return blend_windows(window_noise, latents.shape[2], windows, weighting)

    # -- pieces ---------------------------------------------------------------------------------
    def plan_context(self, num_frames: int, context_length, context_stride, context_weighting: str):
        """The call's context windows (:func:`vidcore.sampling.windows.plan_windows`; None: the whole video at
        once), refused with FreeNoise on, whose own windows they would duplicate."""
        windows = plan_windows(num_frames, context_length, context_stride, context_weighting)
        check_free_noise_windows(self, windows)
        return windows

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
        cond, uncond = self.encode_prompt(prompt, device, num_videos_per_prompt, guidance, negative_prompt,
                                          prompt_embeds, negative_prompt_embeds, clip_skip, negative_clip_skip)
        return cond.shape[0], (torch.cat([uncond, cond]) if guidance else cond)

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


__all__ = ["VideoUNetPipeline"]
