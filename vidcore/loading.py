"""``load_model``: find out what a checkpoint is, convert it with its key map, return the native module.

Formats understood:

* a diffusers model folder (``config.json`` with ``_class_name`` + weights in diffusers naming);
* a diffusers pipeline folder plus ``subfolder`` (``unet``, ``vae``);
* vidcore's native file: one ``.safetensors`` whose metadata holds the architecture and config.

Weights are converted and checked completely before the module is filled, so a bad checkpoint
raises a :class:`~vidcore.errors.CheckpointError` naming the file, key or shape, and nothing is
half-loaded.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from conversion.engine import ConversionReport, KeyMap, load_into
from conversion.maps.diffusers_i2vgen import I2VGEN_MAP
from conversion.maps.diffusers_svd import SVD_UNET_MAP
from conversion.maps.diffusers_unet3d import UNET3D_MAP
from conversion.maps.diffusers_vae import VAE_MAP

from . import hub
from .errors import CheckpointError, ConfigError, ConversionError, ModelNotFoundError
from .models.i2vgen_unet import I2VGenXLConfig, I2VGenXLUNet
from .models.svd_unet import SVDUNet, SVDUNetConfig
from .models.unet3d import UNet3D, UNet3DConfig
from .models.vae import AutoencoderKL, AutoencoderKLConfig


@dataclass(frozen=True)
class Architecture:
    name: str  # vidcore's name, stored in native files
    diffusers_class: str
    module: type[nn.Module]
    config: type
    diffusers_map: KeyMap


ARCHITECTURES = [
    Architecture("unet3d", "UNet3DConditionModel", UNet3D, UNet3DConfig, UNET3D_MAP),
    Architecture("i2vgen_xl_unet", "I2VGenXLUNet", I2VGenXLUNet, I2VGenXLConfig, I2VGEN_MAP),
    Architecture("svd_unet", "UNetSpatioTemporalConditionModel", SVDUNet, SVDUNetConfig, SVD_UNET_MAP),
    Architecture("autoencoder_kl", "AutoencoderKL", AutoencoderKL, AutoencoderKLConfig, VAE_MAP),
]
BY_DIFFUSERS = {a.diffusers_class: a for a in ARCHITECTURES}
BY_NAME = {a.name: a for a in ARCHITECTURES}
NATIVE_WEIGHTS = "model.safetensors"


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
    try:
        cfg = arch.config.from_diffusers_config(diffusers_config)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid {arch.diffusers_class} config: {err}") from err
    with torch.device("meta"):
        return arch.module(cfg)


def _fill(module: nn.Module, state_dict: dict, keymap: KeyMap, files: list[Path], direction: str) -> ConversionReport:
    try:
        return load_into(module, state_dict, keymap, direction=direction, assign=True)
    except ConversionError as err:
        names = ", ".join(str(f) for f in files)
        raise ConversionError(f"{names} does not fit {type(module).__name__}: {err}", err.report) from err


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


def load_model_with_info(path: str | os.PathLike, subfolder: str | None = None, torch_dtype=None,
                         variant: str | None = None, revision: str | None = None, token: str | None = None,
                         ) -> tuple[nn.Module, LoadedInfo]:
    dtype = hub.parse_dtype(torch_dtype) or torch.float32
    where, fmt = _locate(path, subfolder, variant, revision, token)
    if fmt == "diffusers":
        config = hub.load_config(where)
        arch = _architecture_for(config, where / "config.json")
        files = hub.weight_files(where, variant=variant)
        module = _build(arch, config)
        report = _fill(module, hub.load_state_dict(files), arch.diffusers_map, files, "forward")
    else:
        arch, config, _ = read_native(where)
        files = [where]
        module = _build(arch, config)
        report = _fill_native(module, files)
    module = module.to(dtype).eval()
    return module, LoadedInfo(arch.name, fmt, files, report, config)


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
               revision: str | None = None, token: str | None = None) -> nn.Module:
    """Load a model from a diffusers folder / hub repo (``subfolder="unet"``) or a vidcore native file.

    >>> unet = vidcore.load_model("cerspense/zeroscope_v2_576w", subfolder="unet", torch_dtype=torch.float16)
    """
    return load_model_with_info(path, subfolder, torch_dtype, variant, revision, token)[0]


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
    state, _ = arch.diffusers_map.convert(module.state_dict(), None, direction="reverse")
    folder = Path(folder)
    config = diffusers_config or module.config.to_diffusers_config()
    _atomic_save(state, folder / "diffusion_pytorch_model.safetensors", {"format": "pt"})
    fd, tmp = _temp_file(folder, "config.json")
    with os.fdopen(fd, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    os.replace(tmp, folder / "config.json")
    return folder
