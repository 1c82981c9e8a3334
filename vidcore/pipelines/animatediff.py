"""AnimateDiff text-to-video: a Stable Diffusion 1.5 model animated by a motion adapter (diffusers'
``AnimateDiffPipeline``).

Noise ``b 4 f h w`` -> :class:`~vidcore.models.motion.UNetMotion` (the SD UNet on every frame, the adapter's
motion modules across frames) with classifier-free guidance -> per-frame VAE decode. Random draws happen in
the same order and shapes as diffusers, so a seed gives the same video.

Long videos (sliding context windows)
-------------------------------------
A motion adapter has a frame-position table of ``motion_max_seq_length`` entries (24 or 32) and was trained on
16-frame clips; diffusers' plain pipeline fails beyond that length. Here, when ``num_frames`` exceeds
``context_length`` (default: the adapter's ``motion_max_seq_length``), every denoising step runs the UNet on
overlapping windows of ``context_length`` frames whose starts are ``context_stride`` frames apart (the last
window is aligned with the video's end, so every frame is covered), and each frame's noise prediction is the
weighted mean of the predictions of the windows that contain it. ``context_weighting="pyramid"`` (default)
weights a window's frames by their distance from its edges, so a window's ends (where it saw the least
context) count least and predictions fade from one window into the next; ``"flat"`` is the plain mean. The
scheduler then steps the whole video at once, so all windows share one noise trajectory. With a single
window (``num_frames <= context_length``) the result is exactly the plain pipeline's. This is the
"uniform context" scheme of the original AnimateDiff community tools.

FreeNoise (``pipe.enable_free_noise()``, :mod:`vidcore.sampling.free_noise`) is the other way, diffusers': the
whole UNet sees every frame, only the motion modules' attention runs on windows, and the initial noise is
rescheduled; with it on, ``prompt`` / ``negative_prompt`` may be ``{frame_index: prompt}`` schedules (prompt
travel). It matches diffusers' ``enable_free_noise`` seed for seed and excludes ``context_length=`` here.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .control_residuals import no_controlnet_error
from ..errors import ConfigError, ModelNotFoundError
from ..models.motion import MotionAdapter, UNetMotion
from ..models.unet2d import UNet2D
from ..parallel.pipeline import ParallelPipelineMixin
from ..sampling import FreeInitMixin, FreeNoiseMixin
from ..sampling.combinations import check_combination
from ..sampling.guidance import guidance_batch, guided
from ..sampling.loop import StepEnd, check_callback_inputs, scheduler_step
from ..sampling.windows import blend_windows, check_parallel_windows, plan_windows
from ..loading.loaders import (load_module_argument, load_motion_adapter, load_text_encoder,  # noqa: F401
                               load_tokenizer, load_unet, load_vidcore_model)
from ..loading.models import load_unet_motion  # noqa: F401  (its home before vidcore.loading)
from ..loading.originals import load_sd_single_file
from ..loading.pipeline import SingleFile
from .base import check_negative_inputs
from .checks import check_call
from .ip_adapter import IPAdapterMixin, check_ip_adapter_inputs
from .features import require
from .lora import LoRAMixin, takes_cross_attention_kwargs
from .sd_video import SDVideoPipeline


# What AnimateDiff's documentation passes to DDIMScheduler.from_pretrained(sd_model, subfolder="scheduler", ...)
# (the motion modules were trained with linear betas).
ANIMATEDIFF_SCHEDULER_OVERRIDES = {"clip_sample": False, "timestep_spacing": "linspace", "beta_schedule": "linear",
                                   "steps_offset": 1}
CALLBACK_TENSOR_INPUTS = ("latents", "prompt_embeds", "negative_prompt_embeds")
# from_single_file: the SD1.5 repo that gives the configs, tokenizer and scheduler (runwayml's, now hosted here)
DEFAULT_SD15_CONFIG = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# what from_single_file fetches from config_from on the hub: configs, tokenizer and scheduler, no weights
SINGLE_FILE_CONFIG_PATTERNS = ["model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                               "tokenizer/*.json", "tokenizer/*.txt", "scheduler/*.json"]


# ----------------------------------------------------------------------------- loading helpers


def stored_scheduler(config_file: Path):
    """The scheduler of a pipeline's ``scheduler_config.json`` (PNDM for SD1.5 repos, as diffusers); one vidcore
    does not implement (e.g. LMS) is replaced by DDIM with AnimateDiff's recommended settings, with a log message."""
    from ..schedulers import stored_or_fallback

    settings = ", ".join(f"{k}={v!r}" for k, v in ANIMATEDIFF_SCHEDULER_OVERRIDES.items())
    return stored_or_fallback(config_file, animatediff_scheduler, f" with AnimateDiff's recommended settings ({settings})")


def animatediff_scheduler(config, kind: str | None = None, **overrides):
    """A scheduler for AnimateDiff from a diffusers scheduler config (dict or path): ``kind`` (a class name
    such as "DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler", or its short form;
    default DDIM) with the settings AnimateDiff's docs recommend (linear betas, linspace spacing,
    steps_offset 1, no sample clipping), where the class has them; ``overrides`` win."""
    from ..schedulers import read_config, scheduler_class

    cls = scheduler_class(kind or "DDIMScheduler")
    names = set(cls.config_class.field_names())
    options = {k: v for k, v in ANIMATEDIFF_SCHEDULER_OVERRIDES.items() if k in names}
    return cls.from_config(read_config(config), **{**options, **overrides})


def load_stored_scheduler(folder: Path, torch_dtype=None, variant=None):
    """Folder loader (:mod:`vidcore.loading.loaders`) of :func:`stored_scheduler`."""
    return stored_scheduler(Path(folder) / "scheduler_config.json")


@dataclass(frozen=True)
class FrameInputs:
    """What every UNet pass of one AnimateDiff call reads besides latents, timestep and text, handed down as an
    argument (never stored on the pipeline): the per-frame ``motion_scale`` (None: all 1) and a subclass's
    ``control`` (the ControlNet / SparseCtrl conditions of the call)."""

    motion_scale: torch.Tensor | None = None
    control: Any = None

    def motion_kwargs(self, start: int, end: int) -> dict:
        """UNetMotion's ``motion_scale`` for frames ``start:end`` ({} when it is 1)."""
        return {} if self.motion_scale is None else {"motion_scale": self.motion_scale[start:end]}


# ----------------------------------------------------------------------------- pipeline


class AnimateDiffBase(IPAdapterMixin, LoRAMixin, FreeInitMixin, SDVideoPipeline):
    """What the AnimateDiff pipelines share (text-, video-, ControlNet-, SparseCtrl-to-video and SDXL): loading,
    the motion-module UNet, the windowed guided prediction and the call body :meth:`animate`. Each leaf composes
    the further sampling features it has.

    Stable Diffusion 1.5 + motion adapter -> video.

    ``unet`` is a :class:`~vidcore.models.motion.UNetMotion` (pass a ``UNet2D`` plus ``motion_adapter`` and it
    is built; the 2D weights are shared, not copied); ``motion_adapter`` is ``unet.adapter``. Motion LoRAs:
    ``load_lora_weights`` / ``set_adapters`` / ``fuse_lora`` / ``unfuse_lora`` (:mod:`vidcore.pipelines.lora`).
    Image prompts: ``load_ip_adapter`` / ``set_ip_adapter_scale`` / ``unload_ip_adapter`` and ``ip_adapter_image`` /
    ``ip_adapter_image_embeds`` (:mod:`vidcore.pipelines.ip_adapter`); ``image_encoder`` / ``feature_extractor`` are
    optional.
    """

    callback_tensor_inputs = CALLBACK_TENSOR_INPUTS
    component_names = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")
    example_adapter = "guoyww/animatediff-motion-adapter-v1-5-2"
    example_controlnet: str | None = None  # the leaves with a controlnet component name one in their errors
    sdxl = False  # whether the pipeline conditions on SDXL's pooled text and time ids

    def __init__(self, tokenizer, text_encoder, unet, vae, scheduler, motion_adapter: MotionAdapter | None = None,
                 image_encoder=None, feature_extractor=None,
                 **extra):  # extra: the components a subclass adds (ControlNet: controlnet; SDXL: tokenizer_2, text_encoder_2)
        if isinstance(unet, UNet2D):
            if motion_adapter is None:
                raise TypeError("AnimateDiffPipeline: a UNet2D needs motion_adapter= (a vidcore MotionAdapter)")
            unet = UNetMotion(unet, motion_adapter)
        elif isinstance(unet, UNetMotion):
            if motion_adapter is not None and motion_adapter is not unet.adapter:
                unet = UNetMotion(unet.unet, motion_adapter)
        else:
            raise TypeError(f"AnimateDiffPipeline: unet must be a vidcore UNet2D or UNetMotion, got {type(unet).__name__}")
        if unet.unet.add_embedding is not None and not self.sdxl:
            raise ConfigError(f"{type(self).__name__}: this UNet is a Stable Diffusion XL UNet (addition_embed_type="
                              "'text_time'); use AnimateDiffSDXLPipeline with an SDXL motion adapter")
        super().__init__(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, vae=vae, scheduler=scheduler,
                         **extra)
        self.image_encoder, self.feature_extractor = image_encoder, feature_extractor

    @property
    def motion_adapter(self) -> MotionAdapter:
        return self.unet.adapter

    # -- loading (vidcore.loading.pipeline does it from these declarations) ---------------------------
    loaders = {"tokenizer": load_tokenizer, "text_encoder": load_text_encoder, "vae": load_vidcore_model,
               "unet": load_unet, "motion_adapter": load_motion_adapter, "scheduler": load_stored_scheduler}
    arguments = {"motion_adapter": load_motion_adapter}
    accepts = ("image_encoder", "feature_extractor")  # IP-Adapter's (load_ip_adapter brings them)
    # an original Stable Diffusion 1.x file (CompVis LDM layout, as civitai fine-tunes ship) holds the UNet, the VAE
    # and the text encoder; config_from gives their configs, the tokenizer and the scheduler
    single_file = SingleFile(load_sd_single_file, ("unet", "vae", "text_encoder"), tuple(SINGLE_FILE_CONFIG_PATTERNS),
                             "a Stable Diffusion 1.x pipeline folder or hub repo", DEFAULT_SD15_CONFIG)

    @classmethod
    def needs(cls, name: str, modules) -> bool:
        """The motion adapter only for a plain UNet (a saved AnimateDiff pipeline's UNetMotion has its own)."""
        return name != "motion_adapter" or not isinstance(modules.get("unet"), UNetMotion)

    @classmethod
    def missing_component(cls, name: str, where: str, single_file: bool) -> Exception:
        if name == "motion_adapter":
            what = (f"{cls.__name__}.from_single_file: an image model's single file has no motion modules" if single_file
                    else f"{where} is an image model without motion modules")
            return ModelNotFoundError(f"{what}; pass motion_adapter= (CLI: --motion-adapter), e.g. {cls.example_adapter}")
        if name == "controlnet":
            return no_controlnet_error(where, cls.example_controlnet)
        return super().missing_component(name, where, single_file)

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, motion_adapter=None,
                        torch_dtype: torch.dtype | str | None = None, variant: str | None = None,
                        revision: str | None = None, token: str | None = None, **components):
        """Load from a Stable Diffusion pipeline folder or hub repo (``runwayml/stable-diffusion-v1-5``,
        ``emilianJR/epiCRealism``) plus ``motion_adapter`` (a MotionAdapter, or a folder / hub repo id /
        file ``vidcore.load_model`` reads, e.g. ``guoyww/animatediff-motion-adapter-v1-5-2``), or from a saved
        AnimateDiff pipeline folder (``unet/`` a diffusers UNetMotionModel; its motion modules are used unless
        ``motion_adapter`` is given).

        ``scheduler=`` (and any other component) replaces the stored one, which is used as diffusers does (PNDM
        for SD1.5 repos). AnimateDiff's docs recommend DDIM with linear betas:
        ``scheduler=animatediff_scheduler(folder + "/scheduler")`` (:func:`animatediff_scheduler`). A stored
        scheduler vidcore does not implement is replaced by that DDIM, with a log message.
        """
        return super().from_pretrained(path_or_repo, torch_dtype, variant, revision, token,
                                       motion_adapter=motion_adapter, **components)

    @classmethod
    def from_single_file(cls, path: str | os.PathLike, motion_adapter=None, config_from: str | os.PathLike | None = None,
                         torch_dtype: torch.dtype | str | None = None, variant: str | None = None,
                         revision: str | None = None, token: str | None = None, **components):
        """Load the UNet, VAE and text encoder(s) from an original single file (``.safetensors`` or ``.ckpt``), plus
        ``motion_adapter`` (as in :meth:`from_pretrained`; required).

        ``config_from`` is a pipeline folder or hub repo id (default: ``single_file.default_config_from``,
        ``stable-diffusion-v1-5/stable-diffusion-v1-5`` here): it gives the configs, the tokenizer(s) and the
        scheduler; from the hub only those small files are downloaded (``single_file.config_patterns``), never the
        repo's weights. The scheduler is chosen as in :meth:`from_pretrained`; components passed as keyword arguments
        replace the loaded ones (a component given that way is not read from the file). ``variant`` applies to the
        motion adapter's weights.

        >>> pipe = AnimateDiffPipeline.from_single_file(
        ...     "realisticVisionV60B1_v51VAE.safetensors", motion_adapter="guoyww/animatediff-motion-adapter-v1-5-2",
        ...     config_from="stable-diffusion-v1-5/stable-diffusion-v1-5", torch_dtype=torch.float16)
        """
        return super().from_single_file(path, config_from, torch_dtype, variant, revision, token,
                                        motion_adapter=motion_adapter, **components)

    # -- checks ---------------------------------------------------------------------------------
    def check_context(self, num_frames: int, context_length: int | None, context_stride: int | None,
                      context_weighting: str) -> list[tuple[int, int]]:
        """The frame windows for these settings (:func:`vidcore.sampling.windows.plan_windows`; the default
        window is the adapter's position table), or a ValueError naming the bad argument."""
        return plan_windows(num_frames, context_length, context_stride, context_weighting,
                            max_length=self.motion_adapter.max_frames,
                            limit_name="the motion adapter's motion_max_seq_length")

    def check_features(self, free_noise: bool, context_windows: bool, image_prompt: bool, prompt_schedule: bool):
        """The call's features together (:mod:`vidcore.sampling.combinations`), a prompt schedule only where the
        pipeline has prompt travel."""
        frame_parallel = self.parallel is not None and self.parallel.config.frame_size > 1
        check_combination(self, free_noise=free_noise, frame_parallel=frame_parallel, context_windows=context_windows,
                          ip_adapter=image_prompt, parallel=self.parallel is not None, prompt_travel=prompt_schedule)
        if prompt_schedule:
            require(self, "prompt_travel")

    def check_motion_scale(self, motion_scale, num_frames: int, device) -> torch.Tensor | None:
        """``motion_scale`` as one float32 value per frame, or None where it changes nothing (all 1)."""
        many = isinstance(motion_scale, (list, tuple, torch.Tensor))
        items = motion_scale.flatten().tolist() if isinstance(motion_scale, torch.Tensor) else motion_scale
        try:
            values = [float(v) for v in items] if many else [float(motion_scale)] * num_frames
        except (TypeError, ValueError):
            raise ValueError(f"motion_scale must be a number or a list of one number per frame, got "
                             f"{motion_scale!r}") from None
        if len(values) != num_frames:
            raise ValueError(f"motion_scale must be a number or a list of one number per frame "
                             f"(num_frames={num_frames}), got {len(values)} values")
        if not all(torch.isfinite(torch.tensor(values))):
            raise ValueError(f"motion_scale values must be finite numbers, got {motion_scale!r}")
        return None if all(v == 1.0 for v in values) else torch.tensor(values, device=device)

    # -- pieces ---------------------------------------------------------------------------------
    def control_residuals(self, latents, t, embeds, start: int, end: int, inputs: FrameInputs,
                          step: tuple[int, int]) -> dict:
        """The UNet's extra inputs for ``latents`` (b c f h w), frames ``start:end`` of the video (a context window
        or all of it), at step ``step`` = (index, count): computed once on the whole guidance batch (``embeds``
        negatives first) and split with it, batch first (the ControlNet pipelines' residuals); none here."""
        return {}

    def predict_noise(self, unet, latents, t, embeds, guidance_scale: float | None, windows, weighting: str,
                      inputs: FrameInputs = FrameInputs(), step: tuple[int, int] = (0, 1),
                      extra: dict | None = None) -> torch.Tensor:
        """Guided noise prediction for ``latents`` (b c f h w), window by window when there are several
        (:func:`vidcore.sampling.windows.blend_windows`); ``guidance_scale=None``: the unguided ``[uncond; cond]``
        prediction, for a caller that combines the branches itself (SDXL's guidance rescale). ``extra``: further
        UNet inputs batched as ``embeds`` (IP-Adapter ``image_embeds``, SDXL's ``added_cond_kwargs``).
        The guidance branches run as :meth:`guidance_batches` says."""
        extra = extra or {}
        guidance = guidance_scale is None or guidance_scale > 1.0

        def window_noise(start: int, end: int) -> torch.Tensor:
            window = latents[:, :, start:end]
            motion = inputs.motion_kwargs(start, end)  # the frames' motion scale

            def model(model_in, embeds, **extra):  # extra: IP-Adapter embeddings, ControlNet residuals
                return unet(self.scheduler.scale_model_input(model_in, t), t, embeds, **extra, **motion)

            if self.parallel is not None:  # CFG halves / frame slices (b c f h w) of this window on the ranks
                model = self.parallel.wrap(model, guidance, frame_dim=2)
            conditions = dict(embeds=embeds, **extra, **self.control_residuals(window, t, embeds, start, end, inputs,
                                                                                 step))
            if guidance_scale is None:
                return guidance_batch(model, window, 2, self.guidance_batches(), **conditions)
            return guided(model, window, guidance_scale, self.guidance_batches(), **conditions)

        return blend_windows(window_noise, latents.shape[2], windows, weighting)

    # -- call -------------------------------------------------------------------------------------
    def animate_with(self, arguments: dict, **extra):
        """:meth:`animate` given a leaf's ``__call__`` arguments as ``locals()`` (the ones animate requires are
        taken by name) and its own additions as ``extra`` (``control``, ``schedule``, ``initial``)."""
        required = [name for name, p in inspect.signature(self.animate).parameters.items()
                    if p.default is inspect.Parameter.empty]
        return self.animate(**{name: arguments[name] for name in required}, **extra)

    def animate(self, *, prompt, num_frames, height, width, num_inference_steps, guidance_scale, negative_prompt,
                num_videos_per_prompt, eta, generator, latents, prompt_embeds, negative_prompt_embeds, output_type,
                return_dict, clip_skip, callback_on_step_end, callback_on_step_end_tensor_inputs, decode_chunk_size,
                context_length, context_stride, context_weighting, ip_adapter_image, ip_adapter_image_embeds,
                motion_scale, control=None, schedule: Callable[[int], torch.Tensor] | None = None,
                initial: Callable | None = None):
        """The body of every AnimateDiff call (text-, video- and ControlNet-to-video), arguments as
        :meth:`__call__`. Per-call additions travel as arguments: ``control`` reaches :meth:`control_residuals` in
        :class:`FrameInputs`; ``schedule(steps) -> timesteps`` replaces the whole schedule (video-to-video: the
        strength's part; FreeInit's rounds use it too); ``initial(shape, dtype, device, generator, latents)``
        gives the starting latents instead of noise (video-to-video: the encoded video, noised)."""
        # checks
        height, width = self.default_size(height, width, 64)
        self.check_inputs(prompt, height, width, num_frames, prompt_embeds, negative_prompt_embeds, output_type,
                          num_videos_per_prompt, None)
        check_negative_inputs(negative_prompt, negative_prompt_embeds)
        check_callback_inputs(callback_on_step_end_tensor_inputs, CALLBACK_TENSOR_INPUTS)
        check_ip_adapter_inputs(ip_adapter_image, ip_adapter_image_embeds)
        free_noise = getattr(self, "free_noise", None)  # FreeNoise windows the motion modules, the UNet sees all
        image_prompt = ip_adapter_image is not None or ip_adapter_image_embeds is not None
        schedule_given = isinstance(prompt, dict) or isinstance(negative_prompt, dict)
        self.check_features(free_noise is not None, context_length is not None or context_stride is not None,
                            image_prompt, schedule_given)
        windows = ([(0, num_frames)] if free_noise is not None
                   else self.check_context(num_frames, context_length, context_stride, context_weighting))
        scale = self.check_motion_scale(motion_scale, num_frames, self.device)

        # conditions
        device = self.device
        guidance = guidance_scale > 1.0
        # a {frame: prompt} schedule gives per-frame embeddings (b f) m d, plain text one row per video
        travel = None
        if schedule_given:
            travel = self.free_noise_prompts(prompt, negative_prompt, num_frames, device, num_videos_per_prompt,
                                             guidance, prompt_embeds, negative_prompt_embeds, clip_skip)
        cond, uncond = travel or self.encode_prompt(prompt, device, num_videos_per_prompt, guidance, negative_prompt,
                                                    prompt_embeds, negative_prompt_embeds, clip_skip)
        batch = num_videos_per_prompt if travel else cond.shape[0]
        image_inputs = {}  # IP-Adapter: one per adapter, negatives first under guidance (as the prompt embeddings)
        if image_prompt:
            image_inputs["image_embeds"] = self.prepare_ip_adapter_image_embeds(
                ip_adapter_image, ip_adapter_image_embeds, device, batch, guidance)

        # noise
        schedule = schedule or self.schedule
        timesteps = schedule(num_inference_steps)
        s = self.vae_scale_factor
        shape = (batch, self.unet.unet.config.in_channels, num_frames, height // s, width // s)
        if initial is None:
            if free_noise is not None:  # drawn as the plain path draws it, then rescheduled
                latents = self.free_noise_latents(shape, cond.dtype, device, generator, latents)
            latents = self.prepare_latents(shape, cond.dtype, device, generator, latents)
        else:
            latents = initial(shape, cond.dtype, device, generator, latents)

        # loop
        unet = self._run_on_device("unet")
        if self.parallel is not None:
            check_parallel_windows(windows, self.parallel.config.frame_size)
            self.parallel.check(num_frames)
            latents = self.parallel.broadcast(latents)
        step_end = StepEnd(self, callback_on_step_end, callback_on_step_end_tensor_inputs,
                           {"prompt_embeds": cond, "negative_prompt_embeds": uncond})

        inputs = FrameInputs(scale, control)
        # diffusers steps the b c f h w latents as they are: the eta noise is drawn in that shape
        step = scheduler_step(self.scheduler, eta=eta, generator=generator)

        def denoise(latents, timesteps):  # one run (FreeInit: one per round)
            def predict(latents, t, i):
                cond, uncond = step_end.tensors["prompt_embeds"], step_end.tensors["negative_prompt_embeds"]
                embeds = torch.cat([uncond, cond]) if guidance else cond  # b m d; the UNet repeats it per frame
                return self.predict_noise(unet, latents, t, embeds, guidance_scale, windows, context_weighting, inputs,
                                          (i, len(timesteps)), image_inputs)

            return self.sample(latents, timesteps, predict, step, step_end)

        latents = self.free_init_denoise(latents, num_inference_steps, schedule, denoise, generator,
                                         timesteps=timesteps, stop=lambda: step_end.interrupted)
        # decode
        return self.finish(latents, output_type, return_dict, decode_chunk_size)


class AnimateDiffPipeline(ParallelPipelineMixin, FreeNoiseMixin, AnimateDiffBase):
    """Stable Diffusion 1.5 + motion adapter -> video (diffusers' ``AnimateDiffPipeline``); see
    :class:`AnimateDiffBase` for components and loading. Adds FreeNoise and parallel sampling."""

    @torch.no_grad()
    @takes_cross_attention_kwargs
    def __call__(self, prompt: str | list[str] | None = None, num_frames: int = 16, height: int | None = None,
                 width: int | None = None, num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 negative_prompt: str | list[str] | None = None, num_videos_per_prompt: int = 1, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True, clip_skip: int | None = None,
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: tuple[str, ...] | list[str] = ("latents",),
                 decode_chunk_size: int | None = 16, context_length: int | None = None, context_stride: int | None = None,
                 context_weighting: str = "pyramid", ip_adapter_image=None,
                 ip_adapter_image_embeds: list[torch.Tensor] | None = None, motion_scale: float | list[float] = 1.0,
                 cross_attention_kwargs: dict | None = None):
        """Generate videos from text. Argument names and defaults follow diffusers' AnimateDiffPipeline.

        Differences: ``num_videos_per_prompt`` works (diffusers resets it to 1); ``num_frames`` may exceed the
        adapter's ``motion_max_seq_length`` (sliding context windows: ``context_length`` frames per window,
        default ``motion_max_seq_length``; window starts ``context_stride`` apart, default
        ``context_length // 4``; ``context_weighting`` "pyramid" | "flat", see the module docstring);
        ``callback_on_step_end`` receives ``prompt_embeds`` / ``negative_prompt_embeds`` as one row per video
        (diffusers hands over the guidance batch repeated per frame) and may return replacements of the same
        shape. FreeInit: ``enable_free_init`` (:mod:`vidcore.sampling.free_init`, equal to diffusers). IP-Adapter:
        ``ip_adapter_image`` (one image per loaded adapter) or ``ip_adapter_image_embeds`` after ``load_ip_adapter``
        (:mod:`vidcore.pipelines.ip_adapter`, equal to diffusers; not with ``enable_parallel``). FreeNoise:
        ``enable_free_noise`` (:mod:`vidcore.sampling.free_noise`, equal to diffusers); with it on, ``prompt`` /
        ``negative_prompt`` may be ``{frame_index: prompt}`` dicts (prompt travel; the embeddings handed to the
        callback are then per frame, ``(b f) m d``; not with an image prompt yet). ``motion_scale`` (an addition, as
        AnimateDiff-Evolved's): a number or one number per frame that multiplies the motion modules' residuals; 1 is
        the plain model, 0 the SD model on each frame alone, above 1 more motion. ``cross_attention_kwargs``: only
        ``{"scale": s}``, the LoRA scale of the loaded, unfused LoRAs for this call (:mod:`vidcore.pipelines.lora`).

        Few-step sampling (AnimateLCM): an :class:`~vidcore.schedulers.LCMScheduler` or
        :class:`~vidcore.schedulers.TCDScheduler` as ``pipe.scheduler``, 4-8 steps, ``guidance_scale`` 1-2 (TCD's
        gamma is ``eta``). As in diffusers' AnimateDiffPipeline, ``guidance_scale > 1`` runs classifier-free
        guidance and no ``timestep_cond`` reaches the UNet, even one with ``time_cond_proj_dim`` (an
        LCM-distilled base model); its guidance embedding stays unused.
        """
        check_call(self, locals())
        return self.animate_with(locals())
