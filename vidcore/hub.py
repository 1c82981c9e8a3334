"""Finding and reading weights: local folders or hub repos, diffusers file naming, safe loading.

Loading is safe by construction: safetensors by default, and pickled `.bin/.ckpt/.pth` files only
through `torch.load(weights_only=True)`, which refuses anything but tensors and plain containers.
Nothing from a checkpoint or a repo is ever executed.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import torch

from vidcore.errors import CheckpointError, ConfigError, ModelNotFoundError

# --------------------------------------------------------------------------- dtypes

_DTYPES = {
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp64": torch.float64, "float64": torch.float64, "double": torch.float64,
}  # fmt: skip


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """"fp16" / "float16" / "torch.float16" / torch.float16 -> torch.float16; None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key in _DTYPES:
            return _DTYPES[key]
    raise ValueError(f"torch_dtype must be a torch.dtype or one of {sorted(_DTYPES)}, got {dtype!r}")


# --------------------------------------------------------------------------- locating a model


def _offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; read it per call so it can be set late.
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_failure_reason(err: Exception, revision: str | None, offline: bool) -> str:
    from huggingface_hub.utils import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(err, HFValidationError):
        return "not a valid hub repo id"
    if isinstance(err, GatedRepoError):
        return "gated repo: accept its license on the hub and pass token= or log in with `hf auth login`"
    if isinstance(err, RepositoryNotFoundError):
        return "repo not found, or private and no valid token given"
    if isinstance(err, RevisionNotFoundError):
        return f"revision {revision!r} not found"
    if isinstance(err, LocalEntryNotFoundError):
        if offline:
            return "HF_HUB_OFFLINE is set and it is not in the local cache"
        return "hub unreachable and it is not in the local cache"
    first_line = (str(err).strip().splitlines() or [""])[0][:200]
    return f"{type(err).__name__}: {first_line}" if first_line else type(err).__name__


def resolve(
    path_or_repo: str | os.PathLike,
    subfolder: str | None = None,
    allow_patterns: Sequence[str] | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """Local folder/file, or hub repo id -> local Path (of `subfolder` when given).

    A path that exists locally always wins. Otherwise the hub snapshot is fetched with
    `huggingface_hub.snapshot_download` (the cache is used when offline, or when
    `HF_HUB_OFFLINE=1` / `local_files_only=True`). `allow_patterns` are relative to `subfolder`;
    with a subfolder and no patterns only that subfolder is downloaded.
    """
    name = os.fspath(path_or_repo)
    local = Path(name).expanduser()
    if local.exists():
        base = local
    else:
        from huggingface_hub import snapshot_download

        patterns = list(allow_patterns) if allow_patterns is not None else None
        if subfolder:
            sub = subfolder.strip("/")
            patterns = [f"{sub}/{p}" for p in patterns] if patterns is not None else [f"{sub}/*"]
        offline = _offline() if local_files_only is None else local_files_only
        try:
            base = Path(
                snapshot_download(
                    name,
                    revision=revision,
                    token=token,
                    allow_patterns=patterns,
                    cache_dir=cache_dir,
                    local_files_only=offline,
                )
            )
        except Exception as err:  # huggingface_hub raises many kinds; all mean "not available"
            reason = _hub_failure_reason(err, revision, offline)
            raise ModelNotFoundError(
                f"model '{name}' is not a local folder and could not be fetched from the hub ({reason})"
            ) from err
    if not subfolder:
        return base
    folder = base / subfolder
    if not folder.is_dir():
        raise ModelNotFoundError(f"model '{name}' has no subfolder '{subfolder}' (looked in {base})")
    return folder


# --------------------------------------------------------------------------- weight files

_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pth", ".pt")


def _candidates(stem: str, variant: str | None) -> list[str]:
    """File names in the order diffusers prefers them: safetensors (index, then single) before pickles.

    diffusers writes variant shards as `{stem}.{v}-00001-of-00002.safetensors` with the index
    `{stem}.safetensors.index.{v}.json`; older releases wrote the index as `{stem}.safetensors.{v}.index.json`.
    """
    if variant is None:
        return [
            f"{stem}.safetensors.index.json", f"{stem}.safetensors",
            f"{stem}.bin.index.json", f"{stem}.bin", f"{stem}.ckpt", f"{stem}.pth",
        ]  # fmt: skip
    v = variant
    return [
        f"{stem}.safetensors.index.{v}.json", f"{stem}.safetensors.{v}.index.json", f"{stem}.{v}.safetensors",
        f"{stem}.bin.index.{v}.json", f"{stem}.bin.{v}.index.json", f"{stem}.{v}.bin",
        f"{stem}.{v}.ckpt", f"{stem}.{v}.pth",
    ]  # fmt: skip


def _shards(index: Path) -> list[Path]:
    """Shard files listed by a sharded-checkpoint index, checked to exist beside it."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{index}: not a valid sharded-checkpoint index ({type(err).__name__}: {err})") from err
    for n in names:
        if not isinstance(n, str) or os.path.basename(n) != n or n in ("", ".", ".."):
            raise CheckpointError(f"{index}: refusing shard name {n!r}; shards must be plain file names in the folder")
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise CheckpointError(f"{index}: shard file(s) listed in the index are missing: {', '.join(missing)}")
    return [index.parent / n for n in names]


def weight_files(
    folder: str | os.PathLike, variant: str | None = None, stem: str = "diffusion_pytorch_model"
) -> list[Path]:
    """The weight files of one model folder, following diffusers' naming.

    A file path is returned as is. When `variant` files are absent the plain files are used with a
    warning — what a diffusers pipeline does for a component that has no such variant.
    """
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise ModelNotFoundError(f"model folder '{folder}' does not exist")
    chains = [variant, None] if variant is not None else [None]
    for v in chains:
        for name in _candidates(stem, v):
            path = folder / name
            if not path.is_file():
                continue
            if v is None and variant is not None:
                warnings.warn(
                    f"no '{variant}' variant weights in {folder}; loading {name} instead", stacklevel=2
                )
            return _shards(path) if name.endswith(".json") else [path]
    tried = ", ".join(_candidates(stem, variant)[:3] + ["..."])
    raise ModelNotFoundError(f"no weights found in '{folder}' (looked for {tried})")


# --------------------------------------------------------------------------- reading weights


def _load_safetensors(path: Path, device: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except Exception as err:  # SafetensorError / OSError / ValueError depending on the damage
        if isinstance(err, FileNotFoundError):
            raise ModelNotFoundError(f"weight file '{path}' does not exist") from err
        raise CheckpointError(
            f"{path}: safetensors file is corrupt or truncated ({type(err).__name__}: {err})"
        ) from err


def _load_pickle(path: Path, device: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" not in str(err).lower():
            raise CheckpointError(f"{path}: pickled checkpoint is corrupt or truncated ({err})") from err
        # weights_only refused a global (a function or class): the file would run code when unpickled.
        # Keep torch's detail line but not its advice to retry with weights_only=False.
        detail = next((ln.strip() for ln in str(err).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
        raise CheckpointError(
            f"refusing to load {path}: it contains code or unsupported objects; only tensors and plain "
            f"containers are allowed in pickled checkpoints (prefer safetensors). {detail}".rstrip()
        ) from err
    except FileNotFoundError as err:
        raise ModelNotFoundError(f"weight file '{path}' does not exist") from err
    except Exception as err:
        raise CheckpointError(f"{path}: pickled checkpoint is corrupt or truncated ({type(err).__name__}: {err})") from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    dropped = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if dropped:
        warnings.warn(f"{path}: ignoring non-tensor entries {dropped[:10]}", stacklevel=3)
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_state_dict(
    files_or_file: str | os.PathLike | Iterable[str | os.PathLike], device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """Read one weight file or a list of shards into one state dict (safely; see module docstring)."""
    if isinstance(files_or_file, (str, os.PathLike)):
        files = [Path(files_or_file)]
    else:
        files = [Path(f) for f in files_or_file]
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
    for path in files:
        part = _load_safetensors(path, device) if path.suffix == ".safetensors" else _load_pickle(path, device)
        for key, tensor in part.items():
            if key in origin:
                raise CheckpointError(f"key '{key}' appears in two shards: {origin[key]} and {path}")
            origin[key] = path
            out[key] = tensor
    return out


def load_config(folder: str | os.PathLike, name: str = "config.json") -> dict:
    """Read `folder/name` (or `folder` itself when it is a file) as a JSON object."""
    path = Path(folder)
    if not path.is_file():
        path = path / name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ModelNotFoundError(f"config file '{path}' does not exist") from err
    try:
        config = json.loads(text)
    except ValueError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(config).__name__}")
    return config
