"""Trainable LoRA layers on any vidcore UNet, named by diffusers' layer names.

>>> names = add_lora(unet, LoRAConfig(rank=8, alpha=8, target="temporal"))  # motion / temporal attention only
>>> opt = torch.optim.AdamW(lora_parameters(unet), lr=1e-4)               # everything else stays frozen
>>> ... train ...
>>> state = lora_state_dict(unet)       # {"down_blocks.0.motion_modules.0....to_q.lora_A.weight": ...} (peft keys)
>>> remove_lora(unet)                   # the model exactly as before add_lora

A LoRA layer is a child module ``lora`` of the ``nn.Linear`` it adapts (``down``: in -> rank, ``up``: rank ->
out, ``up`` starting at zero so the model is unchanged until trained) plus a forward hook that adds
``alpha / rank * up(down(dropout(x)))`` to the linear's output. Nothing replaces ``forward`` and the base
weights keep their names, so checkpoints, the conversion maps and the other features see the same model.

Layers are chosen by regular expressions over diffusers' names (what people write in peft's
``target_modules``); ``target`` may also be one of :data:`TARGETS`' presets. The diffusers name of each vidcore
linear comes from running its weight's key backwards through the model's conversion map, so every name in a
saved LoRA is the name diffusers and the hub's LoRA files use.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from ..conversion.maps.diffusers_motion import MOTION_ADAPTER_MAP
from ..errors import ArgumentError, UnsupportedFeatureError
from ..loading.architectures import architecture_of
from ..loading.save import atomic_save
from ..models.motion import UNetMotion
from ..nn.fused_qkv import is_fused

_PROJ = r"(to_q|to_k|to_v|to_out\.0)$"
_TEMPORAL = r"(motion_modules|temp_attentions|temporal_transformer_blocks|transformer_in)\."
TARGETS = {
    # AnimateDiff's motion modules, ModelScope/I2VGen-XL's temporal attentions (and transformer_in), SVD's
    # temporal transformer blocks: the layers a motion LoRA trains
    "temporal": (rf"{_TEMPORAL}.*\.{_PROJ}",),
    # the image UNet's self- and cross-attention (MotionDirector's spatial path, a style LoRA)
    "spatial": (rf"^(?!.*{_TEMPORAL}).*\.attn[12]\.{_PROJ}",),
    "both": (rf".*\.attn[12]\.{_PROJ}",),
}


@dataclass(frozen=True)
class LoRAConfig:
    """``rank`` > 0; ``alpha`` scales the update by alpha / rank (None: alpha = rank, scale 1, peft's default
    is alpha = 8); ``target``: a :data:`TARGETS` preset or regexes searched in diffusers layer names."""

    rank: int = 4
    alpha: float | None = None
    target: str | Sequence[str] = "temporal"
    dropout: float = 0.0

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ArgumentError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if self.alpha is not None and not self.alpha > 0:
            raise ArgumentError(f"LoRA alpha must be > 0 (or None for alpha = rank), got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ArgumentError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.target, str) and self.target not in TARGETS:
            try:
                re.compile(self.target)
            except re.error as err:
                raise ArgumentError(f"LoRA target {self.target!r} is neither a preset {sorted(TARGETS)} nor a "
                                    f"regular expression: {err}") from err

    @property
    def patterns(self) -> tuple[str, ...]:
        if isinstance(self.target, str):
            return TARGETS.get(self.target, (self.target,))
        return tuple(self.target)

    @property
    def scale(self) -> float:
        return (self.rank if self.alpha is None else self.alpha) / self.rank


class LoRABranch(nn.Module):
    """``scale * up(down(dropout(x)))``: the low-rank update of one linear layer (peft's lora_A / lora_B)."""

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float, dropout: float = 0.0):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.scale = scale
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))  # peft's init: A random, B zero
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(self.dropout(x.to(self.down.weight.dtype)))) * self.scale

    def delta(self) -> torch.Tensor:
        """The weight update it equals (out x in), float32."""
        return self.up.weight.float() @ self.down.weight.float() * self.scale


def _add_branch(linear: nn.Linear, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + linear.lora(inputs[0]).to(output.dtype)


def diffusers_linear_names(model: nn.Module) -> dict[str, str]:
    """{vidcore module name: diffusers layer name} for every ``nn.Linear`` of ``model`` whose weight maps to one
    diffusers weight (a layer vidcore fuses or splits has no single name and is left out)."""
    if isinstance(model, UNetMotion):  # diffusers' UNetMotionModel names: the UNet's plus the adapter's
        parts = [("unet.", model.unet, architecture_of(model.unet).keymap(model.unet.config.to_diffusers_config())),
                 ("adapter.", model.adapter, MOTION_ADAPTER_MAP)]
    else:
        arch = architecture_of(model)
        config = model.config.to_diffusers_config() if hasattr(model.config, "to_diffusers_config") else None
        parts = [("", model, arch.keymap(config))]
    names = {}
    for prefix, module, keymap in parts:
        for name, sub in module.named_modules():
            if type(sub) is not nn.Linear or name.endswith((".down", ".up")) and ".lora." in f".{name}":
                continue
            probe = {f"{name}.weight": torch.empty(sub.weight.shape, device="meta")}
            try:
                converted, _ = keymap.convert(probe, None, direction="reverse", strict=False)
            except Exception:  # noqa: BLE001 - a key no rule maps one to one has no diffusers name
                continue
            if len(converted) == 1:
                (key,) = converted
                names[prefix + name] = key.removesuffix(".weight")
    return names


def add_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Add trainable LoRA layers to the linears of ``model`` whose diffusers name matches ``config``; freeze
    every other parameter. Returns the diffusers names adapted. Raises ArgumentError when nothing matches."""
    if any(is_fused(m) for m in model.modules()):
        raise UnsupportedFeatureError("LoRA layers cannot be added to fused QKV projections: "
                                      "unfuse_qkv_projections() first")
    if any(p.dtype.itemsize == 1 for p in model.parameters()):
        raise UnsupportedFeatureError("LoRA layers cannot train on fp8-stored weights: add them before "
                                      "enable_layerwise_casting(), or disable_layerwise_casting() first")
    names = diffusers_linear_names(model)
    patterns = [re.compile(p) for p in config.patterns]
    chosen = {v: d for v, d in names.items() if any(p.search(d) for p in patterns)}
    if not chosen:
        raise ArgumentError(f"LoRA target {config.target!r} matches no linear layer of {type(model).__name__} "
                            f"(diffusers names such as {sorted(names.values())[:3]})")
    already = [d for v, d in chosen.items() if hasattr(model.get_submodule(v), "lora")]
    if already:
        raise ArgumentError(f"{len(already)} layers already have a LoRA ({already[0]} ...): remove_lora() first")
    model.requires_grad_(False)
    for vname in chosen:
        linear = model.get_submodule(vname)
        linear.lora = LoRABranch(linear.in_features, linear.out_features, config.rank, config.scale, config.dropout)
        linear.lora.to(device=linear.weight.device, dtype=linear.weight.dtype)
        linear.__dict__["_lora_hook"] = linear.register_forward_hook(_add_branch)
    return sorted(chosen.values())


def lora_layers(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """(vidcore module name, linear) for every linear carrying a LoRA branch."""
    for name, module in model.named_modules():
        if type(module) is nn.Linear and isinstance(getattr(module, "lora", None), LoRABranch):
            yield name, module


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA branches' parameters (what the optimizer trains)."""
    return [p for _, linear in lora_layers(model) for p in linear.lora.parameters()]


def remove_lora(model: nn.Module) -> int:
    """Take every LoRA branch off ``model`` (the base weights were never changed); returns how many."""
    count = 0
    for _, linear in list(lora_layers(model)):
        linear.__dict__.pop("_lora_hook").remove()
        del linear.lora
        count += 1
    return count


def merge_lora(model: nn.Module) -> int:
    """Add each branch's update into its linear's weight and remove the branches (for fast inference or saving
    a full model); returns how many were merged."""
    with torch.no_grad():
        for _, linear in lora_layers(model):
            linear.weight.add_(linear.lora.delta().to(linear.weight))
    return remove_lora(model)


def lora_state_dict(model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The trained branches in peft's layout with diffusers layer names: ``{prefix}{layer}.lora_A.weight``
    (rank x in) and ``.lora_B.weight`` (out x rank, already multiplied by alpha / rank so that the file needs
    no alpha: loaders that assume alpha = rank read the same update). ``prefix="unet."`` gives the keys
    diffusers' ``load_lora_weights`` reads."""
    names = diffusers_linear_names(model)
    out = {}
    for vname, linear in lora_layers(model):
        layer = names[vname]
        out[f"{prefix}{layer}.lora_A.weight"] = linear.lora.down.weight.detach().clone()
        out[f"{prefix}{layer}.lora_B.weight"] = (linear.lora.up.weight.detach() * linear.lora.scale).clone()
    return out


def set_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Load a :func:`lora_state_dict` back into the branches :func:`add_lora` made (same layers, same rank);
    raises ArgumentError on missing or extra layers. Branch scales are set to 1 (the file's B holds the scale)."""
    names = diffusers_linear_names(model)
    layers = dict(lora_layers(model))
    want = {f"{prefix}{names[v]}.lora_{ab}.weight" for v in layers for ab in "AB"}
    if set(state) != want:
        missing, extra = sorted(want - set(state)), sorted(set(state) - want)
        raise ArgumentError(f"LoRA state does not fit the model's LoRA layers: missing {missing[:3]}, "
                            f"extra {extra[:3]}")
    with torch.no_grad():
        for vname, linear in layers.items():
            layer = names[vname]
            linear.lora.down.weight.copy_(state[f"{prefix}{layer}.lora_A.weight"])
            linear.lora.up.weight.copy_(state[f"{prefix}{layer}.lora_B.weight"])
            linear.lora.scale = 1.0


def save_lora(model: nn.Module, path: str | os.PathLike, prefix: str = "unet.") -> Path:
    """Write :func:`lora_state_dict` to a ``.safetensors`` file atomically (a killed write leaves no partial
    file); the default ``unet.`` prefix is what diffusers' ``load_lora_weights`` and vidcore's read."""
    path = Path(path)
    state = lora_state_dict(model, prefix)
    if not state:
        raise ArgumentError(f"{type(model).__name__} has no LoRA layers to save (add_lora first)")
    atomic_save(state, path, {"format": "pt", "lora_layout": "peft"})
    return path
