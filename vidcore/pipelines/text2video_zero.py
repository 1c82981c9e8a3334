"""Text2Video-Zero (Khachatryan et al., arXiv 2303.13439): a video from a plain Stable Diffusion 1.x image
model, no training (diffusers' deprecated ``TextToVideoZeroPipeline``).

1. One latent per video is denoised (DDIM) from pure noise to step ``T1`` and on to step ``T0``.
2. The ``T0`` latent is copied to the other frames and frame ``k`` is translated by ``k * (strength_x,
   strength_y)`` (:func:`vidcore.nn.warp.warp_latents`), then noised back from ``T0`` to ``T1`` in one DDPM
   forward jump with fresh noise.
3. All frames (the first frame's own ``T1`` latent plus the warped ones) are denoised together from ``T1``
   with cross-frame attention: every spatial self-attention takes its keys and values from frame 0 of its
   video (:func:`vidcore.nn.attention.set_cross_frame_attention`), which keeps appearance consistent.

``t0`` / ``t1`` count steps from the end of the schedule (``timesteps[-t - 1]``). Their defaults are 44 and 47,
as in diffusers' code; diffusers' documentation page states 45 and 48. vidcore follows the code.

Random draws happen in the same order and shapes as diffusers (initial noise ``b 4 h w``, then the forward
jump's noise ``(b (f-1)) 4 h w``, then any DDIM ``eta`` noise), so a seed gives the same video.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..nn.attention import cross_frame_attention
from ..nn.warp import warp_latents
from ..random import randn_tensor
from ..sampling.guidance import guided
from ..sampling.loop import StepEnd, check_callback_inputs, denoise, scheduler_step
from ..loading.loaders import load_text_encoder, load_tokenizer, load_vidcore_model
from .base import VideoPipelineOutput, check_negative_inputs
from .checks import check_call
from .ip_adapter import IPAdapterMixin, check_ip_adapter_inputs
from .sd_video import SDVideoPipeline
from .video_processing import OUTPUT_TYPES


COMPONENTS = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")
CALLBACK_TENSOR_INPUTS = ("latents", "prompt_embeds", "negative_prompt_embeds")


# ----------------------------------------------------------------------------- loading (shared with edits)


def sd_scheduler(config_file: Path):
    """The stored scheduler (SD1.5 ships PNDM, InstructPix2Pix Euler ancestral); one vidcore does not implement
    (e.g. LMS) is replaced by the closest vidcore sampler built from the same config (Euler for Euler-like
    names, else DDIM), with a log message."""
    from ..schedulers import DDIMScheduler, EulerDiscreteScheduler, stored_or_fallback

    def closest(config):
        cls = EulerDiscreteScheduler if "Euler" in str(config.get("_class_name")) else DDIMScheduler
        return cls.from_config(config)

    return stored_or_fallback(config_file, closest, " built from its config")


def load_sd_scheduler(folder: Path, torch_dtype=None, variant=None):
    """Folder loader (:mod:`vidcore.loading.loaders`) of :func:`sd_scheduler`."""
    return sd_scheduler(Path(folder) / "scheduler_config.json")


# the Stable Diffusion 1.x components, with the stored scheduler as sd_scheduler picks it
SD_LOADERS = {"tokenizer": load_tokenizer, "text_encoder": load_text_encoder, "unet": load_vidcore_model,
              "vae": load_vidcore_model, "scheduler": load_sd_scheduler}


def _history_per_frame(scheduler, shape: tuple, frames: int):
    """Multistep samplers (PNDM, DPM-Solver) resume phase 3 with outputs kept from phase 1, where the batch was the
    first frame of each video (``shape``, ``b c h w``); phase 3 steps ``(b f) c h w``. Each kept tensor is repeated
    per frame: for one video this equals diffusers' broadcasting, and several videos work (diffusers fails)."""
    def per_frame(value):
        if isinstance(value, torch.Tensor) and tuple(value.shape) == shape:
            return value.repeat_interleave(frames, dim=0)
        return value

    for name, value in list(vars(scheduler).items()):
        if isinstance(value, list):
            setattr(scheduler, name, [per_frame(v) for v in value])
        else:
            setattr(scheduler, name, per_frame(value))
    return scheduler


# ----------------------------------------------------------------------------- pipeline


@dataclass
class TextToVideoZeroOutput(VideoPipelineOutput):
    """``frames`` as every vidcore pipeline (np ``b f h w 3``, pt ``b f 3 h w``, ``[[PIL]]`` or latents
    ``b 4 f h w``); ``images`` is diffusers' layout: all frames of all videos in one sequence."""

    @property
    def images(self):
        if isinstance(self.frames, list):
            return [frame for video in self.frames for frame in video]
        if self.frames.ndim == 5 and self.frames.shape[1] == 4:  # latents b c f h w
            return self.frames.permute(0, 2, 1, 3, 4).reshape(-1, *self.frames.shape[1:2], *self.frames.shape[3:])
        return self.frames.reshape(-1, *self.frames.shape[2:])


class TextToVideoZeroPipeline(IPAdapterMixin, SDVideoPipeline):
    """Stable Diffusion 1.x (``UNet2D``) -> video by Text2Video-Zero. Components as diffusers'
    ``TextToVideoZeroPipeline`` without the safety checker (outputs equal diffusers' with ``safety_checker=None``).
    IP-Adapter image prompts: ``load_ip_adapter`` / ``set_ip_adapter_scale`` / ``unload_ip_adapter``
    (:mod:`vidcore.pipelines.ip_adapter`; an addition, diffusers' pipeline has none)."""
    # no FreeInit: Text2Video-Zero starts from one frame's noise and makes the others by warping at T1, where
    # FreeInit's re-initialisation needs a noise per frame
    component_names = COMPONENTS

    # from_pretrained: a Stable Diffusion 1.x folder or hub repo (stable-diffusion-v1-5/stable-diffusion-v1-5) with its
    # stored scheduler (PNDM there, as diffusers); scheduler= replaces it (e.g. DDIM, the sampler Text2Video-Zero is
    # described with: vidcore.schedulers.DDIMScheduler.from_config(folder + "/scheduler"))
    loaders = SD_LOADERS

    def saved_index_options(self) -> dict:
        """diffusers' TextToVideoZeroPipeline also lists a safety checker and its feature extractor (none here)."""
        return {"safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}

    def check_zero_inputs(self, video_length, frame_ids, t0, t1, num_inference_steps):
        if not isinstance(video_length, int) or video_length < 1:
            raise ValueError(f"video_length must be a positive integer, got {video_length!r}")
        if len(frame_ids) != video_length:
            raise ValueError(f"frame_ids has {len(frame_ids)} entries but video_length is {video_length}")
        if not (isinstance(t0, int) and isinstance(t1, int) and 0 <= t0 < t1 < num_inference_steps):
            raise ValueError(f"t0 and t1 must be integers with 0 <= t0 < t1 < num_inference_steps="
                             f"{num_inference_steps}, got t0={t0!r}, t1={t1!r} (the defaults 44 and 47 need at least "
                             "48 steps)")
        if self.unet.config.in_channels != 4:
            raise ValueError(f"Text2Video-Zero needs a 4-channel text-to-image UNet; this one takes "
                             f"{self.unet.config.in_channels} input channels")

    def forward_jump(self, latents: torch.Tensor, t_from: int, t_to: int, generator) -> torch.Tensor:
        """DDPM forward process from timestep ``t_from`` to the later ``t_to`` in one draw:
        ``sqrt(a) x + sqrt(1 - a) eps`` with ``a = prod(1 - beta[t_from:t_to])``. ``latents``: ``b (f-1) c h w``."""
        betas = getattr(self.scheduler, "betas", None)
        if betas is None:
            raise ValueError(f"{type(self.scheduler).__name__} has no beta table; use DDIM or PNDM")
        alpha = torch.prod((1.0 - betas)[t_from:t_to])
        rows = latents.shape[1:]
        if isinstance(generator, (list, tuple)) and len(generator) > 1:
            eps = torch.stack([randn_tensor(rows, g, latents.device, latents.dtype) for g in generator])
        else:
            eps = randn_tensor((latents.shape[0] * rows[0], *rows[1:]), generator, latents.device, latents.dtype)
            eps = eps.reshape(latents.shape)
        return torch.sqrt(alpha) * latents + torch.sqrt(1 - alpha) * eps

    def predict_fn(self, unet, scheduler, embeds, guidance_scale, image_embeds=None):
        """The guided prediction (a :data:`vidcore.sampling.loop.Predict`) for ``n c h w`` latents; ``embeds()``
        gives the text embeddings ``(2n | n) m d``, negatives first (read every step: callbacks may replace them);
        ``scheduler``: the phase's (phase 3 runs a copy whose multistep history is per frame). ``image_embeds``:
        the IP-Adapter inputs, one row per video (and guidance half), shared by its frames."""
        def predict(latents, t, i):
            def model(x, embeds, image_embeds):
                return unet(scheduler.scale_model_input(x, t), t, embeds, image_embeds=image_embeds)

            return guided(model, latents, guidance_scale, self.guidance_batches(), embeds=embeds(),
                          image_embeds=image_embeds)

        return predict

    def schedule_prompts(self, prompt, negative_prompt, num_frames: int, num_videos_per_prompt: int, guidance: bool,
                         clip_skip, prompt_embeds, negative_prompt_embeds):
        """Prompt travel: ``prompt`` / ``negative_prompt`` as ``{frame: prompt}`` dicts (a string counts as
        ``{0: string}``), each frame's embedding interpolated linearly between its key frames (as FreeNoise's
        prompt travel, :func:`vidcore.sampling.free_noise.schedule_embeddings`). Returns ((frame-0 cond, uncond)
        ``1 m d``, (per-frame cond, uncond) ``(b f) m d``, videos outermost). The first frame is made alone from its
        own prompt and every frame attends to it (cross-frame attention), so frame 0 is the run of its prompt and
        the others follow theirs."""
        from ..sampling.free_noise import check_prompt_schedule, schedule_embeddings
        from .text import clip_embed

        if prompt_embeds is not None or negative_prompt_embeds is not None:
            raise ValueError("prompt_embeds / negative_prompt_embeds do not combine with a {frame_index: prompt} dict")
        if self.text_encoder is None:
            raise ValueError("a {frame_index: prompt} schedule needs the pipeline's text_encoder")
        device = self.device
        self._run_on_device("text_encoder")

        def rows(value, name, skip):
            if value is not None and not isinstance(value, (str, dict)):
                raise ValueError(f"with a prompt schedule, {name} must be a string or a {{frame_index: prompt}} dict")
            schedule = check_prompt_schedule(value if isinstance(value, dict) else {0: value or ""}, num_frames, name)
            per_frame = schedule_embeddings(schedule, num_frames, lambda p: clip_embed(
                self.tokenizer, self.text_encoder, p, device, skip).to(device, self.text_encoder.dtype))
            return per_frame  # f m d

        cond = rows(prompt, "prompt", clip_skip)
        uncond = rows(negative_prompt, "negative_prompt", None) if guidance else None
        first = lambda x: None if x is None else x[:1]  # noqa: E731  (frame 0; encode_prompt repeats it per video)
        videos = lambda x: None if x is None else x.repeat(num_videos_per_prompt, 1, 1)  # noqa: E731  (b f) m d
        return (first(cond), first(uncond)), (videos(cond), videos(uncond))

    callback_tensor_inputs = CALLBACK_TENSOR_INPUTS

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, video_length: int = 8, height: int | None = None,
                 width: int | None = None, num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 negative_prompt: str | list[str] | None = None, num_videos_per_prompt: int = 1, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 motion_field_strength_x: float = 12, motion_field_strength_y: float = 12, output_type: str = "np",
                 return_dict: bool = True, callback: Callable[[int, int, torch.Tensor], None] | None = None,
                 callback_steps: int = 1, t0: int = 44, t1: int = 47, frame_ids: Sequence[int] | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 clip_skip: int | None = None, decode_chunk_size: int | None = None,
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",), ip_adapter_image=None,
                 ip_adapter_image_embeds: list[torch.Tensor] | None = None):
        """Generate ``video_length`` frames per video. Argument names and defaults follow diffusers'
        ``TextToVideoZeroPipeline`` (``t0=44``, ``t1=47``: steps counted from the end of the schedule, need
        ``num_inference_steps > t1``; ``frame_ids``: the frames' indices when a long video is made chunk by
        chunk, each chunk starting with frame 0; ``latents``: the first frame's noise ``b 4 h w``).

        ``prompt`` / ``negative_prompt`` may be ``{frame: prompt}`` dicts (prompt travel, :meth:`schedule_prompts`;
        ``callback_on_step_end`` then sees frame 0's embeddings).

        ``ip_adapter_image`` / ``ip_adapter_image_embeds`` (after ``load_ip_adapter``; an addition): an image prompt
        every frame attends to in each cross-attention, in all three phases, as in the AnimateDiff pipelines.

        Differences from diffusers: ``prompt_embeds`` / ``negative_prompt_embeds`` and ``clip_skip`` are accepted
        (diffusers #3540); ``num_videos_per_prompt`` and lists of prompts make several videos (diffusers asserts
        one); ``guidance_scale <= 1`` runs without guidance (diffusers fails there); ``output_type`` is "np" (default; diffusers' "tensor" is accepted as its alias), "pt", "pil" or
        "latent" and ``.frames`` is ``b f h w 3`` (``.images`` gives diffusers' ``f h w 3``); the step index
        passed to ``callback`` / ``callback_on_step_end`` runs over all three phases (diffusers restarts it in
        each); ``callback_on_step_end(pipe, step, t, tensors)`` may replace ``latents`` (``n 4 h w``, the
        phase's batch), ``prompt_embeds`` / ``negative_prompt_embeds`` (one row per video).
        """
        check_call(self, locals())
        if output_type == "tensor":
            output_type = "np"
        travel = None
        if isinstance(prompt, dict) or isinstance(negative_prompt, dict):  # prompt travel: one prompt per frame
            travel = self.schedule_prompts(prompt, negative_prompt, video_length, num_videos_per_prompt,
                                           guidance_scale > 1.0, clip_skip, prompt_embeds, negative_prompt_embeds)
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds = None, None, *travel[0]
        frame_ids = list(range(video_length)) if frame_ids is None else list(frame_ids)
        height, width = self.default_size(height, width, 64)
        self.check_inputs(prompt, height, width, video_length, prompt_embeds, negative_prompt_embeds, output_type,
                          num_videos_per_prompt, callback_steps)
        self.check_zero_inputs(video_length, frame_ids, t0, t1, num_inference_steps)
        check_negative_inputs(negative_prompt, negative_prompt_embeds)
        check_callback_inputs(callback_on_step_end_tensor_inputs, CALLBACK_TENSOR_INPUTS)
        check_ip_adapter_inputs(ip_adapter_image, ip_adapter_image_embeds)

        device = self.device
        guidance = guidance_scale > 1.0
        cond, uncond = self.encode_prompt(prompt, device, num_videos_per_prompt, guidance, negative_prompt,
                                          prompt_embeds, negative_prompt_embeds, clip_skip)
        image_embeds = None
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:  # one row per video (and half)
            image_embeds = self.prepare_ip_adapter_image_embeds(ip_adapter_image, ip_adapter_image_embeds, device,
                                                                cond.shape[0], guidance)
        frames = video_length

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        first, second, last = timesteps[:-t1 - 1], timesteps[-t1 - 1:-t0 - 1], timesteps[-t1 - 1:]
        step_end = StepEnd(self, callback_on_step_end, callback_on_step_end_tensor_inputs,
                           {"prompt_embeds": cond, "negative_prompt_embeds": uncond}, callback, callback_steps)

        def embeds(per_frame: bool) -> torch.Tensor:
            c, u = step_end.tensors["prompt_embeds"], step_end.tensors["negative_prompt_embeds"]
            if per_frame and travel is not None:  # the schedule's rows (frame 0's are the step_end's)
                c, u = travel[1]
            elif per_frame:  # one row per frame, frames of a video consecutive
                c = c.repeat_interleave(frames, dim=0)
                u = u.repeat_interleave(frames, dim=0) if guidance else None
            return torch.cat([u, c]) if guidance else c

        s = self.vae_scale_factor
        batch = cond.shape[0]
        shape = (batch, self.unet.config.in_channels, height // s, width // s)
        x = self.prepare_latents(shape, cond.dtype, device, generator, latents)  # b c h w

        unet = self._run_on_device("unet")
        one_frame = self.predict_fn(unet, self.scheduler, lambda: embeds(False), guidance_scale, image_embeds)
        step = scheduler_step(self.scheduler, eta=eta, generator=generator)
        # one bar over the three phases; the step index runs over all of them
        with self.progress_bar(total=len(first) + len(second) + len(last)) as progress, \
                cross_frame_attention(unet, None):
            # 1. the first frame, alone: noise -> T1 -> T0
            x_t1 = denoise(x, first, one_frame, step, step_end, progress)
            saved = copy.deepcopy(self.scheduler)  # multistep samplers resume from T1 in phase 3
            x_t0 = denoise(x_t1, second, one_frame, step, step_end, progress)
            # 2. the other frames: copies of the T0 latent, translated, noised back to T1
            if step_end.interrupted:  # stopped by a callback: every frame is the first frame so far
                video = x_t0[:, None].expand(-1, frames, -1, -1, -1)
            elif frames > 1:
                copies = x_t0[:, None].expand(-1, frames - 1, -1, -1, -1)  # b (f-1) c h w
                warped = torch.stack([warp_latents(v, frame_ids[1:], motion_field_strength_x,
                                                   motion_field_strength_y) for v in copies])
                others = self.forward_jump(warped, int(timesteps[-t0 - 1]), int(timesteps[-t1 - 1]), generator)
                video = torch.cat([x_t1[:, None], others], dim=1)  # b f c h w
            else:
                video = x_t1[:, None]
            # 3. all frames from T1 with cross-frame attention, on the saved scheduler with per-frame history
            phase3 = _history_per_frame(saved, tuple(x_t1.shape), frames)
            every_frame = self.predict_fn(unet, phase3, lambda: embeds(True), guidance_scale, image_embeds)
            with cross_frame_attention(unet, frames):
                out = denoise(video.flatten(0, 1), last, every_frame,
                              scheduler_step(phase3, eta=eta, generator=generator), step_end, progress)

        latents = out.reshape(batch, frames, *out.shape[1:]).permute(0, 2, 1, 3, 4)  # b c f h w
        return self.finish(latents, output_type, return_dict, decode_chunk_size, TextToVideoZeroOutput)


__all__ = ["TextToVideoZeroPipeline", "TextToVideoZeroOutput", "SD_LOADERS", "load_sd_scheduler", "sd_scheduler", "OUTPUT_TYPES"]
