"""Original Stable Video Diffusion single files (Stability's ``sgm`` layout) <-> diffusers names.

``svd.safetensors``, ``svd_xt.safetensors`` and ``svd_xt_1_1.safetensors`` hold a whole sgm
``DiffusionEngine``; two of its parts are converted here:

* ``model.diffusion_model.*`` (sgm ``VideoUNet``) <-> diffusers ``UNetSpatioTemporalConditionModel``;
* ``first_stage_model.*`` (sgm ``AutoencodingEngine``: SD's KL ``Encoder`` + ``VideoDecoder`` in its
  default ``time_mode="conv-only"``) <-> diffusers ``AutoencoderKLTemporalDecoder``.

``conditioner.embedders.*`` (the OpenCLIP ViT-H image embedder, and a second copy of the VAE encoder)
is not converted: the image encoder comes from a diffusers folder (``config_from``).

UNet layout (L = layers_per_block; block ``n`` of ``input_blocks`` / ``output_blocks`` is a list
``[VideoResBlock, SpatialVideoTransformer?, Upsample?]``)::

    input_blocks.0.0                      conv_in
    input_blocks.{b*(L+1)+j+1}.{0,1}      down_blocks.b.{resnets,attentions}.j
    input_blocks.{(b+1)*(L+1)}.0.op       down_blocks.b.downsamplers.0.conv
    middle_block.{0,1,2}                  mid_block.{resnets.0, attentions.0, resnets.1}
    output_blocks.{u*(L+1)+j}.{0,1}       up_blocks.u.{resnets,attentions}.j
    output_blocks.{u*(L+1)+L}.{2 or 1}    up_blocks.u.upsamplers.0.conv   (2 after an attention, else 1)
    time_embed.{0,2} / label_emb.0.{0,2}  time_embedding / add_embedding .linear_{1,2}

Inside a res block the spatial half keeps LDM names (``in_layers.0`` -> ``spatial_res_block.norm1``
...), ``time_stack.*`` is the temporal half (``temporal_res_block``), ``time_mixer.mix_factor`` is
shared; inside a transformer ``time_stack`` -> ``temporal_transformer_blocks`` and
``time_pos_embed.{0,2}`` -> ``time_pos_embed.linear_{1,2}``, everything else keeps its name.

VAE layout: the encoder is SD's (``down.i.block.j`` -> ``down_blocks.i.resnets.j``, ``nin_shortcut``
-> ``conv_shortcut``, ``mid.block_{1,2}`` / ``mid.attn_1``, ``norm_out`` -> ``conv_norm_out``,
attention ``q/k/v/proj_out/norm`` 1x1 convs -> ``to_q/to_k/to_v/to_out.0`` linears and
``group_norm``). The decoder's up levels run the other way (``up.{n-1-i}`` -> ``up_blocks.i``), each
res block is an sgm ``VideoResBlock`` (spatial names + ``time_stack.*`` temporal half + a bare
``mix_factor``), and the temporal output conv is ``conv_out.time_mix_conv`` (sgm ``AE3DConv``) ->
``time_conv_out``. sgm's ``AutoencodingEngine`` has no ``quant_conv``: diffusers' (an identity for
such a file) is written only when it is not the identity, as ``quant_conv.*`` (``AutoencoderKL``'s name).

This follows diffusers' ``scripts/convert_svd_to_diffusers.py`` (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``); the tests check the reverse maps against those functions. Their VAE
function gets three names wrong for the real file (it reads ``decoder.time_mix_conv``, not sgm's
``decoder.conv_out.time_mix_conv``; it prefixes every ``norm1/conv1/norm2/conv2/conv_shortcut`` with
``spatial_res_block.``, encoder and temporal halves included; ``mix_factor`` lands under
``spatial_res_block``): the map here follows sgm's module names, and the tests name those differences.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

from ..engine import KeyMap, Rule, conv1x1_to_linear, linear_to_conv1x1

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

# stabilityai/stable-video-diffusion-img2vid-xt  unet/config.json (the -img2vid repo differs in num_frames: 14)
SVD_XT_UNET_CONFIG = {
    "_class_name": "UNetSpatioTemporalConditionModel",
    "addition_time_embed_dim": 256,
    "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
    "in_channels": 8,
    "layers_per_block": 2,
    "num_attention_heads": [5, 10, 20, 20],
    "num_frames": 25,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 768,
    "sample_size": 96,
    "transformer_layers_per_block": 1,
    "up_block_types": ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
}

# stabilityai/stable-video-diffusion-img2vid(-xt)  vae/config.json
SVD_VAE_CONFIG = {
    "_class_name": "AutoencoderKLTemporalDecoder",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "out_channels": 3,
    "sample_size": 768,
    "scaling_factor": 0.18215,
}

_RESNET_NAMES = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
]


# --------------------------------------------------------------------------- UNet


def _video_res_block(src: str, dst: str, part: str) -> list[Rule]:
    rules = [Rule(f"{src}.time_mixer.mix_factor", f"{dst}.time_mixer.mix_factor", name=f"{part} time_mixer")]
    for half, pre in (("temporal_res_block", "time_stack."), ("spatial_res_block", "")):
        rules += [Rule(f"{src}.{pre}{a}.{{leaf}}", f"{dst}.{half}.{b}.{{leaf}}", name=f"{part} {pre}{a} -> {half}.{b}")
                  for a, b in _RESNET_NAMES]
    return rules


def _video_transformer(src: str, dst: str, part: str) -> list[Rule]:
    return [
        Rule(src + ".time_stack.{rest}", dst + ".temporal_transformer_blocks.{rest}",
             name=f"{part} time_stack -> temporal_transformer_blocks"),
        Rule(src + ".time_pos_embed.0.{leaf}", dst + ".time_pos_embed.linear_1.{leaf}", name=f"{part} time_pos_embed"),
        Rule(src + ".time_pos_embed.2.{leaf}", dst + ".time_pos_embed.linear_2.{leaf}", name=f"{part} time_pos_embed"),
        Rule(src + ".{rest}", dst + ".{rest}", name=f"{part} spatial-video transformer"),
    ]


def _per_block(value, n: int) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * n


def _unet_layout(config: Mapping) -> tuple[int, list[int], list[bool], list[bool]]:
    get = lambda k: config.get(k) if config.get(k) is not None else SVD_XT_UNET_CONFIG[k]  # noqa: E731
    levels = len(get("block_out_channels"))
    down = [("CrossAttn" in t) for t in get("down_block_types")]
    up = [("CrossAttn" in t) for t in get("up_block_types")]
    if len(down) != levels or len(up) != levels:
        raise ValueError(f"config has {levels} block_out_channels but {len(down)} down and {len(up)} up block types")
    layers = _per_block(get("layers_per_block"), levels)
    if len(set(layers)) != 1:  # LDM's flat block numbering assumes one count for every level
        raise ValueError(f"the sgm layout needs one layers_per_block for every level, got {layers}")
    return levels, layers, down, up


def svd_unet_rules(config: Mapping) -> list[Rule]:
    """sgm ``VideoUNet`` (without ``model.diffusion_model.``) -> diffusers names, for `config`'s layout."""
    levels, layers, down_attn, up_attn = _unet_layout(config)
    L = layers[0]
    rules = [
        Rule("time_embed.0.{leaf}", "time_embedding.linear_1.{leaf}", name="time_embed"),
        Rule("time_embed.2.{leaf}", "time_embedding.linear_2.{leaf}", name="time_embed"),
        Rule("label_emb.0.0.{leaf}", "add_embedding.linear_1.{leaf}", name="label_emb"),
        Rule("label_emb.0.2.{leaf}", "add_embedding.linear_2.{leaf}", name="label_emb"),
        Rule("input_blocks.0.0.{leaf}", "conv_in.{leaf}", name="conv_in"),
        Rule("out.0.{leaf}", "conv_norm_out.{leaf}", name="out"),
        Rule("out.2.{leaf}", "conv_out.{leaf}", name="out"),
    ]
    for b in range(levels):
        for j in range(L):
            n, d = b * (L + 1) + j + 1, f"down_blocks.{b}"
            rules += _video_res_block(f"input_blocks.{n}.0", f"{d}.resnets.{j}", "input_blocks")
            if down_attn[b]:
                rules += _video_transformer(f"input_blocks.{n}.1", f"{d}.attentions.{j}", "input_blocks")
        if b < levels - 1:
            rules.append(Rule(f"input_blocks.{(b + 1) * (L + 1)}.0.op.{{leaf}}",
                              f"down_blocks.{b}.downsamplers.0.conv.{{leaf}}", name="input_blocks downsample op"))
    rules += [
        *_video_res_block("middle_block.0", "mid_block.resnets.0", "middle_block"),
        *_video_transformer("middle_block.1", "mid_block.attentions.0", "middle_block"),
        *_video_res_block("middle_block.2", "mid_block.resnets.1", "middle_block"),
    ]
    for u in range(levels):
        for j in range(L + 1):
            n, d = u * (L + 1) + j, f"up_blocks.{u}"
            rules += _video_res_block(f"output_blocks.{n}.0", f"{d}.resnets.{j}", "output_blocks")
            if up_attn[u]:
                rules += _video_transformer(f"output_blocks.{n}.1", f"{d}.attentions.{j}", "output_blocks")
            if u < levels - 1 and j == L:
                k = 2 if up_attn[u] else 1  # the upsampler follows the block's last module
                rules.append(Rule(f"output_blocks.{n}.{k}.conv.{{leaf}}", f"{d}.upsamplers.0.conv.{{leaf}}",
                                  name="output_blocks upsample conv"))
    return rules


def svd_unet_map(config: Mapping | None = None) -> KeyMap:
    """sgm ``model.diffusion_model.*`` (prefix stripped) <-> diffusers ``UNetSpatioTemporalConditionModel``."""
    return KeyMap(svd_unet_rules(config or SVD_XT_UNET_CONFIG), name="original-sgm-svd-unet")


# --------------------------------------------------------------------------- VAE

_VAE_RESNET = [("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"),
               ("nin_shortcut", "conv_shortcut")]
_VAE_TEMPORAL = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"),
                 ("out_layers.3", "conv2")]
_VAE_ATTN = [("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")]


def _vae_resnet(src: str, dst: str, part: str) -> list[Rule]:
    return [Rule(f"{src}.{a}.{{leaf}}", f"{dst}.{b}.{{leaf}}", name=f"{part} {a} -> {b}") for a, b in _VAE_RESNET]


def _vae_video_resnet(src: str, dst: str, part: str) -> list[Rule]:
    rules = [Rule(f"{src}.mix_factor", f"{dst}.time_mixer.mix_factor", name=f"{part} mix_factor -> time_mixer")]
    rules += [Rule(f"{src}.time_stack.{a}.{{leaf}}", f"{dst}.temporal_res_block.{b}.{{leaf}}",
                   name=f"{part} time_stack.{a} -> temporal_res_block.{b}") for a, b in _VAE_TEMPORAL]
    return rules + _vae_resnet(src, f"{dst}.spatial_res_block", part)


def _vae_attention(src: str, dst: str, part: str) -> list[Rule]:
    return [Rule(f"{src}.{a}.{{leaf}}", f"{dst}.{b}.{{leaf}}", name=f"{part} attention {a} -> {b} (1x1 conv <-> linear)",
                 **({} if a == "norm" else dict(forward=conv1x1_to_linear, reverse=linear_to_conv1x1)))
            for a, b in _VAE_ATTN]


def svd_vae_rules(config: Mapping) -> list[Rule]:
    """sgm ``first_stage_model.*`` (prefix stripped) -> diffusers names, for `config`'s layout."""
    get = lambda k: config.get(k) if config.get(k) is not None else SVD_VAE_CONFIG[k]  # noqa: E731
    levels, layers = len(get("block_out_channels")), int(get("layers_per_block"))
    rules = [
        Rule("quant_conv.{leaf}", "quant_conv.{leaf}", name="quant_conv"),
        Rule("decoder.conv_out.time_mix_conv.{leaf}", "decoder.time_conv_out.{leaf}",
             name="decoder conv_out.time_mix_conv -> time_conv_out"),
    ]
    for side in ("encoder", "decoder"):
        rules += [Rule(f"{side}.conv_in.{{leaf}}", f"{side}.conv_in.{{leaf}}", name=f"{side} conv_in"),
                  Rule(f"{side}.conv_out.{{leaf}}", f"{side}.conv_out.{{leaf}}", name=f"{side} conv_out"),
                  Rule(f"{side}.norm_out.{{leaf}}", f"{side}.conv_norm_out.{{leaf}}", name=f"{side} norm_out"),
                  *_vae_attention(f"{side}.mid.attn_1", f"{side}.mid_block.attentions.0", f"{side} mid")]
    for i in range(levels):
        for j in range(layers):
            rules += _vae_resnet(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", "encoder")
        if i < levels - 1:
            rules.append(Rule(f"encoder.down.{i}.downsample.conv.{{leaf}}",
                              f"encoder.down_blocks.{i}.downsamplers.0.conv.{{leaf}}", name="encoder downsample"))
    for k in range(2):
        rules += _vae_resnet(f"encoder.mid.block_{k + 1}", f"encoder.mid_block.resnets.{k}", "encoder mid")
    for k in range(layers):  # diffusers' decoder mid block has layers_per_block res blocks (2 in sgm)
        rules += _vae_video_resnet(f"decoder.mid.block_{k + 1}", f"decoder.mid_block.resnets.{k}", "decoder mid")
    for i in range(levels):
        level = levels - 1 - i  # sgm counts decoder levels from the output end
        for j in range(layers + 1):
            rules += _vae_video_resnet(f"decoder.up.{level}.block.{j}", f"decoder.up_blocks.{i}.resnets.{j}",
                                       "decoder")
        if i < levels - 1:
            rules.append(Rule(f"decoder.up.{level}.upsample.conv.{{leaf}}",
                              f"decoder.up_blocks.{i}.upsamplers.0.conv.{{leaf}}", name="decoder upsample"))
    return rules


def svd_vae_map(config: Mapping | None = None) -> KeyMap:
    """sgm ``first_stage_model.*`` (prefix stripped) <-> diffusers ``AutoencoderKLTemporalDecoder``."""
    return KeyMap(svd_vae_rules(config or SVD_VAE_CONFIG), name="original-sgm-svd-vae")


def identity_quant_conv(latent_channels: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """The ``quant_conv`` equal to sgm's absent one: a 1x1 identity conv on the 2 * latent moments."""
    c = 2 * latent_channels
    return {"quant_conv.weight": torch.eye(c, dtype=dtype)[:, :, None, None].contiguous(),
            "quant_conv.bias": torch.zeros(c, dtype=dtype)}


def is_identity_quant_conv(state: Mapping[str, torch.Tensor]) -> bool:
    w, b = state.get("quant_conv.weight"), state.get("quant_conv.bias")
    if w is None or b is None or w.ndim != 4 or w.shape[2:] != (1, 1) or w.shape[0] != w.shape[1]:
        return False
    eye = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
    return bool(torch.equal(w[:, :, 0, 0], eye) and not b.any())


# --------------------------------------------------------------------------- detection


def detect(keys: Iterable[str]) -> bool:
    """True for an sgm Stable Video Diffusion file (prefixed keys, as Stability ships it)."""
    keys = set(keys)
    unet = any(k.startswith(UNET_PREFIX + "input_blocks.") and ".time_stack." in k for k in keys)
    vae = any(k.startswith(VAE_PREFIX + "decoder.") and "time_mix_conv" in k for k in keys)
    return unet or vae


def split(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """An sgm file's tensors by component: ``unet`` and ``vae`` (prefixes stripped; others dropped)."""
    out: dict[str, dict[str, torch.Tensor]] = {"unet": {}, "vae": {}}
    for k, v in state.items():
        if k.startswith(UNET_PREFIX):
            out["unet"][k[len(UNET_PREFIX):]] = v
        elif k.startswith(VAE_PREFIX):
            out["vae"][k[len(VAE_PREFIX):]] = v
    return out
