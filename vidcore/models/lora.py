"""LoRA fused into any vidcore UNet's weights and unfused exactly: motion LoRAs for AnimateDiff
(guoyww/animatediff-motion-lora-zoom-in, v2_lora_PanLeft.ckpt ...), spatial SD LoRAs, and LoRAs trained on
ModelScope / Zeroscope (UNet3D), SVD (SVDUNet), I2VGen-XL (I2VGenXLUNet) or SD (UNet2D) UNets.

>>> lora = vidcore.load_lora("guoyww/animatediff-motion-lora-zoom-in")  # hub repo, folder or file
>>> fuse_lora(unet_motion, lora, scale=0.8)   # W += 0.8 * up @ down for every layer the LoRA names
>>> unfuse_lora(unet_motion)                  # the weights as they were, bit for bit

Files in diffusers' legacy processor layout (the hub's motion-LoRA repos), PEFT's ``lora_A``/``lora_B``
layout (what diffusers' ``save_lora_weights`` and ``vidcore.training.save_lora`` write), kohya-ss's
``lora_unet_..._to_q.lora_down.weight`` layout (spatial SD1.5 LoRAs such as AnimateLCM's
``AnimateLCM_sd15_t2v_lora.safetensors``) and the original AnimateDiff ``.ckpt`` layout are read
(:mod:`vidcore.conversion.maps.motion_lora`). Layer names are diffusers' names for the model (``UNetMotionModel``,
``UNet3DConditionModel``, ``UNetSpatioTemporalConditionModel``, ``I2VGenXLUNet``, ``UNet2DConditionModel``); each is
found in the vidcore model through its checkpoint key map (:mod:`vidcore.models.lora_names`). Every name and shape is
checked before a weight changes.

Fusing changes the modules a ``UNetMotion`` references, so another ``UNetMotion`` sharing the same UNet or
adapter sees the fused weights too (as it would see any edit). ``unfuse_lora`` restores the copies kept
at the first fuse, so several LoRAs can be fused in turn and removed together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from ..conversion.maps.motion_lora import KOHYA_PREFIX, LoRALayer, kohya_layer_names, parse_lora
from ..errors import CheckpointError, UnsupportedFeatureError
from .lora_names import check_unet, diffusers_layers


@dataclass
class LoRA:
    """LoRA layers by diffusers layer name (``down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q``)."""

    layers: dict[str, LoRALayer]
    source: str = "<state dict>"

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], source: str = "<state dict>") -> "LoRA":
        try:
            return cls(parse_lora(state), source)
        except ValueError as err:
            raise CheckpointError(f"{source}: not a LoRA vidcore can apply to a UNet: {err}") from err

    def targets(self, model: nn.Module) -> dict[str, str]:
        """{model parameter name: LoRA layer name}; raises CheckpointError naming layers the model lacks."""
        layers = diffusers_layers(model)
        if any(n.startswith(KOHYA_PREFIX) for n in self.layers):
            layers.update({flat: layers[name] for flat, name in kohya_layer_names(layers).items()})
        out, unknown = {}, []
        for layer in self.layers:
            if layer in layers:
                out[layers[layer]] = layer
            else:
                unknown.append(layer)
        if unknown:
            raise CheckpointError(f"{self.source}: {len(unknown)} LoRA layers are not in this {type(model).__name__} "
                                  f"(the LoRA was made for another model or adapter layout): {unknown[:10]}")
        return out


@dataclass
class _Fused:
    originals: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter name -> weight before any fuse
    loras: list[tuple[str, float]] = field(default_factory=list)  # (source, scale), in fuse order


def fuse_lora(model: nn.Module, lora: LoRA | Mapping[str, torch.Tensor], scale: float = 1.0) -> LoRA:
    """Add ``scale`` times the LoRA's update to ``model``'s weights (in place). Every layer name and shape is
    checked before any weight changes. Returns the LoRA (built, when a state dict was given). Files and hub repos:
    ``vidcore.fuse_lora`` (:func:`vidcore.loading.lora.fuse_lora`) reads them first."""
    check_unet(model)
    if isinstance(lora, Mapping):
        lora = LoRA.from_state_dict(lora)
    if not isinstance(lora, LoRA):
        raise TypeError(f"lora must be a LoRA or a state dict, got {type(lora).__name__} (a file or hub repo: "
                        "vidcore.fuse_lora, or vidcore.load_lora first)")
    params = dict(model.named_parameters())
    deltas = {}
    for name, layer in lora.targets(model).items():
        try:
            deltas[name] = lora.layers[layer].delta(params[name].shape)
        except ValueError as err:
            raise CheckpointError(f"{lora.source}: LoRA layer {layer}: {err}") from err
    stored = [n for n in deltas if params[n].dtype.itemsize == 1]
    if stored:
        raise UnsupportedFeatureError(
            f"LoRA weights cannot be added to fp8-stored layers ({stored[0]} ...): fuse or load LoRAs before "
            "enable_layerwise_casting() and leave their scale fixed, or disable_layerwise_casting() first")
    state: _Fused = model.__dict__.setdefault("_lora_fused", _Fused())
    with torch.no_grad():
        for name, delta in deltas.items():
            p = params[name]
            state.originals.setdefault(name, p.detach().clone())
            p.add_((delta * scale).to(device=p.device, dtype=p.dtype))
    state.loras.append((lora.source, float(scale)))
    return lora


def unfuse_lora(model: nn.Module) -> list[tuple[str, float]]:
    """Restore every weight changed by :func:`fuse_lora` (bit-exact copies); returns the (source, scale) of
    the LoRAs removed, in fuse order (empty when none was fused)."""
    state: _Fused | None = model.__dict__.pop("_lora_fused", None)
    if state is None:
        return []
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, original in state.originals.items():
            params[name].copy_(original)
    return state.loras


def fused_loras(model: nn.Module) -> list[tuple[str, float]]:
    """The (source, scale) of the LoRAs fused into ``model``, in order."""
    state = model.__dict__.get("_lora_fused")
    return list(state.loras) if state else []
