"""``load_model``: find out what a checkpoint is (a diffusers folder, a vidcore native file, an original single file),
convert it with its key map, return the native module.

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
half-loaded. (The conversions themselves: :mod:`vidcore.loading.originals`; a saved AnimateDiff pipeline's
``UNetMotionModel`` folder: :func:`load_unet_motion`.)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .. import hub
from ..conversion.engine import ConversionReport
from ..conversion.maps.diffusers_unet_motion import split_config, split_state_dict
from ..errors import CheckpointError, ConfigError
from ..models.motion import UNetMotion
from ..models.sparse_controlnet import add_missing_position_tables
from .architectures import BY_NAME, Architecture, architecture_for, build, fill
from .files import has_native_metadata, locate
from .originals import load_original


@dataclass
class LoadedInfo:
    """What ``inspect`` reports about a checkpoint."""

    architecture: str
    source_format: str
    files: list[Path]
    report: ConversionReport | None
    diffusers_config: dict


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


def load_model_with_info(path: str | os.PathLike, subfolder: str | None = None, torch_dtype=None,
                         variant: str | None = None, revision: str | None = None, token: str | None = None,
                         config_from=None, component: str | None = None) -> tuple[nn.Module, LoadedInfo]:
    dtype = hub.parse_dtype(torch_dtype) or torch.float32
    where, fmt = locate(path, subfolder, revision, token)
    if fmt == "vidcore" and where.is_file() and not has_native_metadata(where):
        fmt = "original"
    if component is not None and fmt != "original":
        raise ValueError(f"component={component!r} applies to original single files (Stable Video Diffusion, "
                         f"AnimateDiff motion modules); {where} is a {fmt} checkpoint (use subfolder= for a "
                         "pipeline folder)")
    if fmt == "diffusers":
        config = hub.load_config(where)
        arch = architecture_for(config, where / "config.json")
        files = hub.weight_files(where, variant=variant)
        module = build(arch, config)
        state = hub.load_state_dict(files)
        if arch.name == "sparse_controlnet":  # some hub conversions lack the (fixed) frame-position tables
            state = add_missing_position_tables(state, module.config)
        report = fill(module, state, arch.keymap(config), files)
    elif fmt == "original":
        name, config, module, report = load_original(where, config_from, revision, token, component)
        files = [where]
    else:
        arch, config, _ = read_native(where)
        files = [where]
        module = build(arch, config)
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


def load_unet_motion(folder: str | os.PathLike, torch_dtype=None, variant: str | None = None) -> UNetMotion:
    """A diffusers ``UNetMotionModel`` folder (a saved AnimateDiff pipeline's ``unet/``) -> ``UNetMotion``:
    its SD tensors go through the UNet2D map, its ``motion_modules`` through the MotionAdapter map."""
    folder = Path(folder)
    try:
        unet_config, adapter_config = split_config(hub.load_config(folder))
    except ValueError as err:
        raise ConfigError(f"{folder / 'config.json'}: {err}") from err
    files = hub.weight_files(folder, variant=variant)
    unet_state, motion_state = split_state_dict(hub.load_state_dict(files))
    modules = []
    for name, config, state in (("unet2d", unet_config, unet_state), ("motion_adapter", adapter_config, motion_state)):
        arch = BY_NAME[name]
        module = build(arch, config)
        fill(module, state, arch.keymap(config), files)
        modules.append(module.to(hub.parse_dtype(torch_dtype) or torch.float32).eval())
    return UNetMotion(*modules)
