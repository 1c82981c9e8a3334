"""What vidcore can build: every architecture with its config class and diffusers key map, the original
single-file layouts, and the two steps every loader shares (build a module on the meta device from a config, fill
it through a key map, checked completely before any tensor is assigned)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from ..conversion.engine import ChainedMap, ConversionReport, KeyMap, load_into
from ..conversion.maps import (original_controlnet, original_modelscope, original_motion, original_sd,
                               original_sparsectrl, original_svd)
from ..conversion.maps.diffusers_controlnet import CONTROLNET_CONV_MAP, controlnet_map
from ..conversion.maps.diffusers_i2vgen import I2VGEN_MAP
from ..conversion.maps.diffusers_motion import MOTION_ADAPTER_MAP
from ..conversion.maps.diffusers_sparse_controlnet import SPARSE_CONTROLNET_MAP, sparse_controlnet_map
from ..conversion.maps.diffusers_svd import SVD_UNET_MAP
from ..conversion.maps.diffusers_svd_vae import SVD_VAE_MAP
from ..conversion.maps.diffusers_unet2d import UNET2D_CONV_MAP, unet2d_map
from ..conversion.maps.diffusers_unet3d import UNET3D_MAP
from ..conversion.maps.diffusers_vae import VAE_MAP
from ..errors import ConfigError, ConversionError
from ..models.controlnet import ControlNet, ControlNetConfig
from ..models.i2vgen_unet import I2VGenXLConfig, I2VGenXLUNet
from ..models.motion import MOTION_ORIGINAL_DESCRIPTION, MotionAdapter, MotionAdapterConfig
from ..models.sparse_controlnet import SparseControlNet, SparseControlNetConfig
from ..models.svd_unet import SVDUNet, SVDUNetConfig
from ..models.svd_vae import AutoencoderKLTemporalDecoder, AutoencoderKLTemporalDecoderConfig
from ..models.unet2d import UNet2D, UNet2DConfig
from ..models.unet3d import UNet3D, UNet3DConfig
from ..models.vae import AutoencoderKL, AutoencoderKLConfig
from .files import NATIVE_WEIGHTS  # noqa: F401  (the native folder layout, named with the architectures)


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


def architecture_for(config: dict, where: Path) -> Architecture:
    """The architecture of a diffusers ``config.json`` (its ``_class_name``); ``where`` names it in the error."""
    name = config.get("_class_name")
    if name not in BY_DIFFUSERS:
        raise ConfigError(f"{where}: unsupported model class {name!r}; vidcore can load {sorted(BY_DIFFUSERS)}")
    return BY_DIFFUSERS[name]


def architecture_of(module: nn.Module) -> Architecture:
    for arch in ARCHITECTURES:
        if type(module) is arch.module:
            return arch
    raise TypeError(f"no conversion map for {type(module).__name__}")


def build_on_meta(module_cls: type[nn.Module], config_cls: type, diffusers_config: Mapping, class_name: str) -> nn.Module:
    """``module_cls(config_cls.from_diffusers_config(diffusers_config))`` on the meta device (``fill`` assigns the
    weights); a bad config raises a ConfigError naming ``class_name``."""
    try:
        cfg = config_cls.from_diffusers_config(diffusers_config)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid {class_name} config: {err}") from err
    with torch.device("meta"):
        return module_cls(cfg)


def fill(module: nn.Module, state_dict: dict, keymap: KeyMap | ChainedMap, files: list[Path],
         direction: str = "forward") -> ConversionReport:
    """Convert ``state_dict`` with ``keymap`` into ``module`` (checked completely before any tensor is assigned);
    a mismatch raises a ConversionError naming ``files``."""
    try:
        return load_into(module, state_dict, keymap, direction=direction, assign=True)
    except ConversionError as err:
        names = ", ".join(str(f) for f in files)
        raise ConversionError(f"{names} does not fit {type(module).__name__}: {err}", err.report) from err


def build(arch: Architecture, diffusers_config: Mapping) -> nn.Module:
    """``arch``'s module for ``diffusers_config``, on the meta device (:func:`fill` gives it its weights)."""
    return build_on_meta(arch.module, arch.config, diffusers_config, arch.diffusers_class)


def original_keymap(arch: Architecture, diffusers_config: Mapping) -> ChainedMap:
    """original names -> diffusers names -> vidcore names, for `diffusers_config`'s block layout."""
    if arch.name not in ORIGINAL_FORMATS:
        raise TypeError(f"{arch.name} has no original single-file layout (known: {sorted(ORIGINAL_FORMATS)})")
    return ChainedMap([ORIGINAL_FORMATS[arch.name].keymap(diffusers_config), arch.keymap(diffusers_config)])


def is_image_encoder(module: nn.Module) -> bool:
    """A transformers CLIPVisionModelWithProjection (transformers is imported if such a module exists)."""
    if "transformers" not in sys.modules:
        return False
    from transformers import CLIPVisionModelWithProjection

    return isinstance(module, CLIPVisionModelWithProjection)


def is_text_encoder(module: nn.Module) -> bool:
    """A transformers CLIPTextModel (transformers is imported if such a module exists)."""
    if "transformers" not in sys.modules:
        return False
    from transformers import CLIPTextModel

    return isinstance(module, CLIPTextModel)
