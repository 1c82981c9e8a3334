"""Writing models: vidcore's native file (one safetensors with the architecture and config in its metadata), a
diffusers folder, or the original single-file layout (ModelScope / VGen / sgm / LDM / AnimateDiff key names), each
written atomically (temp file beside the target, then rename), so a failed write leaves nothing half-done."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..conversion.maps import original_sd, original_svd
from ..conversion.maps.diffusers_unet_motion import merge_config
from ..errors import ArgumentError
from ..models.motion import UNetMotion
from .architectures import ORIGINAL_FORMATS, architecture_of, is_image_encoder, is_text_encoder, original_keymap


def _temp_file(folder: Path, name: str) -> tuple[int, str]:
    """A temp file beside the destination, with normal (umask) permissions instead of mkstemp's 0600."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp


def atomic_save(tensors: dict, path: Path, metadata: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_file(path.parent, path.name)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()``, refused while it carries LoRA training branches (``vidcore.training.add_lora``):
    their tensors have no place in a model file, and a folder holding them would not load back."""
    state = module.state_dict()
    branches = [k for k in state if ".lora.down." in k or ".lora.up." in k]
    if branches:
        raise ArgumentError(f"{type(module).__name__} carries LoRA training branches ({branches[0]} ...): "
                            "vidcore.training.merge_lora() bakes them into the weights, save_lora() writes the "
                            "LoRA alone, remove_lora() drops them")
    return state


def save_native(module: nn.Module, path: str | os.PathLike, diffusers_config: dict | None = None) -> Path:
    """Write ``module`` as one native safetensors file (config in the metadata), atomically."""
    arch = architecture_of(module)
    config = diffusers_config or module.config.to_diffusers_config()
    meta = {"format": "pt", "vidcore_architecture": arch.name, "diffusers_config": json.dumps(config)}
    path = Path(path)
    atomic_save(_state(module), path, meta)
    return path


def save_diffusers(module: nn.Module, folder: str | os.PathLike, diffusers_config: dict | None = None,
                   variant: str | None = None) -> Path:
    """Write ``module`` as a diffusers model folder (config.json + diffusion_pytorch_model[.variant].safetensors)."""
    arch = architecture_of(module)
    config = diffusers_config or module.config.to_diffusers_config()
    state, _ = arch.keymap(config).convert(_state(module), None, direction="reverse")
    folder = Path(folder)
    weights = f"diffusion_pytorch_model.{variant}.safetensors" if variant else "diffusion_pytorch_model.safetensors"
    atomic_save(state, folder / weights, {"format": "pt"})
    fd, tmp = _temp_file(folder, "config.json")
    with os.fdopen(fd, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    os.replace(tmp, folder / "config.json")
    return folder


def save_diffusers_unet_motion(model: UNetMotion, folder: str | os.PathLike, variant: str | None = None) -> Path:
    """Write a ``UNetMotion`` as one diffusers ``UNetMotionModel`` folder (the SD UNet's and the motion modules'
    tensors under their diffusers names, the merged config), as a saved diffusers AnimateDiff pipeline's ``unet/``."""
    configs = [model.unet.config.to_diffusers_config(), model.adapter.config.to_diffusers_config()]
    state = {}
    for module, config in zip((model.unet, model.adapter), configs):
        part, _ = architecture_of(module).keymap(config).convert(_state(module), None, direction="reverse")
        state.update(part)
    folder = Path(folder)
    weights = f"diffusion_pytorch_model.{variant}.safetensors" if variant else "diffusion_pytorch_model.safetensors"
    atomic_save(state, folder / weights, {"format": "pt"})
    fd, tmp = _temp_file(folder, "config.json")
    with os.fdopen(fd, "w") as f:
        json.dump(merge_config(*configs), f, indent=2, sort_keys=True)
    os.replace(tmp, folder / "config.json")
    return folder


def original_state_dict(module: nn.Module, diffusers_config: dict | None = None) -> dict[str, torch.Tensor]:
    """``module``'s tensors under its original single-file key names (sgm SVD components prefixed with
    ``model.diffusion_model.`` / ``first_stage_model.`` / ``conditioner.embedders.0.open_clip.model.visual.``,
    so a UNet's, a VAE's and an image encoder's (transformers ``CLIPVisionModelWithProjection``) can be
    merged into one file)."""
    if is_image_encoder(module):
        state, _ = original_svd.open_clip_vision_map().convert(_state(module), None, direction="reverse")
        return {original_svd.IMAGE_ENCODER_PREFIX + k: v.contiguous() for k, v in state.items()}
    if is_text_encoder(module):
        own = _state(module)
        state, _ = original_sd.clip_text_map(own).convert(own, None, direction="reverse")
        return {original_sd.TEXT_ENCODER_PREFIX + k: v.contiguous() for k, v in state.items()}
    arch = architecture_of(module)
    config = diffusers_config or module.config.to_diffusers_config()
    state, _ = original_keymap(arch, config).convert(_state(module), None, direction="reverse")
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
    wrap = (not (is_image_encoder(module) or is_text_encoder(module))
            and architecture_of(module).name == "i2vgen_xl_unet")
    path = Path(path)
    if path.suffix == ".safetensors":
        atomic_save(state, path, {"format": "pt"})
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
