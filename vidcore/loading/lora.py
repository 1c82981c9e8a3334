"""LoRA files (motion LoRAs, spatial SD LoRAs, LoRAs trained with :mod:`vidcore.training`): a LoRA from a file
(``.safetensors``, or a pickled ``.ckpt`` read with ``weights_only=True``), a folder or a hub repo, for
:mod:`vidcore.models.lora` (which fuses a loaded LoRA and reads no files)."""

from __future__ import annotations

import os
from typing import Mapping

import torch
from torch import nn

from .. import hub
from ..errors import ModelNotFoundError
from ..models import lora as model_lora
from ..models.lora import LoRA
from .files import read_single_file_raw

WEIGHT_NAMES = ("pytorch_lora_weights.safetensors", "diffusion_pytorch_model.safetensors",
                "pytorch_lora_weights.bin", "diffusion_pytorch_model.bin")


def load_lora(path_or_repo: str | os.PathLike | Mapping[str, torch.Tensor], weight_name: str | None = None,
                     revision: str | None = None, token: str | None = None) -> LoRA:
    """A LoRA from a file, a folder or hub repo (``weight_name`` or the usual diffusers LoRA file names), or
    a state dict."""
    if isinstance(path_or_repo, Mapping):
        return LoRA.from_state_dict(path_or_repo)
    patterns = [weight_name] if weight_name else [*WEIGHT_NAMES, "*.safetensors", "*.ckpt"]
    root = hub.resolve(path_or_repo, allow_patterns=patterns, revision=revision, token=token)
    if root.is_dir():
        names = [weight_name] if weight_name else list(WEIGHT_NAMES)
        found = next((root / n for n in names if (root / n).is_file()), None)
        if found is None and not weight_name:
            files = sorted(p for p in root.iterdir() if p.suffix in (".safetensors", ".ckpt", ".pt", ".pth", ".bin"))
            found = files[0] if len(files) == 1 else None
        if found is None:
            raise ModelNotFoundError(f"{root}: no LoRA weight file (looked for {names}); pass weight_name=")
        root = found
    return LoRA.from_state_dict(read_single_file_raw(root), str(root))


def fuse_lora(model: nn.Module, lora: LoRA | str | os.PathLike | Mapping[str, torch.Tensor],
              scale: float = 1.0) -> LoRA:
    """:func:`vidcore.models.lora.fuse_lora` that also takes a file, folder or hub repo id
    (:func:`load_lora` reads it first). Returns the LoRA."""
    if isinstance(lora, (str, os.PathLike)):
        lora = load_lora(lora)
    return model_lora.fuse_lora(model, lora, scale)


load_motion_lora = load_lora  # the old name, kept: the LoRAs it reads are motion and spatial ones
