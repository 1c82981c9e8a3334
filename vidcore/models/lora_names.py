"""diffusers' name for each weight of a vidcore UNet: the one naming table LoRA files are read and written with.

LoRA files name their layers as diffusers does (``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``);
vidcore's modules are laid out differently. Rather than a second table, the model's own checkpoint key map is run
backwards over its parameter names (on the meta device, no memory): the same rules that load the model's weights
name them. ``vidcore.models.lora`` (fusing a LoRA file) and ``vidcore.training.lora`` (saving trained branches)
both use :func:`diffusers_weights`, so what one writes the other reads.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import nn

from ..conversion.maps.diffusers_i2vgen import I2VGEN_MAP
from ..conversion.maps.diffusers_motion import MOTION_ADAPTER_MAP
from ..conversion.maps.diffusers_svd import SVD_UNET_MAP
from ..conversion.maps.diffusers_unet2d import unet2d_map
from ..conversion.maps.diffusers_unet3d import UNET3D_MAP
from .i2vgen_unet import I2VGenXLUNet
from .motion import UNetMotion
from .svd_unet import SVDUNet
from .unet2d import UNet2D
from .unet3d import UNet3D

# the key map of each UNet class (a function of the model: SD UNets' projections are convs or linears by config)
KEYMAPS: dict[type, Callable[[nn.Module], object]] = {
    UNet3D: lambda m: UNET3D_MAP,
    I2VGenXLUNet: lambda m: I2VGEN_MAP,
    SVDUNet: lambda m: SVD_UNET_MAP,
    UNet2D: lambda m: unet2d_map(m.config.to_diffusers_config()),
}


class DiffusersWeight(NamedTuple):
    """A vidcore parameter's diffusers key (``...attn1.to_q.weight``) and its shape there (a 1x1 conv in diffusers
    can be a linear in vidcore: same numbers, another shape)."""

    key: str
    shape: torch.Size

    @property
    def layer(self) -> str:
        return self.key.removesuffix(".weight")


def check_unet(model: nn.Module) -> None:
    """TypeError unless ``model`` is a UNet whose layers have diffusers names here."""
    if not isinstance(model, UNetMotion) and type(model) not in KEYMAPS:
        raise TypeError(f"LoRA layers are named for vidcore's UNets ({', '.join(c.__name__ for c in KEYMAPS)}, "
                        f"UNetMotion), got {type(model).__name__}")


def _parts(model: nn.Module) -> list[tuple[str, nn.Module, object]]:
    check_unet(model)
    if isinstance(model, UNetMotion):  # diffusers' UNetMotionModel: the SD UNet's names plus the adapter's
        return [("unet.", model.unet, KEYMAPS[type(model.unet)](model.unet)),
                ("adapter.", model.adapter, MOTION_ADAPTER_MAP)]
    return [("", model, KEYMAPS[type(model)](model))]


def _is_lora_branch(name: str) -> bool:
    return ".lora." in f".{name}"  # vidcore.training's branches: ``...to_q.lora.down.weight``


def diffusers_weights(model: nn.Module) -> dict[str, DiffusersWeight]:
    """{vidcore parameter name (``unet.`` / ``adapter.`` first for a UNetMotion): its diffusers weight} for every
    ``.weight`` the key map renames one to one (weights a rule splits or fuses have no single diffusers name and
    are left out). Raises TypeError for a model that is not one of vidcore's UNets."""
    out = {}
    for prefix, module, keymap in _parts(model):
        meta = {k: torch.empty(p.shape, device="meta") for k, p in module.named_parameters()
                if k.endswith(".weight") and not _is_lora_branch(k)}
        converted, report = keymap.convert(meta, None, direction="reverse", strict=False)
        for key, target in report.mapping.items():
            if " + " not in target and target in converted:
                out[prefix + key] = DiffusersWeight(target, converted[target].shape)
    return out


def diffusers_layers(model: nn.Module) -> dict[str, str]:
    """{diffusers layer name (``...attn1.to_q``): vidcore parameter name} of :func:`diffusers_weights`."""
    return {w.layer: name for name, w in diffusers_weights(model).items()}
