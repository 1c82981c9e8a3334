"""LoRA files for vidcore's UNets (motion LoRAs such as guoyww/animatediff-motion-lora-zoom-in, spatial SD LoRAs,
LoRAs trained on ModelScope / SVD / I2VGen-XL UNets) -> one (down, up, alpha) triple per target layer, named as in
the diffusers model (``UNetMotionModel``, ``UNet3DConditionModel`` ...).

Four key layouts are read (every key must be one of them, or the file is refused naming the keys):

* diffusers' legacy attention-processor names, which the hub's motion-LoRA repos use (they were made by
  diffusers' ``scripts/convert_animatediff_motion_lora_to_diffusers.py``)::

      unet.down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight
      ... .processor.to_out_lora.up.weight                      (target: attn1.to_out.0)

* PEFT names, as diffusers' ``save_lora_weights`` writes them: ``unet.{layer}.lora_A.weight`` /
  ``lora_B.weight`` (and the older ``{layer}.lora.down.weight`` / ``lora.up.weight``), ``unet.`` optional;
* kohya-ss names over diffusers' module paths, as Stable Diffusion LoRAs for the spatial UNet ship them
  (``wangfuyun/AnimateLCM``'s ``AnimateLCM_sd15_t2v_lora.safetensors``)::

      lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight / .lora_up.weight
      lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha

  The path's dots are underscores, so these layers keep their flat ``lora_unet_...`` name here; the model
  they are applied to resolves it (:func:`kohya_layer_names`). Kohya's LDM-path spelling
  (``lora_unet_input_blocks_1_1_...``) is not read;
* the original AnimateDiff ``.ckpt`` (``v2_lora_ZoomIn.ckpt``): the legacy names under the original motion
  module layout (``...motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.processor
  .to_q_lora.down.weight``), renamed with :mod:`vidcore.conversion.maps.original_motion`'s rules.
  :func:`original_lora_keys` names a layer the other way (``vidcore.training.save_lora(layout="animatediff")``).

``{layer}.alpha`` scalars (kohya's ``network_alpha``) scale the product by ``alpha / rank``; without one the
scale is 1 (as the legacy processors, PEFT's default ``lora_alpha = r`` and AnimateDiff's own loader).
Keys for a text encoder (``text_encoder.``) are refused: a motion LoRA touches only the UNet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch

from .original_motion import BLOCK_NAMES

_LEGACY = re.compile(r"^(?P<parent>.+?)\.(?:processor\.)?(?P<proj>to_q|to_k|to_v|to_out)_lora"
                     r"\.(?P<kind>down|up)\.weight$")
_PEFT = re.compile(r"^(?P<layer>.+?)\.lora_(?P<kind>A|B)(?:\.default)?\.weight$")
_OLD_PEFT = re.compile(r"^(?P<layer>.+?)\.lora\.(?P<kind>down|up)\.weight$")
_KOHYA = re.compile(r"^(?P<layer>lora_unet_[A-Za-z0-9_]+)\.lora_(?P<kind>down|up)\.weight$")
KOHYA_PREFIX = "lora_unet_"
_ALPHA = re.compile(r"^(?P<layer>.+?)\.alpha$")
_ORIGINAL_BLOCK = re.compile(r"\.temporal_transformer\.transformer_blocks\.(\d+)"
                             r"\.(attention_blocks\.[01]|norms\.[01]|ff_norm|ff)\b")


@dataclass
class LoRALayer:
    """``W += scale * (alpha / rank if alpha else 1) * up @ down`` for one layer."""

    down: torch.Tensor | None = None  # (rank, in, ...) — lora_A
    up: torch.Tensor | None = None  # (out, rank, ...) — lora_B
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def delta(self, shape: torch.Size | tuple) -> torch.Tensor:
        """The float32 weight update, reshaped to a target weight of ``shape`` (1x1 convs and linears are
        interchangeable; a k x k conv LoRA gives a k x k update)."""
        d = self.up.float().flatten(1) @ self.down.float().flatten(1)  # out, in * k * k
        if self.alpha is not None:
            d = d * (self.alpha / self.rank)
        if d.numel() != torch.Size(shape).numel():
            raise ValueError(f"LoRA update of shape {tuple(d.shape)} does not fit a weight of shape {tuple(shape)}")
        return d.reshape(shape)


def _original_to_diffusers(name: str) -> str:
    """An original AnimateDiff layer path -> diffusers' (``temporal_transformer`` dropped, block names renamed)."""
    def block(m: re.Match) -> str:
        new = dict(BLOCK_NAMES)[m.group(2)]
        return f".transformer_blocks.{m.group(1)}.{new}"

    name = _ORIGINAL_BLOCK.sub(block, name)
    return name.replace(".temporal_transformer.", ".")


_DIFFUSERS_MOTION_ATTENTION = re.compile(
    r"^(?P<module>(?:down_blocks\.\d+|mid_block|up_blocks\.\d+)\.motion_modules\.\d+)"
    r"\.transformer_blocks\.(?P<block>\d+)\.(?P<attn>attn[12])\.(?P<proj>to_q|to_k|to_v|to_out\.0)$")


def original_lora_keys(layer: str) -> tuple[str, str] | None:
    """A diffusers motion-module attention projection -> its (down, up) keys in the original AnimateDiff motion-LoRA
    layout (``v2_lora_ZoomIn.ckpt``), the inverse of what :func:`parse_lora` reads; None for any other layer (the
    original layout holds only the motion modules' to_q / to_k / to_v / to_out projections)."""
    m = _DIFFUSERS_MOTION_ATTENTION.match(layer)
    if m is None:
        return None
    attention = {new: old for old, new in BLOCK_NAMES}[m["attn"]]
    proj = m["proj"].removesuffix(".0")
    base = (f"{m['module']}.temporal_transformer.transformer_blocks.{m['block']}.{attention}"
            f".processor.{proj}_lora")
    return f"{base}.down.weight", f"{base}.up.weight"


def kohya_layer_names(layer_names) -> dict[str, str]:
    """{kohya flat name ``lora_unet_a_b_0_c``: diffusers layer ``a_b.0.c``} for the given diffusers layer names.
    A flat name two layers share (no SD UNet has one) maps to neither, so it is reported as unknown."""
    table: dict[str, str] = {}
    clashes = set()
    for name in layer_names:
        flat = KOHYA_PREFIX + name.replace(".", "_")
        if flat in table and table[flat] != name:
            clashes.add(flat)
        table[flat] = name
    for flat in clashes:
        del table[flat]
    return table


def parse_lora(state: Mapping[str, torch.Tensor]) -> dict[str, LoRALayer]:
    """LoRA tensors in any of the module docstring's layouts -> {diffusers layer name: LoRALayer}.

    Raises ValueError naming keys it cannot read, text-encoder keys and layers missing a half."""
    layers: dict[str, LoRALayer] = {}
    bad, text = [], []
    for key, tensor in state.items():
        k = key.removeprefix("unet.")
        if k.startswith(("text_encoder.", "te.", "lora_te")):
            text.append(key)
            continue
        if (m := _LEGACY.match(k)) is not None:
            layer = f"{m['parent']}.{m['proj']}" + (".0" if m["proj"] == "to_out" else "")
            kind = "down" if m["kind"] == "down" else "up"
        elif (m := _KOHYA.match(k)) is not None:
            layer, kind = m["layer"], m["kind"]
        elif (m := _PEFT.match(k)) is not None:
            layer, kind = m["layer"], "down" if m["kind"] == "A" else "up"
        elif (m := _OLD_PEFT.match(k)) is not None:
            layer, kind = m["layer"], m["kind"]
        elif (m := _ALPHA.match(k)) is not None and tensor.numel() == 1:
            layer, kind = m["layer"], "alpha"
        else:
            bad.append(key)
            continue
        if not layer.startswith(KOHYA_PREFIX):
            layer = _original_to_diffusers(layer)
        entry = layers.setdefault(layer, LoRALayer())
        if kind == "alpha":
            entry.alpha = float(tensor.item())
        else:
            setattr(entry, kind, tensor)
    problems = []
    if text:
        problems.append(f"text-encoder LoRA keys (a motion LoRA only changes the UNet): {text[:5]}")
    if bad:
        problems.append(f"keys that are not LoRA weights in a known layout ({len(bad)}): {bad[:10]} (expected e.g. "
                        "'unet.down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q.lora_A.weight' or "
                        "'...attn1.processor.to_q_lora.down.weight' or "
                        "'lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight')")
    half = [name for name, e in layers.items() if e.down is None or e.up is None]
    if half:
        problems.append(f"layers with only one of the two LoRA matrices (down/lora_A, up/lora_B): {half[:10]}")
    if not layers and not problems:
        problems.append("no LoRA weights found")
    if problems:
        raise ValueError("; ".join(problems))
    for name, e in layers.items():
        if e.up.shape[1] != e.down.shape[0]:
            raise ValueError(f"LoRA layer {name}: up {tuple(e.up.shape)} and down {tuple(e.down.shape)} "
                             "disagree on the rank")
    return layers
