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
* Not supported: ``timesteps=`` / ``sigmas=`` and ``cross_attention_kwargs`` (diffusers has them); FreeNoise
  (diffusers' SDXL pipeline has none either) and ``motion_scale``.
"""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from .. import hub
from ..errors import ConfigError
from ..models.motion import MotionAdapter, UNetMotion
from ..sampling.loop import StepEnd, scheduler_step
from .animatediff import AnimateDiffBase, check_decode_chunk_size
from .base import check_callback_inputs, check_negative_inputs, load_tokenizer
from .ip_adapter import check_ip_adapter_inputs
from .text import as_prompt_list

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


# from_single_file: the SDXL repo that gives the configs, tokenizers and scheduler (no weights are fetched)
DEFAULT_SDXL_CONFIG = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_SINGLE_FILE_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
SDXL_CONFIG_PATTERNS = ["model_index.json", *(f"{c}/config.json" for c in SDXL_SINGLE_FILE_COMPONENTS),
                        *(f"{t}/*.{e}" for t in ("tokenizer", "tokenizer_2") for e in ("json", "txt")),
                        "scheduler/*.json"]


def load_sdxl_single_file(path: str | os.PathLike, config_from: str | os.PathLike = DEFAULT_SDXL_CONFIG,
                          torch_dtype=None, revision: str | None = None, token: str | None = None,
                          components=SDXL_SINGLE_FILE_COMPONENTS) -> dict:
    """``unet`` (vidcore UNet2D), ``vae`` (vidcore AutoencoderKL), ``text_encoder`` (transformers CLIPTextModel) and
    ``text_encoder_2`` (CLIPTextModelWithProjection) of an original SDXL single file (``model.diffusion_model.*``,
    ``first_stage_model.*``, ``conditioner.embedders.{0,1}.*``; civitai fine-tunes), read once; their configs come
    from ``config_from``, an SDXL pipeline folder or hub repo id (only its config files are fetched). Every key and
    shape is checked before a module is filled (:mod:`vidcore.conversion.maps.original_sdxl`)."""
    import warnings

    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from ..conversion.engine import ChainedMap
    from ..conversion.maps import original_sd, original_sdxl
    from ..errors import CheckpointError
    from ..loading import BY_NAME, _build, _fill, _load_text_encoder, _load_transformers_tower
    from ..single_file import read_single_file_raw

    components = (components,) if isinstance(components, str) else tuple(components)
    unknown = sorted(set(components) - set(SDXL_SINGLE_FILE_COMPONENTS))
    if unknown:
        raise ValueError(f"components must be among {list(SDXL_SINGLE_FILE_COMPONENTS)}, got {unknown}")
    where = hub.resolve(path, revision=revision, token=token)
    if not where.is_file():
        raise CheckpointError(f"{where}: not a single file (an SDXL pipeline folder loads with from_pretrained)")
    raw = read_single_file_raw(where)
    if not original_sdxl.detect(raw):
        raise CheckpointError(f"{where}: not an original Stable Diffusion XL file (model.diffusion_model.label_emb.*, "
                              "conditioner.embedders.1.model.* keys)")
    extra = original_sdxl.unrecognised(raw)
    if extra:
        warnings.warn(f"{where}: ignoring {len(extra)} keys outside the UNet, VAE and text encoders, e.g. {extra[:10]}",
                      stacklevel=2)
    root = hub.resolve(config_from, allow_patterns=SDXL_CONFIG_PATTERNS, revision=revision, token=token)
    parts = original_sdxl.split(raw)
    dtype = hub.parse_dtype(torch_dtype) or torch.float32
    out = {}
    for name in (c for c in SDXL_SINGLE_FILE_COMPONENTS if c in components):
        if not parts[name]:
            raise CheckpointError(f"{where}: an SDXL file without the {name} "
                                  f"(no {original_sdxl.COMPONENT_PREFIXES[name]}* keys)")
        if not (root / name / "config.json").is_file():
            raise ConfigError(f"config_from={os.fspath(config_from)!r} has no {name}/config.json (looked in {root})")
        config = hub.load_config(root / name)
        if name in ("unet", "vae"):
            arch = BY_NAME["unet2d" if name == "unet" else "autoencoder_kl"]
            original = original_sdxl.sdxl_unet_map(config) if name == "unet" else original_sd.sd_vae_map(config)
            module = _build(arch, config)
            _fill(module, parts[name], ChainedMap([original, arch.keymap(config)]), [where], "forward")
        elif name == "text_encoder":
            module, _ = _load_text_encoder(parts[name], config, [where])
        else:
            cfg = CLIPTextConfig.from_dict(config)
            module, _ = _load_transformers_tower(CLIPTextModelWithProjection, cfg,
                                                 lambda target: original_sdxl.open_clip_text_map(), parts[name],
                                                 [where], f"{cfg.num_hidden_layers} layers, width {cfg.hidden_size}")
        out[name] = module.to(dtype).eval()
    return out


def load_text_encoder_2(folder: Path, torch_dtype=None, variant=None):
    """SDXL's second text encoder (OpenCLIP ViT-bigG as a transformers ``CLIPTextModelWithProjection``)."""
    from transformers import CLIPTextModelWithProjection

    kwargs = {"dtype": torch_dtype or torch.float32}
    if variant and any(p.name.endswith(f".{variant}.safetensors") for p in folder.iterdir()):
        kwargs["variant"] = variant
    return CLIPTextModelWithProjection.from_pretrained(str(folder), **kwargs).eval()


@torch.no_grad()
def sdxl_text_embed(tokenizer, text_encoder, prompts: list[str], device, max_length: int,
                    clip_skip: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states n L d, pooled n d or None) of one SDXL text encoder: the hidden states ``clip_skip + 2``
    from the end (penultimate layer by default, no final norm); ``pooled`` is the encoder's first output when
    it is 2-D (the projected text embedding of a ``CLIPTextModelWithProjection``)."""
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

    components = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "unet", "vae", "scheduler")
    # the SD1.5 pipeline's plus SDXL's second tokenizer and text encoder
    folder_components = ("tokenizer", "text_encoder", "unet", "vae", "scheduler", "motion_adapter", "image_encoder",
                         "feature_extractor", "tokenizer_2", "text_encoder_2")
    example_adapter = SDXL_ADAPTER
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

    # -- loading --------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, motion_adapter=None,
                        torch_dtype: torch.dtype | str | None = None, variant: str | None = None,
                        revision: str | None = None, token: str | None = None, **overrides):
        """Load from a Stable Diffusion XL pipeline folder or hub repo (``stabilityai/stable-diffusion-xl-base-1.0``:
        ``tokenizer{,_2}``, ``text_encoder{,_2}``, ``unet``, ``vae``, ``scheduler``) plus ``motion_adapter`` (a
        MotionAdapter, or a folder / hub repo id / original file, e.g. ``guoyww/animatediff-motion-adapter-sdxl-beta``
        or its ``mm_sdxl_v10_beta.ckpt``), or from a saved AnimateDiffSDXLPipeline folder. Components passed as
        keyword arguments replace the stored ones; the stored scheduler is used as diffusers does (Euler for the
        SDXL base repo). ``force_zeros_for_empty_prompt`` is read from ``model_index.json``.

        >>> pipe = AnimateDiffSDXLPipeline.from_pretrained(
        ...     "stabilityai/stable-diffusion-xl-base-1.0", motion_adapter="guoyww/animatediff-motion-adapter-sdxl-beta",
        ...     torch_dtype=torch.float16, variant="fp16")
        """
        pipe = super().from_pretrained(path_or_repo, motion_adapter, torch_dtype, variant, revision, token, **overrides)
        root = hub.resolve(path_or_repo, allow_patterns=["model_index.json"], revision=revision, token=token)
        pipe.force_zeros_for_empty_prompt = bool(hub.load_config(root, "model_index.json").get(
            "force_zeros_for_empty_prompt", True))
        return pipe

    @classmethod
    def load_extra_component(cls, name: str, folder: Path, torch_dtype, variant: str | None):
        if name == "tokenizer_2":
            return load_tokenizer(folder)
        if name == "text_encoder_2":
            return load_text_encoder_2(folder, torch_dtype, variant)
        return super().load_extra_component(name, folder, torch_dtype, variant)

    @classmethod
    def from_single_file(cls, path: str | os.PathLike, motion_adapter=None,
                         config_from: str | os.PathLike = DEFAULT_SDXL_CONFIG,
                         torch_dtype: torch.dtype | str | None = None, variant: str | None = None,
                         revision: str | None = None, token: str | None = None, **overrides):
        """Load the UNet, VAE and both text encoders from an original SDXL single file (Stability's
        ``sd_xl_base_1.0.safetensors`` layout, which civitai SDXL fine-tunes ship; ``.safetensors`` or ``.ckpt``),
        plus ``motion_adapter`` (required, as in :meth:`from_pretrained`). ``config_from`` (default
        ``stabilityai/stable-diffusion-xl-base-1.0``; only its config, tokenizer and scheduler files are fetched)
        gives the configs, both tokenizers and the scheduler; components passed as keyword arguments replace the
        loaded ones. ``variant`` applies to the motion adapter's weights.

        >>> pipe = AnimateDiffSDXLPipeline.from_single_file(
        ...     "juggernautXL_v9.safetensors", motion_adapter="guoyww/animatediff-motion-adapter-sdxl-beta",
        ...     torch_dtype=torch.float16)
        """
        from ..errors import ModelNotFoundError
        from .animatediff import load_motion_adapter, stored_scheduler

        unknown = sorted(set(overrides) - set(cls.folder_components))
        if unknown:
            raise TypeError(f"unexpected arguments for {cls.__name__}.from_single_file: {unknown}")
        dtype = hub.parse_dtype(torch_dtype)
        modules = dict(overrides)
        if motion_adapter is not None:
            modules["motion_adapter"] = load_motion_adapter(motion_adapter, dtype, variant, token)
        elif "motion_adapter" not in modules and not isinstance(modules.get("unet"), UNetMotion):
            raise ModelNotFoundError(f"{cls.__name__}.from_single_file: an SDXL single file has no motion modules; "
                                     f"pass motion_adapter= (CLI: --motion-adapter), e.g. {SDXL_ADAPTER}")
        root = hub.resolve(config_from, allow_patterns=SDXL_CONFIG_PATTERNS, revision=revision, token=token)
        if not (root / "model_index.json").is_file():
            raise ModelNotFoundError(f"config_from={os.fspath(config_from)!r} must be an SDXL pipeline folder or hub "
                                     f"repo (model_index.json, unet/, vae/, text_encoder{{,_2}}/, tokenizer{{,_2}}/, "
                                     f"scheduler/); looked in {root}")
        from_file = [c for c in SDXL_SINGLE_FILE_COMPONENTS if c not in modules]
        if from_file:
            modules.update(load_sdxl_single_file(path, root, dtype, revision, token, from_file))
        for name in ("tokenizer", "tokenizer_2"):
            if name not in modules:
                if not (root / name).is_dir():
                    raise ModelNotFoundError(f"component folder '{name}' is missing in {root} (config_from); pass "
                                             f"{name}=... instead")
                modules[name] = load_tokenizer(root / name)
        if "scheduler" not in modules:
            modules["scheduler"] = stored_scheduler(root / "scheduler" / "scheduler_config.json")
        pipe = cls(**modules)
        pipe.force_zeros_for_empty_prompt = bool(hub.load_config(root, "model_index.json").get(
            "force_zeros_for_empty_prompt", True))
        return pipe

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
    @torch.no_grad()
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
                 context_stride: int | None = None, context_weighting: str = "pyramid"):
        """Generate videos from text with SDXL. Argument names and defaults follow diffusers'
        AnimateDiffSDXLPipeline (height/width default to the UNet's sample size x 8: 1024 for SDXL);
        ``decode_chunk_size`` (default: all frames in one VAE call, as diffusers) and the context-window
        arguments are vidcore's (see :class:`~vidcore.pipelines.animatediff.AnimateDiffPipeline`). See the module
        docstring for the differences from diffusers."""
        height, width = self.default_size(height, width, 128)
        original_size = original_size or (height, width)
        target_size = target_size or (height, width)
        self.check_inputs(prompt, height, width, num_frames, prompt_embeds, negative_prompt_embeds, output_type,
                          num_videos_per_prompt, None)
        check_negative_inputs(negative_prompt, negative_prompt_embeds)
        check_callback_inputs(callback_on_step_end_tensor_inputs, CALLBACK_TENSOR_INPUTS)
        check_decode_chunk_size(decode_chunk_size)
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
            model = partial(unet, added_cond_kwargs={"text_embeds": text, "time_ids": time}, **image_kwargs)
            model_in = torch.cat([latents] * 2) if guidance else latents
            # the plain windowed prediction (guidance_scale 1), guided here to keep the conditional half
            noise = self.predict_noise(model, model_in, t, embeds, 1.0, windows, context_weighting)
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
