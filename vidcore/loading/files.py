"""Reading one weight file safely (safetensors, or a pickle through ``torch.load(weights_only=True)``), with the
wrapper dicts and key prefixes training code leaves, and finding the config a ``config_from`` names.

Everything in :mod:`vidcore.loading` that opens a single file goes through here, so the safety rule lives in one
place.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open

from .. import hub
from ..errors import CheckpointError, ConfigError, ModelNotFoundError

NATIVE_WEIGHTS = "model.safetensors"  # a vidcore native model folder's one file
_WRAPPERS = ("state_dict", "model", "module", "controlnet")  # controlnet: SparseCtrl .ckpt files
_LDM_PREFIX = "model.diffusion_model."


def torch_load_safely(path: Path) -> object:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise ModelNotFoundError(f"weight file '{path}' does not exist") from err
    except pickle.UnpicklingError as err:
        detail = next((ln.strip() for ln in str(err).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
        if "Unsupported operand" in detail:  # not a pickle opcode stream torch can read: garbage bytes
            raise CheckpointError(f"{path}: pickled checkpoint is corrupt or truncated ({detail})") from err
        if "weights only load failed" in str(err).lower():
            raise CheckpointError(
                f"refusing to load {path}: it contains code or unsupported objects; only tensors and plain "
                f"containers are allowed in pickled checkpoints (prefer safetensors). {detail}".rstrip()
            ) from err
        raise CheckpointError(f"{path}: pickled checkpoint is corrupt or truncated ({err})") from err
    except Exception as err:  # noqa: BLE001 - zip/EOF/runtime errors all mean a damaged file
        raise CheckpointError(
            f"{path}: pickled checkpoint is corrupt or truncated ({type(err).__name__}: {err})"
        ) from err


def read_single_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """One weight file -> flat state dict: unwraps ``{"state_dict"|"model"|"module": {...}}`` and the
    LDM ``model.diffusion_model.`` / DDP ``module.`` key prefixes; reads safely (see ``vidcore.hub``)."""
    return strip_prefixes(read_single_file_raw(path))


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(k.startswith(_LDM_PREFIX) for k in state):  # a full LDM checkpoint: keep the UNet
        state = {k[len(_LDM_PREFIX):]: v for k, v in state.items() if k.startswith(_LDM_PREFIX)}
    elif state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_single_file_raw(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """One weight file -> flat state dict with its keys as stored (wrapper dicts unwrapped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state = hub.load_state_dict(path)
    else:
        obj = torch_load_safely(path)
        for _ in range(len(_WRAPPERS)):
            if not isinstance(obj, dict) or any(isinstance(v, torch.Tensor) for v in obj.values()):
                break
            inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
        dropped = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        if dropped:
            warnings.warn(f"{path}: ignoring non-tensor entries {[str(k) for k in dropped[:10]]}", stacklevel=3)
        state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return state


def read_config_from(config_from, subfolder: str, revision: str | None = None, token: str | None = None,
                     purpose: str = "") -> tuple[dict, str]:
    """(config dict, where it came from) for ``config_from``: a dict, a ``config.json``, a model folder, a
    pipeline folder (its ``subfolder/config.json``) or a hub repo id (only those two files are fetched)."""
    if isinstance(config_from, Mapping):
        return dict(config_from), "config_from"
    root = hub.resolve(config_from, allow_patterns=["config.json", f"{subfolder}/config.json"], revision=revision,
                       token=token)
    candidates = [root] if root.is_file() else [root / "config.json", root / subfolder / "config.json"]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise ModelNotFoundError(f"config_from={os.fspath(config_from)!r}: no config.json (or "
                                 f"{subfolder}/config.json){purpose}")
    return hub.load_config(found), str(found)


def config_from_source(config_from, *, class_name: str, subfolder: str, description: str,
                       revision: str | None = None, token: str | None = None) -> dict:
    """The diffusers config that ``config_from`` names (see ``read_config_from``) for an original
    ``description`` checkpoint; it must be a ``class_name`` config (or have no ``_class_name``)."""
    config, where = read_config_from(config_from, subfolder, revision, token)
    name = config.get("_class_name", class_name)
    if name != class_name:
        raise ConfigError(f"{where} is a {name} config, but the checkpoint is an original {description} "
                          f"checkpoint; pass a {class_name} config")
    return {**config, "_class_name": class_name}


def locate(path, subfolder: str | None = None, revision: str | None = None, token=None) -> tuple[Path, str]:
    """(where, format) of a model: a diffusers folder (``config.json``), a vidcore native file (``model.safetensors``
    or any single file, told apart from an original one by :func:`has_native_metadata`); a pipeline folder without
    ``subfolder`` raises naming its components."""
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


def has_native_metadata(path: Path) -> bool:
    """Whether a single file is a vidcore native file (safetensors with vidcore metadata; unreadable: True, so
    reading it as native names the problem)."""
    if path.suffix != ".safetensors":
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return "vidcore_architecture" in (f.metadata() or {})
    except Exception:  # noqa: BLE001 - unreadable: read_native names the problem
        return True
