"""Trainable LoRA layers on any vidcore UNet, named by diffusers' layer names.

>>> names = add_lora(unet, LoRAConfig(rank=8, alpha=8, target="temporal"))  # motion / temporal attention only
>>> opt = torch.optim.AdamW(lora_parameters(unet), lr=1e-4)               # everything else stays frozen
>>> ... train ...
>>> state = lora_state_dict(unet)       # {"down_blocks.0.motion_modules.0....to_q.lora_A.weight": ...} (peft keys)
>>> remove_lora(unet)                   # the model exactly as before add_lora

A LoRA layer is a child module ``lora`` of the ``nn.Linear`` it adapts (``down``: in -> rank, ``up``: rank ->
out, ``up`` starting at zero so the model is unchanged until trained) plus a forward hook that adds
``alpha / rank * up(down(dropout(x)))`` to the linear's output. Nothing replaces ``forward`` and the base
weights keep their names. What cannot act on live branches refuses them rather than dropping them: fused QKV
projections, saving the model (``merge_lora`` first, or ``save_lora`` for the LoRA alone), group offload and fp8
storage. ``remove_lora`` leaves the model's outputs as before; its parameters stay frozen.

Layers are chosen by regular expressions over diffusers' names (what people write in peft's
``target_modules``); ``target`` may also be one of :data:`TARGETS`' presets. The diffusers name of each vidcore
linear comes from running its weight's key backwards through the model's conversion map, so every name in a
saved LoRA is the name diffusers and the hub's LoRA files use.

Files :func:`save_lora` writes (safetensors): ``layout="peft"`` (default), ``unet.{layer}.lora_A.weight`` /
``lora_B.weight`` for any UNet, which diffusers' ``load_lora_weights`` reads on the AnimateDiff (SD1.5, SDXL)
pipelines, and peft's ``inject_adapter_in_model`` + ``set_peft_model_state_dict`` on diffusers' ModelScope, SVD and
I2VGen-XL UNets (their pipelines have no working loader in diffusers 0.42); ``layout="animatediff"``, the original
AnimateDiff motion-LoRA keys (``v2_lora_ZoomIn.ckpt``), for motion modules only. vidcore's ``load_lora_weights`` /
``vidcore.fuse_lora`` read both (and the legacy-processor and kohya layouts) on every pipeline with a UNet.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Container, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..conversion.maps.motion_lora import original_lora_keys
from ..errors import ArgumentError, UnsupportedFeatureError
from ..loading.save import atomic_save
from ..models.lora_names import DiffusersWeight, diffusers_weights
from ..models.motion import UNetMotion
from ..nn.fused_qkv import is_fused

# diffusers layer names: the parents of the temporal transformers (AnimateDiff's motion modules, ModelScope /
# I2VGen-XL's temporal attentions and transformer_in, SVD's temporal transformer blocks) and the attention projections
TEMPORAL_PARENT = r"(^|\.)(motion_modules|temp_attentions|temporal_transformer_blocks|transformer_in)\."
PROJECTIONS = r"(to_q|to_k|to_v|to_out\.0)"
TARGETS = {
    # the temporal layers' attention projections: what a motion LoRA trains
    "temporal": (rf"{TEMPORAL_PARENT}.*\.{PROJECTIONS}$",),
    # the image UNet's self- and cross-attention (a style or subject LoRA). On SVD the cross-attention's to_q / to_k
    # get branches that never train: attention over its one image token ignores query and key (zeros are saved)
    "spatial": (rf"^(?!.*{TEMPORAL_PARENT}).*\.attn[12]\.{PROJECTIONS}$",),
    "both": (rf"\.attn[12]\.{PROJECTIONS}$",),
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


def _linear_weights(model: nn.Module) -> dict[str, DiffusersWeight]:
    """{vidcore module name: its diffusers weight} for every ``nn.Linear`` whose weight has one diffusers name."""
    weights = diffusers_weights(model)
    return {name: weights[f"{name}.weight"] for name, sub in model.named_modules()
            if type(sub) is nn.Linear and f"{name}.weight" in weights}


def diffusers_linear_names(model: nn.Module) -> dict[str, str]:
    """{vidcore module name: diffusers layer name} for every ``nn.Linear`` of ``model`` whose weight maps to one
    diffusers weight (a layer vidcore fuses or splits has no single name and is left out); the names come from
    :mod:`vidcore.models.lora_names`, the table vidcore's LoRA loader reads files with."""
    return {name: w.layer for name, w in _linear_weights(model).items()}


def add_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Add trainable LoRA layers to the linears of ``model`` whose diffusers name matches ``config``; freeze
    every other parameter. Returns the diffusers names adapted. Raises ArgumentError when nothing matches."""
    if any(is_fused(m) for m in model.modules()):
        raise UnsupportedFeatureError("LoRA layers cannot be added to fused QKV projections: "
                                      "unfuse_qkv_projections() first")
    if any("group_offload" in vars(m) for m in model.modules()):
        raise UnsupportedFeatureError("LoRA layers cannot train under group / sequential offload (onloaded copies "
                                      "would take the updates): add them before enable_group_offload(), or "
                                      "disable_group_offload() first")
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


LAYOUTS = ("peft", "animatediff")


def _original_keys(names: dict[str, str], model: nn.Module) -> dict[str, tuple[str, str]]:
    """{vidcore module name: (down key, up key)} in the original AnimateDiff motion-LoRA layout; ArgumentError for a
    model or layer that layout cannot hold."""
    if not isinstance(model, UNetMotion):
        raise ArgumentError(f"the 'animatediff' LoRA layout holds AnimateDiff motion modules only; a "
                            f"{type(model).__name__} has none (use layout='peft')")
    keys = {v: original_lora_keys(layer) for v, layer in names.items()}
    outside = sorted(names[v] for v, k in keys.items() if k is None)
    if outside:
        raise ArgumentError(f"the 'animatediff' LoRA layout holds only the motion modules' attention projections "
                            f"(to_q / to_k / to_v / to_out.0); {len(outside)} trained layers are not among them "
                            f"({outside[:3]} ...): save with layout='peft', or train with target='temporal'")
    return keys


def lora_state_dict(model: nn.Module, prefix: str = "", layout: str = "peft",
                    values: Mapping[str, torch.Tensor] | None = None,
                    layers: Container[str] | None = None) -> dict[str, torch.Tensor]:
    """The trained branches with diffusers layer names. ``layout="peft"``: ``{prefix}{layer}.lora_A.weight``
    (rank x in) and ``.lora_B.weight`` (out x rank), as 1x1-conv tensors where diffusers' layer is a 1x1 conv
    (SD1.5's ``proj_in``); ``prefix="unet."`` gives the keys diffusers' ``load_lora_weights`` reads.
    ``layout="animatediff"``: the original AnimateDiff motion-LoRA keys (``v2_lora_ZoomIn.ckpt``:
    ``...motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.processor.to_q_lora
    .down.weight`` / ``.up.weight``; motion-module attention layers of a UNetMotion only, no prefix).
    In both, B (up) is already multiplied by alpha / rank, so the file needs no alpha: loaders that assume
    alpha = rank (peft's default when none is stored, AnimateDiff's own loader) read the same update.
    ``values``: branch tensors by the model's parameter name (``...to_q.lora.down.weight``) to write instead of
    the live ones (an EMA of them); ``layers``: only these diffusers layer names."""
    if layout not in LAYOUTS:
        raise ArgumentError(f"LoRA layout must be one of {list(LAYOUTS)}, got {layout!r}")
    weights = _linear_weights(model)
    only = layers
    layers = {v: linear for v, linear in lora_layers(model) if only is None or weights[v].layer in only}
    if layout == "animatediff":
        if prefix:
            raise ArgumentError(f"the 'animatediff' LoRA layout has no key prefix, got prefix={prefix!r}")
        keys = _original_keys({v: weights[v].layer for v in layers}, model)
    else:
        keys = {v: (f"{prefix}{weights[v].layer}.lora_A.weight", f"{prefix}{weights[v].layer}.lora_B.weight")
                for v in layers}
    out = {}
    for vname, linear in layers.items():
        kernel = tuple(weights[vname].shape[2:]) if layout == "peft" else ()  # (1, 1) for a diffusers 1x1 conv
        down, up = (linear.lora.down.weight.detach(), linear.lora.up.weight.detach()) if values is None else (
            values[f"{vname}.lora.{part}.weight"].to(linear.lora.down.weight.dtype) for part in ("down", "up"))
        up = up * linear.lora.scale
        a_key, b_key = keys[vname]
        out[a_key] = down.reshape(*down.shape, *kernel).clone()
        out[b_key] = up.reshape(*up.shape, *kernel).clone()
    return out


def set_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Load a peft-layout :func:`lora_state_dict` back into the branches :func:`add_lora` made (same layers, same
    rank); raises ArgumentError on missing or extra layers or another rank. Branch scales are set to 1 (the file's
    B holds the scale). (Any layout, onto any UNet without branches: ``vidcore.load_lora`` + ``fuse_lora``.)"""
    names = diffusers_linear_names(model)
    layers = dict(lora_layers(model))
    want = {f"{prefix}{names[v]}.lora_{ab}.weight" for v in layers for ab in "AB"}
    if set(state) != want:
        missing, extra = sorted(want - set(state)), sorted(set(state) - want)
        raise ArgumentError(f"LoRA state does not fit the model's LoRA layers: missing {missing[:3]}, "
                            f"extra {extra[:3]}")
    pairs = []
    for vname, linear in layers.items():
        a, b = (state[f"{prefix}{names[vname]}.lora_{ab}.weight"] for ab in "AB")
        down, up = linear.lora.down.weight, linear.lora.up.weight
        if a.numel() != down.numel() or b.numel() != up.numel() or a.shape[0] != down.shape[0]:
            raise ArgumentError(f"LoRA state for {names[vname]}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} "
                                f"do not fit the branch's down {tuple(down.shape)} / up {tuple(up.shape)} "
                                "(another rank?)")
        pairs.append((linear, a, b))
    with torch.no_grad():
        for linear, a, b in pairs:
            linear.lora.down.weight.copy_(a.reshape(linear.lora.down.weight.shape))
            linear.lora.up.weight.copy_(b.reshape(linear.lora.up.weight.shape))
            linear.lora.scale = 1.0


def save_lora(model: nn.Module, path: str | os.PathLike, prefix: str | None = None, layout: str = "peft",
              values: Mapping[str, torch.Tensor] | None = None, layers: Container[str] | None = None) -> Path:
    """Write :func:`lora_state_dict` to a ``.safetensors`` file atomically (a killed write leaves no partial
    file). ``layout="peft"`` (default, prefix ``unet.``): what diffusers' ``load_lora_weights`` and vidcore's read,
    for every UNet. ``layout="animatediff"``: the original AnimateDiff motion-LoRA layout, for a UNetMotion's
    motion-module attention LoRA (AnimateDiff's and ComfyUI's motion-LoRA loaders; vidcore reads it back).
    ``values`` / ``layers``: as :func:`lora_state_dict` takes them."""
    path = Path(path)
    if prefix is None:
        prefix = "unet." if layout == "peft" else ""
    state = lora_state_dict(model, prefix, layout, values, layers)
    if not state:
        raise ArgumentError(f"{type(model).__name__} has no LoRA layers to save (add_lora first)")
    atomic_save({k: v.cpu() for k, v in state.items()}, path, {"format": "pt", "lora_layout": layout})
    return path
