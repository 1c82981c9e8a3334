"""Original ControlNet files (lllyasviel's layout: ``control_v11p_sd15_openpose.pth``,
``control_sd15_canny.pth``, ``.safetensors`` re-exports) <-> diffusers ``ControlNetModel`` names.

Such a file stores the ControlNet under ``control_model.`` (some re-exports drop the prefix). The encoder
half is an LDM UNet encoder and uses the LDM UNet names (``time_embed``, ``input_blocks``, ``middle_block``; see
:mod:`vidcore.conversion.maps.original_sd`); the ControlNet's own parts are::

    input_hint_block.0                  controlnet_cond_embedding.conv_in
    input_hint_block.{2k+2}  (k < n)    controlnet_cond_embedding.blocks.k     (odd indices are SiLUs)
    input_hint_block.{2n+2}             controlnet_cond_embedding.conv_out     (n = 2 x (widths - 1); 14 for SD)
    zero_convs.i.0                      controlnet_down_blocks.i
    middle_block_out.0                  controlnet_mid_block

This follows diffusers' ``convert_controlnet_checkpoint`` (single_file_utils); the tests check the reverse map
against it.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from ..engine import KeyMap, Rule
from .original_sd import sd_unet_rules

PREFIX = "control_model."

# lllyasviel/sd-controlnet-openpose config.json (lllyasviel/control_v11p_sd15_openpose has the same values)
SD15_CONTROLNET_CONFIG = {
    "_class_name": "ControlNetModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "class_embed_type": None,
    "conditioning_embedding_out_channels": [16, 32, 96, 256],
    "controlnet_conditioning_channel_order": "rgb",
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "resnet_time_scale_shift": "default",
    "upcast_attention": False,
    "use_linear_projection": False,
}


def _get(config: Mapping, key: str):
    return config.get(key) if config.get(key) is not None else SD15_CONTROLNET_CONFIG[key]


def controlnet_rules(config: Mapping) -> list[Rule]:
    """Original names (``control_model.`` stripped) -> diffusers ``ControlNetModel`` names for `config`'s layout."""
    downs = list(_get(config, "down_block_types"))
    ups = ["CrossAttnUpBlock2D" if "CrossAttn" in t else "UpBlock2D" for t in reversed(downs)]
    unet_like = {"block_out_channels": _get(config, "block_out_channels"), "down_block_types": downs,
                 "up_block_types": ups, "layers_per_block": _get(config, "layers_per_block")}
    # the encoder half of the LDM UNet map (its output_blocks / out rules have nothing to match here)
    rules = [r for r in sd_unet_rules(unet_like) if not r.src.startswith(("output_blocks.", "out."))]
    widths = list(_get(config, "conditioning_embedding_out_channels"))
    n = 2 * (len(widths) - 1)
    rules.append(Rule("input_hint_block.0.{leaf}", "controlnet_cond_embedding.conv_in.{leaf}",
                      name="input_hint_block conv_in"))
    rules += [Rule(f"input_hint_block.{2 * k + 2}.{{leaf}}", f"controlnet_cond_embedding.blocks.{k}.{{leaf}}",
                   name="input_hint_block blocks") for k in range(n)]
    rules += [
        Rule(f"input_hint_block.{2 * n + 2}.{{leaf}}", "controlnet_cond_embedding.conv_out.{leaf}",
             name="input_hint_block conv_out"),
        Rule("zero_convs.{i:int}.0.{leaf}", "controlnet_down_blocks.{i}.{leaf}", name="zero_convs"),
        Rule("middle_block_out.0.{leaf}", "controlnet_mid_block.{leaf}", name="middle_block_out"),
    ]
    return rules


def controlnet_map(config: Mapping | None = None) -> KeyMap:
    """Original ControlNet names (prefix stripped) <-> diffusers ``ControlNetModel``."""
    return KeyMap(controlnet_rules(config or SD15_CONTROLNET_CONFIG), name="original-controlnet")


def detect(keys: Iterable[str]) -> bool:
    """True for an original ControlNet file (with or without the ``control_model.`` prefix)."""
    return any(k.startswith((PREFIX + "input_hint_block.", "input_hint_block.")) for k in keys)


def strip(state: Mapping) -> tuple[dict, list[str]]:
    """The ControlNet's tensors with ``control_model.`` removed, and the keys left out (a full training checkpoint
    also holds the SD model it was trained on)."""
    if any(k.startswith(PREFIX) for k in state):
        return ({k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)},
                sorted(k for k in state if not k.startswith(PREFIX)))
    return dict(state), []
