"""Original SparseCtrl files (guoyww/AnimateDiff ``v3_sd15_sparsectrl_scribble.ckpt`` / ``_rgb.ckpt``) <->
diffusers ``SparseControlNetModel`` names.

The ControlNet part already has diffusers' names; only the motion modules use AnimateDiff's original ones
(as in the motion-module files, :mod:`.original_motion`), with a single attention block per transformer block::

    down_blocks.{i}.motion_modules.{j}.temporal_transformer.{norm, proj_in, proj_out}   -> ...motion_modules.{j}.*
    ...temporal_transformer.transformer_blocks.{k}.attention_blocks.0.*                 -> ...transformer_blocks.{k}.attn1.*
    ...temporal_transformer.transformer_blocks.{k}.attention_blocks.0.pos_encoder.pe    -> ...transformer_blocks.{k}.pos_embed.pe
    ...norms.0 -> norm1, ff_norm -> norm3, ff -> ff

The renames are those of diffusers' ``convert_animatediff_checkpoint_to_diffusers`` (which
``SparseControlNetModel.from_single_file`` uses; it drops the position tables and recomputes them, vidcore keeps
the file's). The variant is told by the condition embedding: a conv stack (``controlnet_cond_embedding.conv_in``,
scribble) or one conv (``controlnet_cond_embedding.weight``, RGB).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..engine import KeyMap, Rule
from .common import identity

# hub configs of guoyww/animatediff-sparsectrl-rgb (the class defaults) and -scribble
RGB_CONFIG = {
    "_class_name": "SparseControlNetModel",
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlockMotion"] * 3 + ["DownBlockMotion"],
    "conditioning_channels": 4,
    "concat_conditioning_mask": True,
    "use_simplified_condition_embedding": True,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "motion_max_seq_length": 32,
    "motion_num_attention_heads": 8,
    "layers_per_block": 2,
    "norm_num_groups": 32,
}
SCRIBBLE_CONFIG = {**RGB_CONFIG, "conditioning_channels": 3, "use_simplified_condition_embedding": False}

_SRC = "down_blocks.{i:int}.motion_modules.{j:int}.temporal_transformer"
_DST = "down_blocks.{i}.motion_modules.{j}"
_RULES = [
    Rule(_SRC + ".transformer_blocks.{k:int}.attention_blocks.0.pos_encoder.pe",
         _DST + ".transformer_blocks.{k}.pos_embed.pe", name="attention_blocks.0.pos_encoder.pe -> pos_embed.pe"),
    *[Rule(f"{_SRC}.transformer_blocks.{{k:int}}.{a}.{{rest}}", f"{_DST}.transformer_blocks.{{k}}.{b}.{{rest}}",
           name=f"transformer_blocks {a} -> {b}")
      for a, b in (("attention_blocks.0", "attn1"), ("norms.0", "norm1"), ("ff_norm", "norm3"), ("ff", "ff"))],
    *[Rule(f"{_SRC}.{n}.{{leaf}}", f"{_DST}.{n}.{{leaf}}", name=f"temporal_transformer.{n}")
      for n in ("norm", "proj_in", "proj_out")],
    identity(),
]
SPARSECTRL_MAP = KeyMap(_RULES, name="original-sparsectrl")


def sparsectrl_map(config: Mapping | None = None) -> KeyMap:
    """Original SparseCtrl names <-> diffusers names (the same for both variants)."""
    return SPARSECTRL_MAP


def detect(keys: Iterable[str]) -> str | None:
    """"scribble" / "rgb" for an original SparseCtrl file's keys, else None."""
    keys = set(keys)
    if not any(k.startswith("down_blocks.0.motion_modules.0.temporal_transformer.") for k in keys):
        return None
    if "controlnet_cond_embedding.conv_in.weight" in keys:
        return "scribble"
    if "controlnet_cond_embedding.weight" in keys:
        return "rgb"
    return None
