"""Original ModelScope / VGen UNet checkpoints <-> diffusers names (UNet3DConditionModel, I2VGenXLUNet).

Two single-file layouts share one family (both written by Alibaba's ``UNetSD`` code):

* ModelScope text-to-video (``text2video_pytorch_model.pth``, damo-vilab/text-to-video-ms-1.7b) ->
  diffusers ``UNet3DConditionModel``;
* VGen I2VGen-XL (``i2vgen_xl_00854500.pth``, ali-vilab/i2vgen-xl; tensors under a ``state_dict``
  key) -> diffusers ``I2VGenXLUNet``: the same UNet plus the image-latent modules.

The layout is LDM's ``input_blocks`` / ``middle_block`` / ``output_blocks``, where block ``n`` is a
list ``[res block (with its temporal conv, spelled "temopral_conv"), spatial transformer,
temporal transformer]`` and the down/upsamplers sit at fixed places::

    input_blocks.0.0                    conv_in            input_blocks.0.1   transformer_in
    input_blocks.{b*(L+1)+j+1}.{0,1,2}  down_blocks.b.{resnets,attentions,temp_attentions}.j
    input_blocks.{(b+1)*(L+1)}.op       down_blocks.b.downsamplers.0.conv
    middle_block.{0,1,2,3}              mid_block.{resnets.0, attentions.0, temp_attentions.0, resnets.1}
    output_blocks.{u*(L+1)+j}.{0,1,2}   up_blocks.u.{resnets,attentions,temp_attentions}.j
    output_blocks.{u*(L+1)+L}.{3 or 1}  up_blocks.u.upsamplers.0.conv  (3 after attention, else 1)

(L = layers_per_block.) Inside a block the names are diffusers' own except the res block's
(``in_layers.0`` -> ``norm1`` ...) and the temporal transformers' ``proj_in``/``proj_out``, which
are ``Conv1d`` (o, i, 1) in the original and ``Linear`` (o, i) in diffusers. I2VGen-XL adds
``local_image_concat`` / ``local_image_embedding`` (renamed), ``context_embedding`` /
``fps_embedding`` (same names) and ``local_temporal_encoder`` with a fused ``to_qkv``.

This follows diffusers' ``scripts/convert_ms_text_to_video_to_diffusers.py`` and
``scripts/convert_i2vgen_to_diffusers.py``; the tests check the reverse map against those scripts.
The index arithmetic needs the block layout, so the maps are generated from a diffusers-style config
(``block_out_channels``, ``layers_per_block``, ``down_block_types``, ``up_block_types``).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

from ..engine import KeyMap, Rule, SplitRule

# diffusers' class defaults; the hub configs below differ only in sample_size (32).
_UNET3D_DEFAULTS = {
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
    "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3,
}

# damo-vilab/text-to-video-ms-1.7b  unet/config.json
MODELSCOPE_UNET_CONFIG = {
    "_class_name": "UNet3DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 64,
    "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
    "downsample_padding": 1,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 32,
    "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3,
}

# ali-vilab/i2vgen-xl  unet/config.json
I2VGEN_XL_UNET_CONFIG = {
    "_class_name": "I2VGenXLUNet",
    "attention_head_dim": 64,
    "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
    "in_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "num_attention_heads": 64,
    "out_channels": 4,
    "sample_size": 32,
    "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3,
}


# --------------------------------------------------------------------------- transforms


def conv1d_to_linear(t: torch.Tensor) -> torch.Tensor:
    """(o, i, 1) Conv1d weight -> (o, i) Linear weight; 2-D weights and biases pass through."""
    if t.ndim == 3 and t.shape[2] == 1:
        return t[:, :, 0]
    return t


def linear_to_conv1d(t: torch.Tensor) -> torch.Tensor:
    """(o, i) Linear weight -> (o, i, 1) Conv1d weight, as the original checkpoints store it."""
    if t.ndim == 2:
        return t[:, :, None]
    return t


# --------------------------------------------------------------------------- rule builders

RESNET_NAMES = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
]


def _res_block(src: str, resnet: str, temp_conv: str, part: str) -> list[Rule]:
    """A res block and the temporal conv it holds (``temopral_conv``, sic)."""
    rules = [Rule(src + ".temopral_conv.{rest}", temp_conv + ".{rest}", name=f"{part} temopral_conv -> temp_convs")]
    rules += [Rule(f"{src}.{a}.{{leaf}}", f"{resnet}.{b}.{{leaf}}", name=f"{part} resnet {a} -> {b}")
              for a, b in RESNET_NAMES]
    return rules


def _spatial(src: str, dst: str, part: str) -> list[Rule]:
    return [Rule(src + ".{rest}", dst + ".{rest}", name=f"{part} spatial transformer")]


def _temporal(src: str, dst: str, part: str) -> list[Rule]:
    """A temporal transformer: Conv1d projections in the original, Linear in diffusers."""
    return [
        *[Rule(f"{src}.{p}.{{leaf}}", f"{dst}.{p}.{{leaf}}", forward=conv1d_to_linear, reverse=linear_to_conv1d,
               name=f"{part} temporal transformer {p} (conv1d <-> linear)") for p in ("proj_in", "proj_out")],
        Rule(src + ".{rest}", dst + ".{rest}", name=f"{part} temporal transformer"),
    ]


def _layout(config: Mapping) -> tuple[int, int, list[bool], list[bool]]:
    get = lambda k: config.get(k) if config.get(k) is not None else _UNET3D_DEFAULTS[k]  # noqa: E731
    levels = len(get("block_out_channels"))
    layers = int(get("layers_per_block"))
    down = [("CrossAttn" in t) for t in get("down_block_types")]
    up = [("CrossAttn" in t) for t in get("up_block_types")]
    if len(down) != levels or len(up) != levels:
        raise ValueError(f"config has {levels} block_out_channels but {len(down)} down and {len(up)} up block types")
    return levels, layers, down, up


def unet3d_rules(config: Mapping) -> list[Rule]:
    """Rules for the ModelScope UNet (shared by I2VGen-XL), generated for `config`'s block layout."""
    levels, layers, down_attn, up_attn = _layout(config)
    rules = [
        Rule("time_embed.0.{leaf}", "time_embedding.linear_1.{leaf}", name="time_embed"),
        Rule("time_embed.2.{leaf}", "time_embedding.linear_2.{leaf}", name="time_embed"),
        Rule("input_blocks.0.0.{leaf}", "conv_in.{leaf}", name="conv_in"),
        *_temporal("input_blocks.0.1", "transformer_in", "input_blocks.0"),
        Rule("out.0.{leaf}", "conv_norm_out.{leaf}", name="out"),
        Rule("out.2.{leaf}", "conv_out.{leaf}", name="out"),
    ]
    for b in range(levels):
        for j in range(layers):
            n, d = b * (layers + 1) + j + 1, f"down_blocks.{b}"
            rules += _res_block(f"input_blocks.{n}.0", f"{d}.resnets.{j}", f"{d}.temp_convs.{j}", "input_blocks")
            if down_attn[b]:
                rules += _spatial(f"input_blocks.{n}.1", f"{d}.attentions.{j}", "input_blocks")
                rules += _temporal(f"input_blocks.{n}.2", f"{d}.temp_attentions.{j}", "input_blocks")
        if b < levels - 1:
            rules.append(Rule(f"input_blocks.{(b + 1) * (layers + 1)}.op.{{leaf}}",
                              f"down_blocks.{b}.downsamplers.0.conv.{{leaf}}", name="input_blocks downsample op"))
    rules += [
        *_res_block("middle_block.0", "mid_block.resnets.0", "mid_block.temp_convs.0", "middle_block"),
        *_spatial("middle_block.1", "mid_block.attentions.0", "middle_block"),
        *_temporal("middle_block.2", "mid_block.temp_attentions.0", "middle_block"),
        *_res_block("middle_block.3", "mid_block.resnets.1", "mid_block.temp_convs.1", "middle_block"),
    ]
    for u in range(levels):
        for j in range(layers + 1):
            n, d = u * (layers + 1) + j, f"up_blocks.{u}"
            rules += _res_block(f"output_blocks.{n}.0", f"{d}.resnets.{j}", f"{d}.temp_convs.{j}", "output_blocks")
            if up_attn[u]:
                rules += _spatial(f"output_blocks.{n}.1", f"{d}.attentions.{j}", "output_blocks")
                rules += _temporal(f"output_blocks.{n}.2", f"{d}.temp_attentions.{j}", "output_blocks")
            if u < levels - 1 and j == layers:
                k = 3 if up_attn[u] else 1  # the upsampler follows the block's last module
                rules.append(Rule(f"output_blocks.{n}.{k}.conv.{{leaf}}", f"{d}.upsamplers.0.conv.{{leaf}}",
                                  name="output_blocks upsample conv"))
    return rules


def i2vgen_extra_rules() -> list[Rule | SplitRule]:
    """I2VGen-XL's image-latent modules (VGen ``UNetSD_I2VGen``)."""
    enc, dst = "local_temporal_encoder.layers.0", "image_latents_temporal_encoder"
    return [
        Rule("local_image_concat.{rest}", "image_latents_proj_in.{rest}", name="local_image_concat"),
        Rule("local_image_embedding.{rest}", "image_latents_context_embedding.{rest}", name="local_image_embedding"),
        Rule("context_embedding.{rest}", "context_embedding.{rest}", name="context_embedding"),
        Rule("fps_embedding.{rest}", "fps_embedding.{rest}", name="fps_embedding"),
        Rule(enc + ".0.norm.{leaf}", dst + ".norm1.{leaf}", name="local_temporal_encoder norm"),
        SplitRule(enc + ".0.fn.to_qkv.{leaf}", tuple(f"{dst}.attn1.to_{x}.{{leaf}}" for x in "qkv"),
                  name="local_temporal_encoder to_qkv -> to_q, to_k, to_v"),
        Rule(enc + ".0.fn.to_out.0.{leaf}", dst + ".attn1.to_out.0.{leaf}", name="local_temporal_encoder to_out"),
        Rule(enc + ".1.net.0.0.{leaf}", dst + ".ff.net.0.proj.{leaf}", name="local_temporal_encoder ff"),
        Rule(enc + ".1.net.2.{leaf}", dst + ".ff.net.2.{leaf}", name="local_temporal_encoder ff"),
    ]


def modelscope_unet3d_map(config: Mapping | None = None) -> KeyMap:
    """ModelScope ``text2video_pytorch_model.pth`` <-> diffusers ``UNet3DConditionModel`` (for `config`)."""
    return KeyMap(unet3d_rules(config or MODELSCOPE_UNET_CONFIG), name="original-modelscope-unet3d")


def i2vgen_xl_map(config: Mapping | None = None) -> KeyMap:
    """VGen ``i2vgen_xl_00854500.pth`` <-> diffusers ``I2VGenXLUNet`` (for `config`)."""
    return KeyMap([*i2vgen_extra_rules(), *unet3d_rules(config or I2VGEN_XL_UNET_CONFIG)],
                  name="original-i2vgen-xl-unet")


# --------------------------------------------------------------------------- detection


def detect(keys: Iterable[str]) -> str | None:
    """"i2vgen_xl_unet", "unet3d" (vidcore architecture names) or None, from a state dict's keys."""
    keys = set(keys)
    if not {"input_blocks.0.0.weight", "out.2.weight"} <= keys:
        return None
    if any(k.startswith(("local_image_concat.", "local_temporal_encoder.")) for k in keys):
        return "i2vgen_xl_unet"
    if any(k.startswith("input_blocks.0.1.") for k in keys) or any(".temopral_conv." in k for k in keys):
        return "unet3d"
    return None
