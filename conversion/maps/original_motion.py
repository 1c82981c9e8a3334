"""Original AnimateDiff motion-module files <-> diffusers ``MotionAdapter`` names.

Files: guoyww/AnimateDiff's ``mm_sd_v14.ckpt``, ``mm_sd_v15.ckpt`` (v1: 24 frame positions, no mid
block), ``mm_sd_v15_v2.ckpt`` (32 positions, a mid-block module), ``v3_sd15_mm.ckpt`` (32 positions,
no mid block), ``mm_sdxl_v10_beta.ckpt`` (3 levels) and their ``.safetensors`` re-releases
(AnimateLCM, AnimateDiff-Lightning's non-diffusers files). Only the motion modules are stored::

    {down,up}_blocks.{i}.motion_modules.{j}.temporal_transformer.*     down/up level i, layer j
    mid_block.motion_modules.{j}.temporal_transformer.*                 v2 only

Inside ``temporal_transformer`` (AnimateDiff's ``TemporalTransformer3DModel``)::

    norm / proj_in / proj_out                          same names
    transformer_blocks.{k}.attention_blocks.{0,1}.*    transformer_blocks.{k}.attn{1,2}.*  (to_q/k/v, to_out.0)
    transformer_blocks.{k}.norms.{0,1}                 transformer_blocks.{k}.norm{1,2}
    transformer_blocks.{k}.ff_norm                     transformer_blocks.{k}.norm3
    transformer_blocks.{k}.ff.net.{0.proj,2}           same names
    transformer_blocks.{k}.attention_blocks.{0,1}.pos_encoder.pe   transformer_blocks.{k}.pos_embed.pe

Every attention block of the original stores its own copy of the sinusoidal frame-position table
``(1, max_len, C)``; the two copies are the same table, so they load into the block's one ``pos_embed.pe``
(required equal) and are written twice on export. diffusers' own conversion drops them and recomputes
the table; vidcore keeps the file's (equal to the computed one in every released file).

Such a file has no config: :func:`config_from_keys` reads the levels and widths, the number of motion
modules and transformer blocks per level, the mid block and ``motion_max_seq_length`` (the position
table's length) from the keys and shapes. Head count and GroupNorm groups cannot be seen in the
weights; they default to the released models' (8 heads, 32 groups).

The renames follow diffusers' ``convert_animatediff_checkpoint_to_diffusers`` (single_file_utils) and
``scripts/convert_animatediff_motion_module_to_diffusers.py``; the tests check the reverse map against
the former. Motion LoRA files use the same module names (see :mod:`vidcore.conversion.maps.motion_lora`).
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import torch

from ..engine import KeyMap, Rule, TiedRule

# guoyww/animatediff-motion-adapter-v1-5-2 config.json (mm_sd_v15_v2); the defaults for what keys cannot tell
DEFAULT_CONFIG = {
    "_class_name": "MotionAdapter",
    "block_out_channels": [320, 640, 1280, 1280],
    "motion_layers_per_block": 2,
    "motion_mid_block_layers_per_block": 1,
    "motion_max_seq_length": 32,
    "motion_norm_num_groups": 32,
    "motion_num_attention_heads": 8,
    "use_motion_mid_block": True,
}

_MODULE = re.compile(r"^(down_blocks\.(\d+)|up_blocks\.(\d+)|mid_block)\.motion_modules\.(\d+)"
                     r"\.temporal_transformer\.(.+)$")
_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.")

BLOCK_NAMES = [
    ("attention_blocks.0", "attn1"),
    ("attention_blocks.1", "attn2"),
    ("norms.0", "norm1"),
    ("norms.1", "norm2"),
    ("ff_norm", "norm3"),
    ("ff", "ff"),
]


def motion_rules() -> list[Rule | TiedRule]:
    """Original motion-module names -> diffusers ``MotionAdapter`` names (any level, any block count)."""
    src = "{part}.motion_modules.{j:int}.temporal_transformer"
    dst = "{part}.motion_modules.{j}"
    block_src, block_dst = src + ".transformer_blocks.{k:int}", dst + ".transformer_blocks.{k}"
    rules: list = [
        TiedRule(tuple(f"{block_src}.attention_blocks.{a}.pos_encoder.pe" for a in (0, 1)),
                 f"{block_dst}.pos_embed.pe", name="attention_blocks.{0,1}.pos_encoder.pe -> pos_embed.pe (tied)"),
    ]
    rules += [Rule(f"{block_src}.{a}.{{rest}}", f"{block_dst}.{b}.{{rest}}", name=f"transformer_blocks {a} -> {b}")
              for a, b in BLOCK_NAMES]
    rules += [Rule(f"{src}.{n}.{{leaf}}", f"{dst}.{n}.{{leaf}}", name=f"temporal_transformer.{n}")
              for n in ("norm", "proj_in", "proj_out")]
    rules.append(Rule("conv_in.{leaf}", "conv_in.{leaf}", name="conv_in (PIA)"))
    return rules


def motion_adapter_map(config: Mapping | None = None) -> KeyMap:
    """Original AnimateDiff motion modules <-> diffusers ``MotionAdapter`` (the names do not depend on
    the config; the argument is there for :class:`vidcore.loading.OriginalFormat`)."""
    return KeyMap(motion_rules(), name="original-animatediff-motion-module")


def detect(keys: Iterable[str]) -> bool:
    """True when the keys are (only) AnimateDiff motion modules in the original layout."""
    keys = list(keys)
    return bool(keys) and any(_MODULE.match(k) for k in keys) and all(
        _MODULE.match(k) or k.startswith("conv_in.") for k in keys)


def _collapse(values: list[int]) -> int | list[int]:
    return values[0] if len(set(values)) == 1 else values


def config_from_keys(state: Mapping[str, torch.Tensor]) -> dict:
    """The diffusers ``MotionAdapter`` config a motion-module file describes (see the module docstring)."""
    modules: dict[tuple[str, int], set[int]] = {}  # (part, level) -> module indices
    blocks: dict[tuple[str, int], set[int]] = {}  # (part, level) -> transformer-block indices of module 0
    widths: dict[int, int] = {}
    max_len = None
    for key, tensor in state.items():
        m = _MODULE.match(key)
        if m is None:
            continue
        part = "down" if m.group(2) is not None else "up" if m.group(3) is not None else "mid"
        level = int(m.group(2) or m.group(3) or 0)
        j, rest = int(m.group(4)), m.group(5)
        modules.setdefault((part, level), set()).add(j)
        b = _BLOCK.match(rest)
        if b is not None and j == 0:
            blocks.setdefault((part, level), set()).add(int(b.group(1)))
        if part == "down" and j == 0 and rest == "norm.weight":
            widths[level] = int(tensor.shape[0])
        if rest.endswith("pos_encoder.pe") and max_len is None and tensor.ndim == 3:
            max_len = int(tensor.shape[1])
    levels = sorted({lvl for part, lvl in modules if part == "down"})
    if not levels or levels != list(range(len(levels))) or set(widths) != set(levels):
        raise ValueError("not an AnimateDiff motion-module file: down_blocks.{i}.motion_modules.{j}."
                         "temporal_transformer.norm.weight missing for some level")
    config = dict(DEFAULT_CONFIG)
    config["block_out_channels"] = [widths[i] for i in levels]
    config["motion_layers_per_block"] = _collapse([len(modules[("down", i)]) for i in levels])
    config["motion_transformer_layers_per_block"] = _collapse([len(blocks.get(("down", i), ())) for i in levels])
    mid = ("mid", 0) in modules
    config["use_motion_mid_block"] = mid
    if mid:
        config["motion_mid_block_layers_per_block"] = len(modules[("mid", 0)])
        config["motion_transformer_layers_per_mid_block"] = len(blocks.get(("mid", 0), ()))
    if max_len is not None:
        config["motion_max_seq_length"] = max_len
    if "conv_in.weight" in state:  # PIA-style input convolution
        config["conv_in_channels"] = int(state["conv_in.weight"].shape[1])
    return config
