"""Textual-inversion embeddings from files, folders or hub repos: what
:meth:`~vidcore.pipelines.textual_inversion.TextualInversionMixin.load_textual_inversion` reads.

Layouts: diffusers' ``learned_embeds.safetensors`` / ``learned_embeds.bin`` (``{token: vector or n x d}``),
Automatic1111's ``.pt`` (``{"name": ..., "string_to_param": {"*": n x d}, ...}``) and ``.safetensors``
(``{"emb_params": n x d}``), a bare tensor, or a dict given directly. Safetensors are read first; pickled files
only with ``torch.load(weights_only=True)`` (design principle 6).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from .. import hub
from ..errors import CheckpointError, ModelNotFoundError
from .files import torch_load_safely

SAFE_NAME, PICKLE_NAME = "learned_embeds.safetensors", "learned_embeds.bin"
SUFFIXES = (".safetensors", ".pt", ".bin", ".pth", ".ckpt")


def _file(source: str | os.PathLike, weight_name: str | None, revision: str | None, token) -> Path:
    """The embedding file of a file path, a folder or a hub repo id (``weight_name``, else diffusers' names)."""
    names = [weight_name] if weight_name else [SAFE_NAME, PICKLE_NAME]
    local = Path(os.fspath(source)).expanduser()
    if local.is_file():
        return local
    root = local if local.is_dir() else hub.resolve(source, allow_patterns=names, revision=revision, token=token)
    found = next((root / n for n in names if (root / n).is_file()), None)
    if found is None and not weight_name:  # a folder with one embedding file of another name
        files = sorted(p for p in root.iterdir() if p.suffix in SUFFIXES)
        found = files[0] if len(files) == 1 else None
    if found is None:
        raise ModelNotFoundError(f"{root}: no textual-inversion file (looked for {names}); pass weight_name=")
    return found


def read_file(path: Path) -> Any:
    """A safetensors file as a dict; a pickled one through ``torch.load(weights_only=True)``."""
    if path.suffix == ".safetensors":
        return hub.load_state_dict(path)
    return torch_load_safely(path)


def token_and_embedding(state: Any, token: str | None, source: str) -> tuple[str, torch.Tensor]:
    """(token, ``n x d`` embedding) of one loaded object; ``token`` (when given) replaces the stored name."""
    if isinstance(state, torch.Tensor):
        if token is None:
            raise ValueError(f"{source} is a bare tensor: pass token=... (the word that will stand for it)")
        stored, embedding = token, state
    elif isinstance(state, Mapping) and "string_to_param" in state:  # Automatic1111 .pt
        stored, embedding = state.get("name"), state["string_to_param"]["*"]
    elif isinstance(state, Mapping) and len(state) == 1:  # diffusers {token: vector}, A1111 {"emb_params": ...}
        stored, embedding = next(iter(state.items()))
    else:
        keys = sorted(map(str, state))[:10] if isinstance(state, Mapping) else type(state).__name__
        raise CheckpointError(f"{source}: not a textual-inversion embedding (expected one {{token: tensor}} entry or "
                              f"Automatic1111's 'string_to_param'; found {keys})")
    if not isinstance(embedding, torch.Tensor) or embedding.ndim not in (1, 2):
        raise CheckpointError(f"{source}: the embedding must be a d or n x d tensor")
    name = token if token is not None else stored
    if not isinstance(name, str) or not name:
        raise ValueError(f"{source} names no token: pass token=...")
    return name, embedding.reshape(-1, embedding.shape[-1])


def read_textual_inversion(source, token: str | None = None, weight_name: str | None = None,
                           revision: str | None = None, hub_token=None) -> tuple[str, torch.Tensor]:
    """(token, ``n x d`` embedding) from a file, folder, hub repo id, dict or tensor (see the module docstring)."""
    if isinstance(source, (Mapping, torch.Tensor)):
        return token_and_embedding(source, token, "the given embedding")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"pretrained_model_name_or_path must be a path, a hub repo id, a dict or a tensor, got "
                        f"{type(source).__name__}")
    path = _file(source, weight_name, revision, hub_token)
    return token_and_embedding(read_file(path), token, str(path))


__all__ = ["read_textual_inversion", "token_and_embedding"]
