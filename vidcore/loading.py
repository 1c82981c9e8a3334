"""``load_model``: find out what a checkpoint is, convert it with its key map, return the native module.

Formats understood:

* a diffusers model folder (``config.json`` with ``_class_name`` + weights in diffusers naming);
* a diffusers pipeline folder plus ``subfolder`` (``unet``, ``vae``);
* vidcore's native file: one ``.safetensors`` whose metadata holds the architecture and config;
* an original single-file UNet checkpoint (``.pth``/``.ckpt``/``.bin``/``.safetensors``): ModelScope's
  ``text2video_pytorch_model.pth`` or VGen's ``i2vgen_xl_00854500.pth``, told apart by their keys.
  Such files carry no config: it comes from ``config_from`` (a diffusers ``unet`` folder,
  ``config.json`` or dict) or defaults to the released model's hub config;
* an original Stable Video Diffusion file (Stability's sgm layout: ``svd_xt.safetensors``,
  ``svd_xt_1_1.safetensors``), which holds several components: ``component="unet"`` (default),
  ``"vae"`` or ``"image_encoder"`` (OpenCLIP ViT-H/14, returned as transformers'
  ``CLIPVisionModelWithProjection``) picks one; the config comes from ``config_from`` (a pipeline
  folder's ``unet/``, ``vae/`` or ``image_encoder/``) or defaults to stabilityai/stable-video-diffusion-img2vid-xt's.
* an original Stable Diffusion 1.x single file (CompVis LDM layout, as civitai fine-tunes ship):
  ``component="unet"`` (default), ``"vae"`` or ``"text_encoder"`` (transformers ``CLIPTextModel``);
  configs from ``config_from`` (a pipeline folder) or runwayml/stable-diffusion-v1-5's.
  :func:`load_sd_single_file` returns all three, reading the file once;
* an original AnimateDiff motion-module file (``mm_sd_v15_v2.ckpt``, ``v3_sd15_mm.ckpt``, ...): the adapter
  config is read from its keys (levels, widths, mid block, ``motion_max_seq_length`` from the position
  table); ``config_from`` overrides it (head count and norm groups cannot be seen in the weights);
* an original ControlNet file (lllyasviel's ``control_v11p_sd15_openpose.pth``, ``control_sd15_canny.pth``, their
  ``.safetensors`` re-exports: ``control_model.*`` keys, prefix optional): config from ``config_from`` (a diffusers
  ControlNet folder, a pipeline folder's ``controlnet/``, ``config.json`` or dict) or SD1.5's ControlNet config.

Weights are converted and checked completely before the module is filled, so a bad checkpoint
raises a :class:`~vidcore.errors.CheckpointError` naming the file, key or shape, and nothing is
half-loaded.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .conversion.engine import ChainedMap, ConversionReport, KeyMap
from .conversion.maps import (original_controlnet, original_modelscope, original_motion, original_sd, original_sdxl,
                               original_sparsectrl, original_svd)
from .conversion.maps.diffusers_controlnet import CONTROLNET_CONV_MAP, controlnet_map
from .conversion.maps.diffusers_sparse_controlnet import SPARSE_CONTROLNET_MAP, sparse_controlnet_map
from .conversion.maps.diffusers_i2vgen import I2VGEN_MAP
from .conversion.maps.diffusers_motion import MOTION_ADAPTER_MAP
from .conversion.maps.diffusers_svd import SVD_UNET_MAP
from .conversion.maps.diffusers_svd_vae import SVD_VAE_MAP
from .conversion.maps.diffusers_unet2d import UNET2D_CONV_MAP, unet2d_map
from .conversion.maps.diffusers_unet3d import UNET3D_MAP
from .conversion.maps.diffusers_vae import VAE_MAP

from . import hub
from .errors import CheckpointError, ConfigError, ConversionError, ModelNotFoundError
from .models.controlnet import ControlNet, ControlNetConfig
from .models.sparse_controlnet import SparseControlNet, SparseControlNetConfig, add_missing_position_tables
from .models.i2vgen_unet import I2VGenXLConfig, I2VGenXLUNet
from .models.motion import MOTION_ORIGINAL_DESCRIPTION, MotionAdapter, MotionAdapterConfig
from .models.svd_unet import SVDUNet, SVDUNetConfig
from .models.svd_vae import AutoencoderKLTemporalDecoder, AutoencoderKLTemporalDecoderConfig
from .models.unet2d import UNet2D, UNet2DConfig
from .models.unet3d import UNet3D, UNet3DConfig
from .models.vae import AutoencoderKL, AutoencoderKLConfig
from .single_file import (build_on_meta, config_from_source, fill as _fill, read_config_from, read_single_file_raw,
                          strip_prefixes)


@dataclass(frozen=True)
class Architecture:
    name: str  # vidcore's name, stored in native files
    diffusers_class: str
    module: type[nn.Module]
    config: type
    diffusers_map: KeyMap | ChainedMap
    # For layouts that depend on the config (UNet2D: 1x1-conv or linear transformer projections):
    # diffusers config -> map. ``diffusers_map`` is then the map for the default config.
    map_for_config: Callable[[Mapping], KeyMap | ChainedMap] | None = None

    def keymap(self, diffusers_config: Mapping | None = None) -> KeyMap | ChainedMap:
        """The diffusers <-> vidcore map for a checkpoint with this diffusers config."""
        if self.map_for_config is not None and diffusers_config is not None:
            return self.map_for_config(diffusers_config)
        return self.diffusers_map


ARCHITECTURES = [
    Architecture("unet3d", "UNet3DConditionModel", UNet3D, UNet3DConfig, UNET3D_MAP),
    Architecture("i2vgen_xl_unet", "I2VGenXLUNet", I2VGenXLUNet, I2VGenXLConfig, I2VGEN_MAP),
    Architecture("svd_unet", "UNetSpatioTemporalConditionModel", SVDUNet, SVDUNetConfig, SVD_UNET_MAP),
    Architecture("autoencoder_kl", "AutoencoderKL", AutoencoderKL, AutoencoderKLConfig, VAE_MAP),
    Architecture("svd_vae", "AutoencoderKLTemporalDecoder", AutoencoderKLTemporalDecoder,
                 AutoencoderKLTemporalDecoderConfig, SVD_VAE_MAP),
    Architecture("unet2d", "UNet2DConditionModel", UNet2D, UNet2DConfig, UNET2D_CONV_MAP, unet2d_map),
    Architecture("motion_adapter", "MotionAdapter", MotionAdapter, MotionAdapterConfig, MOTION_ADAPTER_MAP),
    Architecture("controlnet", "ControlNetModel", ControlNet, ControlNetConfig, CONTROLNET_CONV_MAP, controlnet_map),
    Architecture("sparse_controlnet", "SparseControlNetModel", SparseControlNet, SparseControlNetConfig,
                 SPARSE_CONTROLNET_MAP, sparse_controlnet_map),
]
BY_DIFFUSERS = {a.diffusers_class: a for a in ARCHITECTURES}
BY_NAME = {a.name: a for a in ARCHITECTURES}
NATIVE_WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class OriginalFormat:
    """An architecture's original single-file layout (the training code's own key names)."""

    description: str
    keymap: Callable[[Mapping], KeyMap]  # diffusers config -> map (original names -> diffusers names)
    default_config: dict  # the released model's diffusers config (hub)
    subfolder: str = "unet"  # where a pipeline folder keeps this component's config.json
    prefix: str = ""  # key prefix of this component in the original file (sgm: several components per file)


ORIGINAL_FORMATS = {
    "unet3d": OriginalFormat("ModelScope text-to-video UNet (damo-vilab/text-to-video-ms-1.7b)",
                             original_modelscope.modelscope_unet3d_map, original_modelscope.MODELSCOPE_UNET_CONFIG),
    "i2vgen_xl_unet": OriginalFormat("VGen I2VGen-XL UNet (ali-vilab/i2vgen-xl)",
                                     original_modelscope.i2vgen_xl_map, original_modelscope.I2VGEN_XL_UNET_CONFIG),
    "svd_unet": OriginalFormat("Stable Video Diffusion UNet (sgm, stabilityai/stable-video-diffusion-img2vid-xt)",
                               original_svd.svd_unet_map, original_svd.SVD_XT_UNET_CONFIG, "unet",
                               original_svd.UNET_PREFIX),
    "svd_vae": OriginalFormat("Stable Video Diffusion VAE (sgm, stabilityai/stable-video-diffusion-img2vid-xt)",
                              original_svd.svd_vae_map, original_svd.SVD_VAE_CONFIG, "vae", original_svd.VAE_PREFIX),
    "motion_adapter": OriginalFormat(MOTION_ORIGINAL_DESCRIPTION, original_motion.motion_adapter_map,
                                     original_motion.DEFAULT_CONFIG, "motion_adapter"),
    "unet2d": OriginalFormat("Stable Diffusion 1.x UNet (LDM single file, runwayml/stable-diffusion-v1-5)",
                             original_sd.sd_unet_map, original_sd.SD15_UNET_CONFIG, "unet", original_sd.UNET_PREFIX),
    "autoencoder_kl": OriginalFormat("Stable Diffusion 1.x VAE (LDM single file, runwayml/stable-diffusion-v1-5)",
                                     original_sd.sd_vae_map, original_sd.SD15_VAE_CONFIG, "vae", original_sd.VAE_PREFIX),
    "controlnet": OriginalFormat("ControlNet (lllyasviel layout, control_v11p_sd15_openpose.pth)",
                                 original_controlnet.controlnet_map, original_controlnet.SD15_CONTROLNET_CONFIG,
                                 "controlnet", original_controlnet.PREFIX),
    "sparse_controlnet": OriginalFormat("SparseCtrl (guoyww/AnimateDiff v3_sd15_sparsectrl_scribble.ckpt / _rgb.ckpt)",
                                        original_sparsectrl.sparsectrl_map, original_sparsectrl.SCRIBBLE_CONFIG,
                                        "controlnet"),
}
# component= of an sgm SVD file -> LoadedInfo.architecture (the image encoder is transformers'
# CLIPVisionModelWithProjection, not a vidcore architecture)
SGM_SVD_COMPONENTS = {"unet": "svd_unet", "vae": "svd_vae", "image_encoder": "clip_vision_with_projection"}
# component= of an LDM Stable Diffusion 1.x file -> LoadedInfo.architecture (the text encoder is transformers'
# CLIPTextModel)
LDM_SD_COMPONENTS = {"unet": "unet2d", "vae": "autoencoder_kl", "text_encoder": "clip_text_model"}


@dataclass
class LoadedInfo:
    """What ``inspect`` reports about a checkpoint."""

    architecture: str
    source_format: str
    files: list[Path]
    report: ConversionReport | None
    diffusers_config: dict


def _architecture_for(config: dict, where: Path) -> Architecture:
    name = config.get("_class_name")
    if name not in BY_DIFFUSERS:
        raise ConfigError(f"{where}: unsupported model class {name!r}; vidcore can load {sorted(BY_DIFFUSERS)}")
    return BY_DIFFUSERS[name]


def _build(arch: Architecture, diffusers_config: dict) -> nn.Module:
    return build_on_meta(arch.module, arch.config, diffusers_config, arch.diffusers_class)


def read_native(path: Path) -> tuple[Architecture, dict, dict]:
    """Native file -> (architecture, diffusers-style config, metadata)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for bad files
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    arch_name = meta.get("vidcore_architecture")
    if arch_name not in BY_NAME:
        raise CheckpointError(f"{path}: a single safetensors file without vidcore metadata; vidcore cannot tell its "
                              "architecture. Pass the diffusers folder that holds config.json instead.")
    return BY_NAME[arch_name], json.loads(meta["diffusers_config"]), meta


def _locate(path, subfolder, variant, revision, token) -> tuple[Path, str]:
    root = hub.resolve(path, revision=revision, token=token)
    if root.is_file():
        return root, "vidcore"
    folder = root / subfolder if subfolder else root
    if not folder.is_dir():
        raise ModelNotFoundError(f"subfolder '{subfolder}' not found in {root}")
    if (folder / "config.json").is_file():
        return folder, "diffusers"
    if (folder / NATIVE_WEIGHTS).is_file():
        return folder / NATIVE_WEIGHTS, "vidcore"
    if (folder / "model_index.json").is_file():
        comps = sorted(k for k, v in json.loads((folder / "model_index.json").read_text()).items()
                       if not k.startswith("_") and isinstance(v, list))
        raise ModelNotFoundError(f"{folder} is a pipeline folder; pass subfolder= (CLI: --subfolder) one of {comps}")
    raise ModelNotFoundError(f"{folder}: no config.json (diffusers layout) or {NATIVE_WEIGHTS} (vidcore layout) found")


def _has_native_metadata(path: Path) -> bool:
    if path.suffix != ".safetensors":
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return "vidcore_architecture" in (f.metadata() or {})
    except Exception:  # noqa: BLE001 - unreadable: read_native names the problem
        return True


# -- original single-file checkpoints (ModelScope / VGen) -----------------------------------------------

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
    module = _build(arch, config)
    return arch.name, config, module, _fill(module, state, original_keymap(arch, config), [where], "forward")


def original_keymap(arch: Architecture, diffusers_config: Mapping) -> ChainedMap:
    """original names -> diffusers names -> vidcore names, for `diffusers_config`'s block layout."""
    if arch.name not in ORIGINAL_FORMATS:
        raise TypeError(f"{arch.name} has no original single-file layout (known: {sorted(ORIGINAL_FORMATS)})")
    return ChainedMap([ORIGINAL_FORMATS[arch.name].keymap(diffusers_config), arch.keymap(diffusers_config)])


def _is_image_encoder(module: nn.Module) -> bool:
    """A transformers CLIPVisionModelWithProjection (transformers is imported if such a module exists)."""
    if "transformers" not in sys.modules:
        return False
    from transformers import CLIPVisionModelWithProjection

    return isinstance(module, CLIPVisionModelWithProjection)


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


def _is_text_encoder(module: nn.Module) -> bool:
    """A transformers CLIPTextModel (transformers is imported if such a module exists)."""
    if "transformers" not in sys.modules:
        return False
    from transformers import CLIPTextModel

    return isinstance(module, CLIPTextModel)


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
    where, fmt = _locate(path, None, None, revision, token)
    if not where.is_file() or (fmt == "vidcore" and _has_native_metadata(where)):
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


def _load_original_motion(where: Path, state: dict, config_from, revision, token, component):
    """An AnimateDiff motion-module file: the config comes from its keys (``config_from`` overrides)."""
    if component not in (None, "motion_adapter"):
        raise ValueError(f"{where} is an AnimateDiff motion-module file; component must be None or "
                         f"'motion_adapter', got {component!r}")
    module, config, report = MotionAdapter.from_original_state_dict(state, where, config_from, revision, token)
    return "motion_adapter", config, module, report


def _load_original_controlnet(where: Path, raw: dict, config_from, revision, token):
    """An original ControlNet file (``control_model.*``); the config comes from ``config_from`` or is SD1.5's."""
    state, other = original_controlnet.strip(raw)
    if other:
        warnings.warn(f"{where}: ignoring {len(other)} keys outside the ControlNet (control_model.*), e.g. "
                      f"{other[:5]}", stacklevel=4)
    arch = BY_NAME["controlnet"]
    config = _original_config(arch, config_from, revision, token)
    return _convert_original(arch, config, state, where)


def _load_original(where: Path, config_from, revision, token,
                   component: str | None = None) -> tuple[str, dict, nn.Module, ConversionReport]:
    raw = read_single_file_raw(where)
    if original_controlnet.detect(raw) and component in (None, "controlnet"):
        return _load_original_controlnet(where, raw, config_from, revision, token)
    sparse = original_sparsectrl.detect(strip_prefixes(raw))
    if sparse is not None and component in (None, "controlnet"):
        arch = BY_NAME["sparse_controlnet"]
        default = original_sparsectrl.RGB_CONFIG if sparse == "rgb" else original_sparsectrl.SCRIBBLE_CONFIG
        config = dict(default) if config_from is None else _original_config(arch, config_from, revision, token)
        state = add_missing_position_tables(strip_prefixes(raw), SparseControlNetConfig.from_diffusers_config(config),
                                            original=True)
        return _convert_original(arch, config, state, where)
    if original_motion.detect(strip_prefixes(raw)):
        return _load_original_motion(where, strip_prefixes(raw), config_from, revision, token, component)
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


def load_model_with_info(path: str | os.PathLike, subfolder: str | None = None, torch_dtype=None,
                         variant: str | None = None, revision: str | None = None, token: str | None = None,
                         config_from=None, component: str | None = None) -> tuple[nn.Module, LoadedInfo]:
    dtype = hub.parse_dtype(torch_dtype) or torch.float32
    where, fmt = _locate(path, subfolder, variant, revision, token)
    if fmt == "vidcore" and where.is_file() and not _has_native_metadata(where):
        fmt = "original"
    if component is not None and fmt != "original":
        raise ValueError(f"component={component!r} applies to original single files (Stable Video Diffusion, "
                         f"AnimateDiff motion modules); {where} is a {fmt} checkpoint (use subfolder= for a "
                         "pipeline folder)")
    if fmt == "diffusers":
        config = hub.load_config(where)
        arch = _architecture_for(config, where / "config.json")
        files = hub.weight_files(where, variant=variant)
        module = _build(arch, config)
        state = hub.load_state_dict(files)
        if arch.name == "sparse_controlnet":  # some hub conversions lack the (fixed) frame-position tables
            state = add_missing_position_tables(state, module.config)
        report = _fill(module, state, arch.keymap(config), files, "forward")
    elif fmt == "original":
        name, config, module, report = _load_original(where, config_from, revision, token, component)
        files = [where]
    else:
        arch, config, _ = read_native(where)
        files = [where]
        module = _build(arch, config)
        report = _fill_native(module, files)
    module = module.to(dtype).eval()
    return module, LoadedInfo(name if fmt == "original" else arch.name, fmt, files, report, config)


def _fill_native(module: nn.Module, files: list[Path]) -> None:
    """Native files use the module's own names: check key set and shapes, then assign."""
    state = hub.load_state_dict(files)
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    bad = [f"{k}: got {tuple(state[k].shape)}, expected {tuple(own[k].shape)}" for k in own
           if k in state and state[k].shape != own[k].shape]
    if missing or extra or bad:
        raise CheckpointError(f"{files[0]} does not fit {type(module).__name__}: missing keys {missing[:10]}, "
                              f"unexpected keys {extra[:10]}, shape mismatches {bad[:10]}")
    module.load_state_dict(state, assign=True)


def load_model(path: str | os.PathLike, subfolder: str | None = None, torch_dtype=None, variant: str | None = None,
               revision: str | None = None, token: str | None = None, config_from=None,
               component: str | None = None) -> nn.Module:
    """Load a model from a diffusers folder / hub repo (``subfolder="unet"``), a vidcore native file, or an
    original ModelScope / I2VGen-XL UNet checkpoint file.

    >>> unet = vidcore.load_model("cerspense/zeroscope_v2_576w", subfolder="unet", torch_dtype=torch.float16)
    >>> unet = vidcore.load_model("i2vgen_xl_00854500.pth")  # config: ali-vilab/i2vgen-xl's unet
    >>> unet = vidcore.load_model("text2video_pytorch_model.pth", config_from="my-unet/config.json")
    >>> vae = vidcore.load_model("svd_xt.safetensors", component="vae")  # sgm file: "unet" (default) / "vae"
    >>> clip = vidcore.load_model("svd_xt.safetensors", component="image_encoder")  # transformers CLIPVision...
    >>> adapter = vidcore.load_model("mm_sd_v15_v2.ckpt")  # AnimateDiff motion module, config read from its keys
    >>> unet = vidcore.load_model("dreamshaper_8.safetensors")  # LDM SD1.5 file: "unet" / "vae" / "text_encoder"

    ``config_from`` (original checkpoints only): a diffusers model folder, a pipeline folder (its
    ``unet/``, ``vae/`` or ``image_encoder/``), a ``config.json`` path, a hub repo id or a dict giving the
    architecture.
    ``component`` (original Stable Video Diffusion files only): which of the file's models to load.
    """
    return load_model_with_info(path, subfolder, torch_dtype, variant, revision, token, config_from, component)[0]


# -- writing ------------------------------------------------------------------------------------------

def architecture_of(module: nn.Module) -> Architecture:
    for arch in ARCHITECTURES:
        if type(module) is arch.module:
            return arch
    raise TypeError(f"no conversion map for {type(module).__name__}")


def _temp_file(folder: Path, name: str) -> tuple[int, str]:
    """A temp file beside the destination, with normal (umask) permissions instead of mkstemp's 0600."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp


def _atomic_save(tensors: dict, path: Path, metadata: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_file(path.parent, path.name)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_native(module: nn.Module, path: str | os.PathLike, diffusers_config: dict | None = None) -> Path:
    """Write ``module`` as one native safetensors file (config in the metadata), atomically."""
    arch = architecture_of(module)
    config = diffusers_config or module.config.to_diffusers_config()
    meta = {"format": "pt", "vidcore_architecture": arch.name, "diffusers_config": json.dumps(config)}
    path = Path(path)
    _atomic_save(module.state_dict(), path, meta)
    return path


def save_diffusers(module: nn.Module, folder: str | os.PathLike, diffusers_config: dict | None = None) -> Path:
    """Write ``module`` as a diffusers model folder (config.json + diffusion_pytorch_model.safetensors)."""
    arch = architecture_of(module)
    config = diffusers_config or module.config.to_diffusers_config()
    state, _ = arch.keymap(config).convert(module.state_dict(), None, direction="reverse")
    folder = Path(folder)
    _atomic_save(state, folder / "diffusion_pytorch_model.safetensors", {"format": "pt"})
    fd, tmp = _temp_file(folder, "config.json")
    with os.fdopen(fd, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    os.replace(tmp, folder / "config.json")
    return folder


def original_state_dict(module: nn.Module, diffusers_config: dict | None = None) -> dict[str, torch.Tensor]:
    """``module``'s tensors under its original single-file key names (sgm SVD components prefixed with
    ``model.diffusion_model.`` / ``first_stage_model.`` / ``conditioner.embedders.0.open_clip.model.visual.``,
    so a UNet's, a VAE's and an image encoder's (transformers ``CLIPVisionModelWithProjection``) can be
    merged into one file)."""
    if _is_image_encoder(module):
        state, _ = original_svd.open_clip_vision_map().convert(module.state_dict(), None, direction="reverse")
        return {original_svd.IMAGE_ENCODER_PREFIX + k: v.contiguous() for k, v in state.items()}
    if _is_text_encoder(module):
        own = module.state_dict()
        state, _ = original_sd.clip_text_map(own).convert(own, None, direction="reverse")
        return {original_sd.TEXT_ENCODER_PREFIX + k: v.contiguous() for k, v in state.items()}
    arch = architecture_of(module)
    config = diffusers_config or module.config.to_diffusers_config()
    state, _ = original_keymap(arch, config).convert(module.state_dict(), None, direction="reverse")
    if arch.name == "svd_vae" and original_svd.is_identity_quant_conv(state):
        state = {k: v for k, v in state.items() if not k.startswith("quant_conv.")}  # sgm has none
    prefix = ORIGINAL_FORMATS[arch.name].prefix
    return {prefix + k: v.contiguous() for k, v in state.items()}


def save_original(module: nn.Module, path: str | os.PathLike, diffusers_config: dict | None = None) -> Path:
    """Write a model in its original single-file layout (ModelScope / VGen / sgm key names), atomically:
    ``.safetensors`` -> a flat safetensors file; any other suffix -> ``torch.save`` of the state dict,
    wrapped in ``{"state_dict": ...}`` for I2VGen-XL as VGen's release is. An SVD UNet, VAE or image
    encoder is written alone with its sgm prefix; merge :func:`original_state_dict` of each for a whole
    sgm file."""
    state = original_state_dict(module, diffusers_config)
    wrap = (not (_is_image_encoder(module) or _is_text_encoder(module))
            and architecture_of(module).name == "i2vgen_xl_unet")
    path = Path(path)
    if path.suffix == ".safetensors":
        _atomic_save(state, path, {"format": "pt"})
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_file(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"state_dict": state} if wrap else state, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
