"""AnimateDiff on Stable Diffusion XL (diffusers' ``AnimateDiffSDXLPipeline``).

The SD1.5 AnimateDiff pipeline (:mod:`vidcore.pipelines.animatediff`) with SDXL's conditioning:

* two CLIP text encoders: the prompt goes through both (``prompt_2`` to the second, default ``prompt``); their
  penultimate hidden states are concatenated along the feature axis (768 + 1280 = 2048 for SDXL), and the
  second encoder's projected pooled output becomes ``text_embeds``;
* six micro-conditioning numbers per video, ``original_size + crops_coords_top_left + target_size``
  (``time_ids``), which the UNet embeds together with the pooled text (``addition_embed_type="text_time"``);
* ``force_zeros_for_empty_prompt`` (model_index.json, True for SDXL): without a negative prompt, the
  unconditional embeddings are zeros instead of the encoding of "".

Noise ``b 4 f h w`` -> :class:`~vidcore.models.motion.UNetMotion` (the SDXL UNet on every frame, an SDXL motion
adapter such as ``guoyww/animatediff-motion-adapter-sdxl-beta`` across frames) with classifier-free guidance
(and optional ``guidance_rescale``) -> VAE decode. Random draws follow diffusers' order, so a seed gives the
same video. Sliding context windows for long videos and FreeInit work as in the SD1.5 pipeline.

Differences from diffusers (0.42.1):

* diffusers' ``UNetMotionModel.from_unet2d`` does not copy the SDXL UNet's ``add_embedding`` weights, so its
  pipeline built from an SDXL base model runs the micro-conditioning MLP with random weights. vidcore uses the
  base model's weights (the parity tests copy them into diffusers' model to compare).
* ``num_videos_per_prompt`` works (diffusers resets it to 1), and with several videos the negative and positive
  time ids stay with their own halves of the guidance batch (diffusers interleaves them; the same result
  whenever the negative sizes equal the positive ones, the default).
* ``callback_on_step_end`` gets one row per video for the embeddings and time ids (as vidcore's AnimateDiff).
* IP-Adapter: ``load_ip_adapter`` with an SDXL file of ``h94/IP-Adapter`` (``sdxl_models/ip-adapter_sdxl.safetensors``
  with the ViT-bigG encoder of ``sdxl_models/image_encoder``, or ``ip-adapter-plus_sdxl_vit-h.safetensors`` with the
  ViT-H encoder of ``models/image_encoder``: ``image_encoder_folder="models/image_encoder"``), then
  ``ip_adapter_image`` / ``ip_adapter_image_embeds`` as in the SD1.5 pipeline; equal to diffusers.
* ``cross_attention_kwargs``: only ``{"scale": s}`` (the LoRA scale, :mod:`vidcore.pipelines.lora`).
* Not supported: ``timesteps=`` / ``sigmas=`` (diffusers has them); FreeNoise
  (diffusers' SDXL pipeline has none either) and ``motion_scale``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import torch

from .. import hub
from ..errors import ConfigError
from ..models.motion import MotionAdapter
from ..sampling.loop import StepEnd, check_callback_inputs, scheduler_step
from .animatediff import AnimateDiffBase
from ..loading.loaders import load_text_encoder_2, load_tokenizer
from ..loading.originals import (DEFAULT_SDXL_CONFIG, SDXL_CONFIG_PATTERNS,  # noqa: F401  (re-exported)
                                 SDXL_SINGLE_FILE_COMPONENTS, load_sdxl_single_file)
from ..loading.pipeline import SingleFile
from .base import check_negative_inputs
from .checks import check_call
from .ip_adapter import check_ip_adapter_inputs
from .lora import takes_cross_attention_kwargs
from .text import as_prompt_list, expand_multi_vector_tokens

log = logging.getLogger(__name__)

CALLBACK_TENSOR_INPUTS = ("latents", "prompt_embeds", "negative_prompt_embeds", "add_text_embeds",
                          "negative_pooled_prompt_embeds", "add_time_ids", "negative_add_time_ids")
SDXL_ADAPTER = "guoyww/animatediff-motion-adapter-sdxl-beta"


SDXL_PIPELINES = ("StableDiffusionXLPipeline", "AnimateDiffSDXLPipeline")


def is_sdxl_model(model: str | os.PathLike, revision: str | None = None, token: str | None = None) -> bool:
    """Whether ``model`` (a pipeline folder or hub repo id, or an original single file) is a Stable Diffusion XL
    model: ``model_index.json`` names an SDXL pipeline or lists ``text_encoder_2``, or ``unet/config.json`` has
    ``addition_embed_type="text_time"``; a single file holds SDXL's ``conditioner.embedders.*`` text encoders
    (``.safetensors``: read from the header only; a pickled ``.ckpt`` is not opened, False). Only those small
    files are fetched from the hub."""
    name = os.fspath(model)
    if name.endswith((".safetensors", ".ckpt")):
        if not name.endswith(".safetensors") or not Path(name).is_file():
            return False
        from safetensors import safe_open

        with safe_open(name, framework="pt") as f:
            return any(k.startswith("conditioner.embedders.") for k in f.keys())
    root = hub.resolve(model, allow_patterns=["model_index.json", "unet/config.json"], revision=revision, token=token)
    if (root / "model_index.json").is_file():
        index = hub.load_config(root, "model_index.json")
        if index.get("_class_name") in SDXL_PIPELINES or isinstance(index.get("text_encoder_2"), list):
            return True
    if (root / "unet" / "config.json").is_file():
        return hub.load_config(root / "unet").get("addition_embed_type") == "text_time"
    return False


@torch.no_grad()
def sdxl_text_embed(tokenizer, text_encoder, prompts: list[str], device, max_length: int,
                    clip_skip: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states n L d, pooled n d or None) of one SDXL text encoder: the hidden states ``clip_skip + 2``
    from the end (penultimate layer by default, no final norm); ``pooled`` is the encoder's first output when
    it is 2-D (the projected text embedding of a ``CLIPTextModelWithProjection``)."""
    prompts = [expand_multi_vector_tokens(p, tokenizer) for p in prompts]
    ids = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                    return_tensors="pt").input_ids
    longest = tokenizer(prompts, padding="longest", return_tensors="pt").input_ids
    if longest.shape[-1] > ids.shape[-1]:
        log.warning("CLIP takes at most %d tokens; this part of the prompt was cut: %s", max_length,
                    tokenizer.batch_decode(longest[:, max_length - 1:-1]))
    out = text_encoder(ids.to(device), output_hidden_states=True)
    pooled = out[0] if out[0].ndim == 2 else None
    return out.hidden_states[-2 if clip_skip is None else -(clip_skip + 2)], pooled


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """Mix the guided prediction with a copy rescaled to the conditional prediction's per-sample standard deviation
    (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", section 3.4)."""
    dims = list(range(1, cond.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return guidance_rescale * rescaled + (1 - guidance_rescale) * guided


class AnimateDiffSDXLPipeline(AnimateDiffBase):
    """Stable Diffusion XL + SDXL motion adapter -> video.

    Components: ``tokenizer``, ``tokenizer_2``, ``text_encoder`` (CLIPTextModel), ``text_encoder_2``
    (CLIPTextModelWithProjection), ``unet`` (a :class:`~vidcore.models.motion.UNetMotion` over an SDXL
    :class:`~vidcore.models.unet2d.UNet2D`; a UNet2D plus ``motion_adapter`` is wrapped), ``vae``, ``scheduler``.
    Optional ``image_encoder`` / ``feature_extractor`` for IP-Adapter image prompts (``load_ip_adapter`` brings them).
    """

    component_names = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "unet", "vae", "scheduler")
    sdxl = True
    # no parallel sampling (it would split the guidance batch without the SDXL time ids) and no FreeNoise (as
    # diffusers' AnimateDiffSDXLPipeline): the class composes neither

    def __init__(self, tokenizer, tokenizer_2, text_encoder, text_encoder_2, unet, vae, scheduler,
                 motion_adapter: MotionAdapter | None = None, image_encoder=None, feature_extractor=None,
                 force_zeros_for_empty_prompt: bool = True):
        super().__init__(tokenizer, text_encoder, unet, vae, scheduler, motion_adapter,  # builds the UNetMotion
                         image_encoder, feature_extractor, tokenizer_2=tokenizer_2, text_encoder_2=text_encoder_2)
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        if self.unet.unet.add_embedding is None:
            raise ConfigError("AnimateDiffSDXLPipeline needs an SDXL UNet (addition_embed_type='text_time'); this one "
                              "is a Stable Diffusion 1.x/2.x UNet: use AnimateDiffPipeline with an SD1.5 motion adapter")

    # -- loading (vidcore.loading.pipeline does it from these declarations) ---------------------------
    # the SD1.5 pipeline's plus SDXL's second tokenizer and text encoder; the stored scheduler is used as diffusers
    # does (Euler for the SDXL base repo)
    loaders = {**AnimateDiffBase.loaders, "tokenizer_2": load_tokenizer, "text_encoder_2": load_text_encoder_2}
    example_adapter = SDXL_ADAPTER
    # an original SDXL file (sd_xl_base_1.0.safetensors layout, as civitai SDXL fine-tunes ship) holds the UNet, the
    # VAE and both text encoders; config_from gives their configs, both tokenizers and the scheduler
    single_file = SingleFile(load_sdxl_single_file, SDXL_SINGLE_FILE_COMPONENTS, tuple(SDXL_CONFIG_PATTERNS),
                             "an SDXL pipeline folder or hub repo", DEFAULT_SDXL_CONFIG)

    @classmethod
    def index_options(cls, index) -> dict:
        """``force_zeros_for_empty_prompt`` of ``model_index.json`` (True when absent, as SDXL's)."""
        return {"force_zeros_for_empty_prompt": bool(index.get("force_zeros_for_empty_prompt", True))}

    def saved_index_options(self) -> dict:
        return {"force_zeros_for_empty_prompt": self.force_zeros_for_empty_prompt}

    # -- pieces ---------------------------------------------------------------------------------
    def encode_sdxl_prompt(self, prompt, prompt_2, device, num_videos_per_prompt: int, guidance: bool,
                           negative_prompt=None, negative_prompt_2=None, prompt_embeds=None,
                           negative_prompt_embeds=None, pooled_prompt_embeds=None,
                           negative_pooled_prompt_embeds=None, clip_skip: int | None = None):
        """(prompt_embeds b L D, negative_prompt_embeds, pooled b d, negative pooled), negatives None without
        guidance, each repeated ``num_videos_per_prompt`` times. ``clip_skip`` applies to the prompt only (as in
        diffusers)."""
        pairs = ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2))

        def encode(texts: list[list[str]], max_length: int, skip):
            hidden, pooled = [], None
            for (tok, enc), t in zip(pairs, texts):
                if tok is None or enc is None:
                    raise ValueError("this pipeline has no text encoders: pass prompt_embeds and pooled_prompt_embeds "
                                     "(and the negative ones with guidance_scale > 1)")
                self._run_on_device("text_encoder" if enc is self.text_encoder else "text_encoder_2")
                h, p = sdxl_text_embed(tok, enc, t, device, max_length, skip)
                hidden.append(h)
                pooled = p if pooled is None else pooled
            return torch.cat(hidden, dim=-1), pooled

        if prompt_embeds is None:
            prompts = as_prompt_list(prompt, "prompt")
            prompts_2 = as_prompt_list(prompt_2 or prompt, "prompt_2")
            prompt_embeds, pooled_prompt_embeds = encode([prompts, prompts_2], self.tokenizer.model_max_length,
                                                         clip_skip)
        batch = prompt_embeds.shape[0]
        uncond = uncond_pooled = None
        if guidance and negative_prompt_embeds is None and negative_prompt is None and self.force_zeros_for_empty_prompt:
            uncond, uncond_pooled = torch.zeros_like(prompt_embeds), torch.zeros_like(pooled_prompt_embeds)
        elif guidance and negative_prompt_embeds is None:
            negative_prompt = negative_prompt or ""
            negative_prompt_2 = negative_prompt_2 or negative_prompt
            negatives = [negative_prompt] * batch if isinstance(negative_prompt, str) else negative_prompt
            negatives_2 = [negative_prompt_2] * batch if isinstance(negative_prompt_2, str) else negative_prompt_2
            negatives, negatives_2 = as_prompt_list(negatives, "negative_prompt"), as_prompt_list(negatives_2, "negative_prompt_2")
            if len(negatives) != batch or len(negatives_2) != batch:
                raise ValueError(f"negative_prompt has {len(negatives)} entries (negative_prompt_2: {len(negatives_2)}) "
                                 f"but prompt has {batch}")
            uncond, uncond_pooled = encode([negatives, negatives_2], prompt_embeds.shape[1], None)
        elif guidance:
            uncond, uncond_pooled = negative_prompt_embeds, negative_pooled_prompt_embeds

        dtype = self.text_encoder_2.dtype if self.text_encoder_2 is not None else self.unet.dtype

        def ready(x):
            return None if x is None else x.to(device=device, dtype=dtype).repeat_interleave(num_videos_per_prompt, 0)

        return ready(prompt_embeds), ready(uncond), ready(pooled_prompt_embeds), ready(uncond_pooled)

    def time_ids(self, original_size, crops_coords_top_left, target_size, rows: int, dtype, device) -> torch.Tensor:
        """SDXL's micro-conditioning for ``rows`` videos: ``original_size + crops_coords_top_left + target_size``
        (each (height, width) / (top, left)) -> rows x 6."""
        values = [*original_size, *crops_coords_top_left, *target_size]
        if len(values) != 6:
            raise ValueError(f"original_size, crops_coords_top_left and target_size must be pairs, got "
                             f"{original_size!r}, {crops_coords_top_left!r}, {target_size!r}")
        return torch.tensor([values], dtype=dtype, device=device).repeat(rows, 1)

    # -- call -----------------------------------------------------------------------------------
    callback_tensor_inputs = CALLBACK_TENSOR_INPUTS

    @torch.no_grad()
    @takes_cross_attention_kwargs
    def __call__(self, prompt: str | list[str] | None = None, prompt_2: str | list[str] | None = None,
                 num_frames: int = 16, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 50, denoising_end: float | None = None, guidance_scale: float = 5.0,
                 negative_prompt: str | list[str] | None = None, negative_prompt_2: str | list[str] | None = None,
                 num_videos_per_prompt: int = 1, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 pooled_prompt_embeds: torch.Tensor | None = None,
                 negative_pooled_prompt_embeds: torch.Tensor | None = None, ip_adapter_image=None,
                 ip_adapter_image_embeds: list[torch.Tensor] | None = None, output_type: str = "pil",
                 return_dict: bool = True, guidance_rescale: float = 0.0,
                 original_size: tuple[int, int] | None = None, crops_coords_top_left: tuple[int, int] = (0, 0),
                 target_size: tuple[int, int] | None = None, negative_original_size: tuple[int, int] | None = None,
                 negative_crops_coords_top_left: tuple[int, int] = (0, 0),
                 negative_target_size: tuple[int, int] | None = None, clip_skip: int | None = None,
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: tuple[str, ...] | list[str] = ("latents",),
                 decode_chunk_size: int | None = None, context_length: int | None = None,
                 context_stride: int | None = None, context_weighting: str = "pyramid",
                 cross_attention_kwargs: dict | None = None):
        """Generate videos from text with SDXL. Argument names and defaults follow diffusers'
        AnimateDiffSDXLPipeline (height/width default to the UNet's sample size x 8: 1024 for SDXL);
        ``decode_chunk_size`` (default: all frames in one VAE call, as diffusers) and the context-window
        arguments are vidcore's (see :class:`~vidcore.pipelines.animatediff.AnimateDiffPipeline`). See the module
        docstring for the differences from diffusers."""
        check_call(self, locals())
        height, width = self.default_size(height, width, 128)
        original_size = original_size or (height, width)
        target_size = target_size or (height, width)
        self.check_inputs(prompt, height, width, num_frames, prompt_embeds, negative_prompt_embeds, output_type,
                          num_videos_per_prompt, None)
        check_negative_inputs(negative_prompt, negative_prompt_embeds)
        check_callback_inputs(callback_on_step_end_tensor_inputs, CALLBACK_TENSOR_INPUTS)
        if prompt_embeds is not None and pooled_prompt_embeds is None:
            raise ValueError("prompt_embeds needs pooled_prompt_embeds (the second text encoder's pooled output)")
        if negative_prompt_embeds is not None and negative_pooled_prompt_embeds is None:
            raise ValueError("negative_prompt_embeds needs negative_pooled_prompt_embeds")
        if denoising_end is not None and not (isinstance(denoising_end, float) and 0 < denoising_end < 1):
            raise ValueError(f"denoising_end must be a float between 0 and 1 (exclusive), got {denoising_end!r}")
        windows = self.check_context(num_frames, context_length, context_stride, context_weighting)
        check_ip_adapter_inputs(ip_adapter_image, ip_adapter_image_embeds)
        image_prompt = ip_adapter_image is not None or ip_adapter_image_embeds is not None

        device = self.device
        guidance = guidance_scale > 1.0
        cond, uncond, pooled, uncond_pooled = self.encode_sdxl_prompt(
            prompt, prompt_2, device, num_videos_per_prompt, guidance, negative_prompt, negative_prompt_2,
            prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds, clip_skip)
        # one per adapter, negatives first under guidance (as the prompt embeddings)
        image_kwargs = {"image_embeds": self.prepare_ip_adapter_image_embeds(
            ip_adapter_image, ip_adapter_image_embeds, device, cond.shape[0], guidance)} if image_prompt else {}

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        s = self.vae_scale_factor
        shape = (cond.shape[0], self.unet.unet.config.in_channels, num_frames, height // s, width // s)
        latents = self.prepare_latents(shape, cond.dtype, device, generator, latents)

        rows = cond.shape[0]
        ids = self.time_ids(original_size, crops_coords_top_left, target_size, rows, cond.dtype, device)
        uncond_ids = ids
        if negative_original_size is not None and negative_target_size is not None:
            uncond_ids = self.time_ids(negative_original_size, negative_crops_coords_top_left, negative_target_size,
                                       rows, cond.dtype, device)
        if denoising_end is not None:
            cutoff = int(round(self.scheduler.config.num_train_timesteps * (1 - denoising_end)))
            timesteps = timesteps[: int((timesteps >= cutoff).sum())]

        unet = self._run_on_device("unet")
        step_end = StepEnd(self, callback_on_step_end, callback_on_step_end_tensor_inputs, {
            "prompt_embeds": cond, "negative_prompt_embeds": uncond, "add_text_embeds": pooled,
            "negative_pooled_prompt_embeds": uncond_pooled, "add_time_ids": ids, "negative_add_time_ids": uncond_ids})

        def predict(latents, t, i):
            state = step_end.tensors
            parts = ("prompt_embeds", "add_text_embeds", "add_time_ids")
            if guidance:  # negatives first, as apply_guidance splits them
                embeds, text, time = (torch.cat([state[_negative(k)], state[k]]) for k in parts)
            else:
                embeds, text, time = (state[k] for k in parts)
            extra = {"added_cond_kwargs": {"text_embeds": text, "time_ids": time}, **image_kwargs}
            # the [uncond; cond] prediction (guidance_scale None), guided here to keep the conditional half
            noise = self.predict_noise(unet, latents, t, embeds, None if guidance else 1.0, windows, context_weighting,
                                       extra=extra)
            if guidance:
                noise_uncond, noise_cond = noise.chunk(2)
                noise = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
                if guidance_rescale > 0.0:
                    noise = rescale_guidance(noise, noise_cond, guidance_rescale)
            return noise

        step = scheduler_step(self.scheduler, eta=eta, generator=generator)

        def denoise(latents, timesteps):
            return self.sample(latents, timesteps, predict, step, step_end)

        latents = self.free_init_denoise(latents, num_inference_steps, self.schedule, denoise, generator,
                                         timesteps=timesteps, stop=lambda: step_end.interrupted)
        return self.finish(latents, output_type, return_dict, decode_chunk_size)


def _negative(name: str) -> str:
    """The state key of the unconditional counterpart of ``name``."""
    return {"prompt_embeds": "negative_prompt_embeds", "add_text_embeds": "negative_pooled_prompt_embeds",
            "add_time_ids": "negative_add_time_ids"}[name]
