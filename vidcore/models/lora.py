"""LoRA for AnimateDiff UNets (motion LoRAs: guoyww/animatediff-motion-lora-zoom-in, v2_lora_PanLeft.ckpt ...;
spatial SD LoRAs too), fused into a :class:`~vidcore.models.motion.UNetMotion`'s weights and unfused exactly.

>>> lora = vidcore.load_lora("guoyww/animatediff-motion-lora-zoom-in")  # hub repo, folder or file
>>> fuse_lora(unet_motion, lora, scale=0.8)   # W += 0.8 * up @ down for every layer the LoRA names
>>> unfuse_lora(unet_motion)                  # the weights as they were, bit for bit

Files in diffusers' legacy processor layout (the hub's motion-LoRA repos), PEFT's ``lora_A``/``lora_B``
layout, kohya-ss's ``lora_unet_..._to_q.lora_down.weight`` layout (spatial SD1.5 LoRAs such as AnimateLCM's
``AnimateLCM_sd15_t2v_lora.safetensors``) and the original AnimateDiff ``.ckpt`` layout are read (:mod:`vidcore.conversion.maps.motion_lora`). Layer
names are diffusers' ``UNetMotionModel`` names; motion-module layers land in ``unet_motion.adapter``, any
other layer (a LoRA may also touch the spatial UNet) in ``unet_motion.unet`` through the same key maps the
checkpoints use. Every name and shape is checked before a weight changes.

Fusing changes the modules ``UNetMotion`` references, so another ``UNetMotion`` sharing the same UNet or
adapter sees the fused weights too (as it would see any edit). ``unfuse_lora`` restores the copies kept
at the first fuse, so several LoRAs can be fused in turn and removed together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

from ..conversion.maps.diffusers_motion import MOTION_ADAPTER_MAP
from ..conversion.maps.diffusers_unet2d import unet2d_map
from ..conversion.maps.motion_lora import KOHYA_PREFIX, LoRALayer, kohya_layer_names, parse_lora

from ..errors import CheckpointError, UnsupportedFeatureError
from .motion import UNetMotion

_MOTION_KEY = ".motion_modules."


@dataclass
class LoRA:
    """LoRA layers by diffusers ``UNetMotionModel`` layer name
    (``down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q``)."""

    layers: dict[str, LoRALayer]
    source: str = "<state dict>"

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], source: str = "<state dict>") -> "LoRA":
        try:
            return cls(parse_lora(state), source)
        except ValueError as err:
            raise CheckpointError(f"{source}: not a LoRA vidcore can apply to a UNetMotion: {err}") from err

    def targets(self, model: UNetMotion) -> dict[str, str]:
        """{UNetMotion parameter name: LoRA layer name}; raises CheckpointError naming layers the model lacks."""
        unet_map = unet2d_map(model.unet.config.to_diffusers_config())
        params = dict(model.named_parameters())
        kohya = _kohya_table(model, unet_map) if any(n.startswith(KOHYA_PREFIX) for n in self.layers) else {}
        out, unknown = {}, []
        for layer in self.layers:
            key = f"{kohya.get(layer, layer)}.weight"
            probe = {key: torch.empty(0, device="meta")}
            try:
                if _MOTION_KEY in key:
                    converted, _ = MOTION_ADAPTER_MAP.convert(probe, None)
                    name = "adapter." + next(iter(converted))
                else:
                    converted, _ = unet_map.convert(probe, None)
                    name = "unet." + next(iter(converted))
            except Exception:  # noqa: BLE001 - a name no rule reads is simply unknown
                name = None
            if name is None or name not in params:
                unknown.append(layer)
            else:
                out[name] = layer
        if unknown:
            raise CheckpointError(f"{self.source}: {len(unknown)} LoRA layers are not in this UNetMotion "
                                  f"(the LoRA was made for another model or adapter layout): {unknown[:10]}")
        return out


def _kohya_table(model: UNetMotion, unet_map) -> dict[str, str]:
    """kohya flat names of every weight-bearing layer of ``model``, by diffusers UNetMotionModel name (the UNet's
    and the adapter's parameter names run backwards through their key maps)."""
    names = []
    for keymap, module in ((unet_map, model.unet), (MOTION_ADAPTER_MAP, model.adapter)):
        meta = {k: torch.empty(v.shape, device="meta") for k, v in module.state_dict().items()}
        converted, _ = keymap.convert(meta, None, direction="reverse", strict=False)
        names += [k.removesuffix(".weight") for k in converted if k.endswith(".weight")]
    return kohya_layer_names(names)


@dataclass
class _Fused:
    originals: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter name -> weight before any fuse
    loras: list[tuple[str, float]] = field(default_factory=list)  # (source, scale), in fuse order


def fuse_lora(model: UNetMotion, lora: LoRA | Mapping[str, torch.Tensor], scale: float = 1.0) -> LoRA:
    """Add ``scale`` times the LoRA's update to ``model``'s weights (in place). Every layer name and shape is
    checked before any weight changes. Returns the LoRA (built, when a state dict was given). Files and hub repos:
    ``vidcore.fuse_lora`` (:func:`vidcore.loading.lora.fuse_lora`) reads them first."""
    if not isinstance(model, UNetMotion):
        raise TypeError(f"fuse_lora needs a vidcore UNetMotion, got {type(model).__name__}")
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


def unfuse_lora(model: UNetMotion) -> list[tuple[str, float]]:
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


def fused_loras(model: UNetMotion) -> list[tuple[str, float]]:
    """The (source, scale) of the LoRAs fused into ``model``, in order."""
    state = model.__dict__.get("_lora_fused")
    return list(state.loras) if state else []
