"""Original single files -> vidcore modules: what a file is (ModelScope / VGen UNets, sgm Stable Video Diffusion,
LDM Stable Diffusion 1.x and XL, AnimateDiff motion modules, ControlNet, SparseCtrl, IP-Adapter), the config it
needs (``config_from`` or the released model's), and the conversion through its original key map. The CLIP towers
those files hold become transformers models, checked key by key against a meta-device copy first.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .. import hub
from ..conversion.engine import ChainedMap, ConversionReport
from ..conversion.maps import (original_controlnet, original_modelscope, original_motion,
                               original_sd, original_sdxl, original_sparsectrl, original_svd)
from ..conversion.maps.diffusers_motion import MOTION_ADAPTER_MAP
from ..errors import CheckpointError, ConfigError, ConversionError, ModelNotFoundError
from ..models.ip_adapter import IPAdapter
from ..models.motion import MOTION_ORIGINAL_DESCRIPTION, MotionAdapter, MotionAdapterConfig
from ..models.sparse_controlnet import SparseControlNetConfig, add_missing_position_tables
from .architectures import (BY_NAME, LDM_SD_COMPONENTS, ORIGINAL_FORMATS, SGM_SVD_COMPONENTS, Architecture, build,
                            build_on_meta, fill, original_keymap)
from .files import (config_from_source, has_native_metadata, locate, read_config_from, read_single_file,
                    read_single_file_raw, strip_prefixes, torch_load_safely)


def _original_config(arch: Architecture, config_from, revision, token) -> dict:
    """The diffusers config for an original checkpoint: `config_from`, or the released model's."""
    fmt = ORIGINAL_FORMATS[arch.name]
    if config_from is None:
        return dict(fmt.default_config)
    return config_from_source(config_from, class_name=arch.diffusers_class, subfolder=fmt.subfolder,
                              description=fmt.description, revision=revision, token=token)


def _convert_original(arch: Architecture, config: dict, state: dict, where: Path):
    """(architecture name, config, module, report): ``arch`` built from ``config`` and filled from the original
    tensors ``state`` of the file ``where``."""
    module = build(arch, config)
    return arch.name, config, module, fill(module, state, original_keymap(arch, config), [where])


def _clip_tower_config(config_from, revision, token, *, subfolder: str, half: str, model_type: str, default: dict,
                       needs: str) -> dict:
    """A transformers CLIP tower config (as a dict) for an original single file's encoder: ``config_from``
    (a config.json, a model folder, a pipeline folder's ``subfolder``/, a hub repo id or a dict), or
    ``default``. A full CLIP config gives its ``half`` ("vision_config" / "text_config")."""
    if config_from is None:
        return dict(default)
    config, where = read_config_from(config_from, subfolder, revision, token,
                                     purpose=f" for the {subfolder.replace('_', ' ')}")
    if config.get("model_type") == "clip" and isinstance(config.get(half), Mapping):
        config = dict(config[half])  # a full CLIP config: one half of it
    kind = config.get("_class_name") or config.get("model_type", model_type)
    if kind != model_type:
        raise ConfigError(f"{where} is a {kind} config, but {needs} (a pipeline's {subfolder}/config.json)")
    return config


def _image_encoder_config(config_from, revision, token) -> dict:
    """CLIPVisionConfig for an sgm file's image encoder; default: the released SVD's (OpenCLIP ViT-H/14)."""
    return _clip_tower_config(config_from, revision, token, subfolder="image_encoder", half="vision_config",
                              model_type="clip_vision_model", default=original_svd.SVD_IMAGE_ENCODER_CONFIG,
                              needs="the image encoder of an original Stable Video Diffusion file needs a "
                                    "CLIPVisionModelWithProjection config")


def _load_transformers_tower(model_cls, cfg, keymap, state: dict, files: list[Path], shape: str):
    """Original tensors -> a transformers model of ``cfg``: every key and shape is checked against a
    meta-device copy (``keymap(target_shapes)`` converts) before transformers builds the model around the
    checked tensors (and its non-persistent buffers). ``shape`` describes cfg in the error message."""
    with torch.device("meta"):
        shell = model_cls(cfg)
    target = {k: v.shape for k, v in shell.state_dict().items()}
    try:
        converted, report = keymap(target).convert(state, target)
    except ConversionError as err:
        names = ", ".join(str(f) for f in files)
        raise ConversionError(f"{names} does not fit {model_cls.__name__} ({shape}): {err}", err.report) from err
    module = model_cls.from_pretrained(None, config=cfg, state_dict=converted,
                                       dtype=next(iter(converted.values())).dtype)
    return module.eval(), report


def _load_image_encoder(state: dict, config: dict, files: list[Path]):
    """OpenCLIP ViT tensors (sgm prefix stripped) -> transformers CLIPVisionModelWithProjection."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig.from_dict(config)
    return _load_transformers_tower(
        CLIPVisionModelWithProjection, cfg, lambda target: original_svd.open_clip_vision_map(), state, files,
        f"{cfg.num_hidden_layers} layers, width {cfg.hidden_size}, projection {cfg.projection_dim}")


def _component_state(where: Path, raw: dict, component: str, components: Mapping, layout, label: str,
                     hint: str = "") -> dict:
    """The tensors of ``component`` in a file holding several (``layout``: the original_svd / original_sd map
    module, with ``split`` and ``COMPONENT_PREFIXES``); errors name the allowed components or the missing prefix."""
    if component not in components:
        raise ValueError(f"{where} is an original {label} file holding several components; component must be "
                         f"one of {sorted(components)}, got {component!r}")
    state = layout.split(raw)[component]
    if not state:
        raise CheckpointError(f"{where}: an original {label} file without the {component} "
                              f"(no {layout.COMPONENT_PREFIXES[component]}* keys){hint}")
    return state


def _load_sgm_svd(where: Path, raw: dict, component: str, config_from, revision, token):
    """One component of an sgm file -> (LoadedInfo architecture name, config, module, report)."""
    state = _component_state(where, raw, component, SGM_SVD_COMPONENTS, original_svd, "Stable Video Diffusion")
    if component == "image_encoder":
        config = _image_encoder_config(config_from, revision, token)
        module, report = _load_image_encoder(state, config, [where])
        return SGM_SVD_COMPONENTS[component], config, module, report
    arch = BY_NAME[SGM_SVD_COMPONENTS[component]]
    config = _original_config(arch, config_from, revision, token)
    if arch.name == "svd_vae" and "quant_conv.weight" not in state:  # sgm's AutoencodingEngine has none
        latent = int(config.get("latent_channels") or original_svd.SVD_VAE_CONFIG["latent_channels"])
        state = {**state, **original_svd.identity_quant_conv(latent, next(iter(state.values())).dtype)}
    return _convert_original(arch, config, state, where)


def _text_encoder_config(config_from, revision, token) -> dict:
    """CLIPTextConfig for an LDM file's text encoder; default: SD1.5's (CLIP ViT-L/14)."""
    return _clip_tower_config(config_from, revision, token, subfolder="text_encoder", half="text_config",
                              model_type="clip_text_model", default=original_sd.SD15_TEXT_ENCODER_CONFIG,
                              needs="the text encoder of an original Stable Diffusion file needs a CLIPTextModel "
                                    "config")


def _load_text_encoder(state: dict, config: dict, files: list[Path]):
    """CLIP text tensors (LDM prefix stripped) -> transformers CLIPTextModel."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig.from_dict(config)
    return _load_transformers_tower(CLIPTextModel, cfg, original_sd.clip_text_map, state, files,
                                    f"{cfg.num_hidden_layers} layers, width {cfg.hidden_size}")


def _load_ldm_sd(where: Path, raw: dict, component: str, config_from, revision, token):
    """One component of an LDM Stable Diffusion file -> (LoadedInfo architecture name, config, module, report)."""
    hint = (" (its cond_stage_model.model.* text tower is SD2's OpenCLIP, which vidcore does not convert: load "
            "the text encoder from a diffusers folder)"
            if component == "text_encoder" and any(k.startswith("cond_stage_model.model.") for k in raw) else "")
    state = _component_state(where, raw, component, LDM_SD_COMPONENTS, original_sd, "Stable Diffusion", hint)
    if component == "text_encoder":
        config = _text_encoder_config(config_from, revision, token)
        module, report = _load_text_encoder(state, config, [where])
        return LDM_SD_COMPONENTS[component], config, module, report
    arch = BY_NAME[LDM_SD_COMPONENTS[component]]
    config = _original_config(arch, config_from, revision, token)
    return _convert_original(arch, config, state, where)


def _warn_unrecognised_ldm(where: Path, raw: dict) -> None:
    extra = original_sd.unrecognised(raw)
    if extra:
        warnings.warn(f"{where}: ignoring {len(extra)} keys outside the UNet, VAE and text encoder, e.g. "
                      f"{extra[:10]}", stacklevel=4)


def load_sd_single_file(path: str | os.PathLike, config_from=None, torch_dtype=None, revision: str | None = None,
                        token: str | None = None, components=tuple(LDM_SD_COMPONENTS)) -> dict[str, nn.Module]:
    """The ``unet`` (vidcore UNet2D), ``vae`` (vidcore AutoencoderKL) and ``text_encoder`` (transformers
    CLIPTextModel) of an original Stable Diffusion 1.x single file (``model.diffusion_model.*``,
    ``first_stage_model.*``, ``cond_stage_model.transformer.*``; civitai fine-tunes), reading the file once.

    ``config_from``: a diffusers SD pipeline folder or hub repo id (its ``unet/``, ``vae/``, ``text_encoder/``
    configs); default: runwayml/stable-diffusion-v1-5's configs. ``components``: the subset to build.
    """
    components = (components,) if isinstance(components, str) else tuple(components)
    unknown = sorted(set(components) - set(LDM_SD_COMPONENTS))
    if unknown:
        raise ValueError(f"components must be among {sorted(LDM_SD_COMPONENTS)}, got {unknown}")
    where, fmt = locate(path, None, revision, token)
    if not where.is_file() or (fmt == "vidcore" and has_native_metadata(where)):
        raise CheckpointError(f"{where}: not an original Stable Diffusion single file")
    raw = read_single_file_raw(where)
    if original_svd.detect(raw) or original_motion.detect(strip_prefixes(raw)) or not original_sd.detect(raw):
        raise CheckpointError(f"{where}: not an original Stable Diffusion 1.x file (model.diffusion_model.*, "
                              "first_stage_model.*, cond_stage_model.transformer.* keys)")
    if original_sdxl.detect(raw):
        raise CheckpointError(_SDXL_FILE.format(where=where))
    _warn_unrecognised_ldm(where, raw)
    dtype = hub.parse_dtype(torch_dtype) or torch.float32
    out = {}
    for component in (c for c in LDM_SD_COMPONENTS if c in components):
        out[component] = _load_ldm_sd(where, raw, component, config_from, revision, token)[2].to(dtype).eval()
    return out


_SDXL_FILE = ("{where}: a Stable Diffusion XL single file (conditioner.embedders.* text encoders); load it with "
              "vidcore.AnimateDiffSDXLPipeline.from_single_file or vidcore."
              "load_sdxl_single_file")


def _load_motion_file(where: Path, state: dict, config_from, revision, token, component):
    """An AnimateDiff motion-module file: the config comes from its keys (``config_from`` overrides)."""
    if component not in (None, "motion_adapter"):
        raise ValueError(f"{where} is an AnimateDiff motion-module file; component must be None or "
                         f"'motion_adapter', got {component!r}")
    module, config, report = motion_adapter_from_state_dict(state, where, config_from, revision, token)
    return "motion_adapter", config, module, report


def _load_controlnet_file(where: Path, raw: dict, config_from, revision, token):
    """An original ControlNet file (``control_model.*``); the config comes from ``config_from`` or is SD1.5's."""
    state, other = original_controlnet.strip(raw)
    if other:
        warnings.warn(f"{where}: ignoring {len(other)} keys outside the ControlNet (control_model.*), e.g. "
                      f"{other[:5]}", stacklevel=4)
    arch = BY_NAME["controlnet"]
    config = _original_config(arch, config_from, revision, token)
    return _convert_original(arch, config, state, where)


def load_original(where: Path, config_from, revision, token,
                   component: str | None = None) -> tuple[str, dict, nn.Module, ConversionReport]:
    raw = read_single_file_raw(where)
    if original_controlnet.detect(raw) and component in (None, "controlnet"):
        return _load_controlnet_file(where, raw, config_from, revision, token)
    sparse = original_sparsectrl.detect(strip_prefixes(raw))
    if sparse is not None and component in (None, "controlnet"):
        arch = BY_NAME["sparse_controlnet"]
        default = original_sparsectrl.RGB_CONFIG if sparse == "rgb" else original_sparsectrl.SCRIBBLE_CONFIG
        config = dict(default) if config_from is None else _original_config(arch, config_from, revision, token)
        state = add_missing_position_tables(strip_prefixes(raw), SparseControlNetConfig.from_diffusers_config(config),
                                            original=True)
        return _convert_original(arch, config, state, where)
    if original_motion.detect(strip_prefixes(raw)):
        return _load_motion_file(where, strip_prefixes(raw), config_from, revision, token, component)
    if original_svd.detect(raw):
        return _load_sgm_svd(where, raw, component or "unet", config_from, revision, token)
    if original_sdxl.detect(raw):
        raise CheckpointError(_SDXL_FILE.format(where=where))
    if original_sd.detect(raw) and original_modelscope.detect(strip_prefixes(raw)) is None:
        _warn_unrecognised_ldm(where, raw)
        return _load_ldm_sd(where, raw, component or "unet", config_from, revision, token)
    if component is not None:
        raise ValueError(f"component={component!r} applies to original Stable Video Diffusion / Stable Diffusion "
                         f"files (several components in one file); {where} is not one")
    state = strip_prefixes(raw)
    arch_name = original_modelscope.detect(state)
    if arch_name is None:
        sample = ", ".join(sorted(state)[:5]) or "none"
        raise CheckpointError(
            f"{where}: vidcore cannot tell what this single file is: it is not a vidcore native file "
            "(safetensors with vidcore metadata) and its keys are not those of an original ModelScope or "
            "I2VGen-XL UNet checkpoint (input_blocks.*, local_image_concat.*) or an original Stable Video "
            f"Diffusion file (model.diffusion_model.*, first_stage_model.*; found e.g. {sample}). "
            "For a diffusers model pass the folder that holds config.json."
        )
    arch = BY_NAME[arch_name]
    config = _original_config(arch, config_from, revision, token)
    return _convert_original(arch, config, state, where)


# -- Stable Video Diffusion (sgm: several components per file) -------------------------------------------

SVD_SINGLE_FILE_COMPONENTS = ("unet", "vae", "image_encoder")


def load_svd_single_file(path: str | os.PathLike, config_from: str | os.PathLike, torch_dtype=None,
                         revision: str | None = None, token: str | None = None,
                         components=SVD_SINGLE_FILE_COMPONENTS) -> dict:
    """``unet``, ``vae`` and ``image_encoder`` (transformers CLIPVisionModelWithProjection) of an original Stable
    Video Diffusion file (Stability's sgm layout), read once; configs from ``config_from`` (a pipeline folder's
    ``unet/``, ``vae/``, ``image_encoder/``). A file without the image encoder's keys gives no ``image_encoder``
    (the caller takes ``config_from``'s). Keys outside those components and not known to be unused
    (``original_svd.SKIPPED_PREFIXES``) are reported in a warning."""
    where = hub.resolve(path, revision=revision, token=token)
    raw = read_single_file_raw(where)
    if not original_svd.detect(raw):
        sample = ", ".join(sorted(raw)[:5]) or "none"
        raise CheckpointError(f"{where} is not an original Stable Video Diffusion file (sgm layout: "
                              f"model.diffusion_model.* with time_stack, first_stage_model.*); found e.g. {sample}")
    extra = original_svd.unrecognised(raw)
    if extra:
        warnings.warn(f"{where}: ignoring {len(extra)} tensors that are not part of Stable Video Diffusion's "
                      f"UNet, VAE or image encoder, e.g. {', '.join(extra[:5])}", stacklevel=3)
    root = Path(os.fspath(config_from))
    encoder_in_file = any(k.startswith(original_svd.IMAGE_ENCODER_PREFIX) for k in raw)
    dtype = hub.parse_dtype(torch_dtype) or torch.float32
    out = {}
    for name in (c for c in SVD_SINGLE_FILE_COMPONENTS if c in components):
        if name == "image_encoder" and not encoder_in_file:
            continue
        if name == "image_encoder" and not (root / name / "config.json").is_file():
            raise ModelNotFoundError(f"image_encoder/config.json is missing in {root} (config_from): the image "
                                     f"encoder in {where.name} needs its config; pass image_encoder=... instead")
        module = _load_sgm_svd(where, raw, name, root / name if name == "image_encoder" else root, revision, token)[2]
        out[name] = module.to(dtype).eval()
    return out


# -- Stable Diffusion XL (several components per file) --------------------------------------------------

# the SDXL repo that gives the configs, tokenizers and scheduler (no weights are fetched)
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
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

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
            module = build(arch, config)
            fill(module, parts[name], ChainedMap([original, arch.keymap(config)]), [where])
        elif name == "text_encoder":
            module, _ = _load_text_encoder(parts[name], config, [where])
        else:
            cfg = CLIPTextConfig.from_dict(config)
            module, _ = _load_transformers_tower(CLIPTextModelWithProjection, cfg,
                                                 lambda target: original_sdxl.open_clip_text_map(), parts[name],
                                                 [where], f"{cfg.num_hidden_layers} layers, width {cfg.hidden_size}")
        out[name] = module.to(dtype).eval()
    return out


# -- AnimateDiff motion modules, IP-Adapters -------------------------------------------------------------

def motion_adapter_from_state_dict(state: dict, where, config_from=None, revision=None, token=None):
    """(adapter, diffusers config, conversion report) from an original motion-module state dict (prefixes
    stripped); the config comes from its keys, ``config_from`` overrides it (head count and norm groups
    cannot be seen in the weights)."""
    config = {"_class_name": "MotionAdapter", **original_motion.config_from_keys(state)}
    if config_from is not None:
        config.update(config_from_source(config_from, class_name="MotionAdapter", subfolder="motion_adapter",
                                         description=MOTION_ORIGINAL_DESCRIPTION, revision=revision, token=token))
    module = build_on_meta(MotionAdapter, MotionAdapterConfig, config, "MotionAdapter")
    keymap = ChainedMap([original_motion.motion_adapter_map(config), MOTION_ADAPTER_MAP])
    return module, config, fill(module, state, keymap, [where])


def load_motion_adapter_file(path, config_from=None, torch_dtype=None, revision: str | None = None,
                             token: str | None = None) -> MotionAdapter:
    """An original AnimateDiff motion-module file (``mm_sd_v15_v2.ckpt``, ``v3_sd15_mm.ckpt``, or their
    ``.safetensors``); the config is read from its keys, ``config_from`` (a diffusers adapter folder,
    ``config.json`` or dict) overrides it. Same as ``vidcore.load_model(path, component="motion_adapter")``."""
    where = hub.resolve(path, revision=revision, token=token)
    if not where.is_file():
        raise ModelNotFoundError(f"{where} is a folder; load_motion_adapter_file reads one original "
                                 "motion-module file (vidcore.load_model loads a diffusers folder)")
    state = read_single_file(where)
    if not original_motion.detect(state):
        raise CheckpointError(f"{where} is not an original AnimateDiff motion-module file (no "
                              "down_blocks.N.motion_modules.* keys)")
    module, _, _ = motion_adapter_from_state_dict(state, where, config_from, revision, token)
    return module.to(hub.parse_dtype(torch_dtype) or torch.float32).eval()


def load_ip_adapter_file(path: str | os.PathLike) -> IPAdapter:
    """An original IP-Adapter file: ``.safetensors``, or a ``.bin`` read with ``torch.load(weights_only=True)``
    (its two nested groups kept: :meth:`IPAdapter.from_state_dict` flattens them)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state = hub.load_state_dict(path)
    else:
        state = torch_load_safely(path)
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
    return IPAdapter.from_state_dict(state, str(path))

