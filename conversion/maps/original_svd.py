"""Original Stable Video Diffusion single files (Stability's ``sgm`` layout) <-> diffusers names.

``svd.safetensors``, ``svd_xt.safetensors`` and ``svd_xt_1_1.safetensors`` hold a whole sgm
``DiffusionEngine``; three of its parts are converted here:

* ``model.diffusion_model.*`` (sgm ``VideoUNet``) <-> diffusers ``UNetSpatioTemporalConditionModel``;
* ``first_stage_model.*`` (sgm ``AutoencodingEngine``: SD's KL ``Encoder`` + ``VideoDecoder`` in its
  default ``time_mode="conv-only"``) <-> diffusers ``AutoencoderKLTemporalDecoder``;
* ``conditioner.embedders.0.open_clip.model.visual.*`` (OpenCLIP ViT-H/14, sgm's
  ``FrozenOpenCLIPImageEmbedder``) <-> transformers ``CLIPVisionModelWithProjection`` (the pipeline's
  ``image_encoder``; no vidcore module of its own).

The rest of the file is skipped on purpose (:data:`SKIPPED_PREFIXES` says why for each prefix;
:func:`unrecognised` lists keys outside both). sgm's conditioner, by ``conditioner.embedders.{n}``
(the SVD / SVD-XT configs)::

    0  FrozenOpenCLIPImagePredictionEmbedder  .open_clip.model.visual.*  -> image_encoder (converted)
                                              .open_clip.model.*          text-tower leftovers, skipped
    1  ConcatTimestepEmbedderND (fps_id)             sinusoidal, no weights
    2  ConcatTimestepEmbedderND (motion_bucket_id)   sinusoidal, no weights
    3  VideoPredictionEmbedderWithEncoder (cond_frames)  .encoder.*  VAE encoder copy, skipped
    4  ConcatTimestepEmbedderND (cond_aug)           sinusoidal, no weights

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

Image-encoder layout (OpenCLIP ``VisionTransformer`` -> transformers ``CLIPVisionModelWithProjection``;
``E`` = ``vision_model.embeddings``, ``L.i`` = ``vision_model.encoder.layers.i``)::

    conv1.weight / class_embedding / positional_embedding   E.patch_embedding.weight / E.class_embedding /
                                                            E.position_embedding.weight
    ln_pre / ln_post                                        vision_model.pre_layrnorm / .post_layernorm
    transformer.resblocks.i.ln_1 / ln_2                     L.i.layer_norm1 / layer_norm2
    transformer.resblocks.i.attn.in_proj_{weight,bias}      L.i.self_attn.{q,k,v}_proj.{weight,bias}  (split in 3)
    transformer.resblocks.i.attn.out_proj                   L.i.self_attn.out_proj
    transformer.resblocks.i.mlp.c_fc / mlp.c_proj           L.i.mlp.fc1 / mlp.fc2
    proj  (width, out)                                      visual_projection.weight (out, width), transposed

Both compute the same function: patch conv without bias, the class token first, pre-norm blocks,
``ln_post`` on the class token, then the projection (OpenCLIP ViT-H/14 uses exact GELU and LayerNorm
eps 1e-5: ``hidden_act="gelu"``, ``layer_norm_eps=1e-5`` in the transformers config). diffusers' script
does not convert the image encoder; the tests check this map against an OpenCLIP-layout forward pass.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

from ..engine import KeyMap, Rule, SplitRule, conv1x1_to_linear, linear_to_conv1x1

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
IMAGE_ENCODER_PREFIX = "conditioner.embedders.0.open_clip.model.visual."
COMPONENT_PREFIXES = {"unet": UNET_PREFIX, "vae": VAE_PREFIX, "image_encoder": IMAGE_ENCODER_PREFIX}

# Keys of an sgm SVD file that are not converted, and why. (embedders 1, 2 and 4 are sinusoidal
# ConcatTimestepEmbedderND modules without weights: a file has no keys for them.)
SKIPPED_PREFIXES = {
    "conditioner.embedders.0.open_clip.model.":
        "what sgm's FrozenOpenCLIPImageEmbedder keeps of the OpenCLIP text tower after deleting its "
        "transformer (token_embedding, positional_embedding, ln_final, text_projection, logit_scale); "
        "Stable Video Diffusion never runs it",
    "conditioner.embedders.3.encoder.":
        "a second VAE encoder (+ quant_conv) in the cond_frames embedder; the pipeline encodes the input "
        "image with its VAE (first_stage_model.*), as diffusers does",
}

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

RESNET_NAMES = [
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
                  for a, b in RESNET_NAMES]
    return rules


def _video_transformer(src: str, dst: str, part: str) -> list[Rule]:
    return [
        Rule(src + ".time_stack.{rest}", dst + ".temporal_transformer_blocks.{rest}",
             name=f"{part} time_stack -> temporal_transformer_blocks"),
        Rule(src + ".time_pos_embed.0.{leaf}", dst + ".time_pos_embed.linear_1.{leaf}", name=f"{part} time_pos_embed"),
        Rule(src + ".time_pos_embed.2.{leaf}", dst + ".time_pos_embed.linear_2.{leaf}", name=f"{part} time_pos_embed"),
        Rule(src + ".{rest}", dst + ".{rest}", name=f"{part} spatial-video transformer"),
    ]


def per_block(value, n: int) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * n


def _unet_layout(config: Mapping) -> tuple[int, list[int], list[bool], list[bool]]:
    get = lambda k: config.get(k) if config.get(k) is not None else SVD_XT_UNET_CONFIG[k]  # noqa: E731
    levels = len(get("block_out_channels"))
    down = [("CrossAttn" in t) for t in get("down_block_types")]
    up = [("CrossAttn" in t) for t in get("up_block_types")]
    if len(down) != levels or len(up) != levels:
        raise ValueError(f"config has {levels} block_out_channels but {len(down)} down and {len(up)} up block types")
    layers = per_block(get("layers_per_block"), levels)
    if len(set(layers)) != 1:  # LDM's flat block numbering assumes one count for every level
        raise ValueError(f"the sgm layout needs one layers_per_block for every level, got {layers}")
    return levels, layers, down, up


def ldm_unet_rules(levels: int, L: int, down_attn: list[bool], up_attn: list[bool], res_block, transformer,
                   extra_head: Iterable[Rule] = ()) -> list[Rule]:
    """The LDM ``UNetModel`` numbering shared by SD's and sgm's video UNet: ``input_blocks.N`` (res block
    at slot 0, transformer at slot 1, a downsampler ``op`` block after each level), a res/attention/res
    ``middle_block`` and ``output_blocks.N`` (upsampler after the level's last module), mapped to
    diffusers' down/mid/up blocks. ``res_block(src, dst, part)`` and ``transformer(src, dst, part)``
    give the rules of one module; ``L`` res blocks per down level (``L + 1`` per up level)."""
    rules = [
        Rule("time_embed.0.{leaf}", "time_embedding.linear_1.{leaf}", name="time_embed"),
        Rule("time_embed.2.{leaf}", "time_embedding.linear_2.{leaf}", name="time_embed"),
        *extra_head,
        Rule("input_blocks.0.0.{leaf}", "conv_in.{leaf}", name="conv_in"),
        Rule("out.0.{leaf}", "conv_norm_out.{leaf}", name="out"),
        Rule("out.2.{leaf}", "conv_out.{leaf}", name="out"),
    ]
    for b in range(levels):
        for j in range(L):
            n, d = b * (L + 1) + j + 1, f"down_blocks.{b}"
            rules += res_block(f"input_blocks.{n}.0", f"{d}.resnets.{j}", "input_blocks")
            if down_attn[b]:
                rules += transformer(f"input_blocks.{n}.1", f"{d}.attentions.{j}", "input_blocks")
        if b < levels - 1:
            rules.append(Rule(f"input_blocks.{(b + 1) * (L + 1)}.0.op.{{leaf}}",
                              f"down_blocks.{b}.downsamplers.0.conv.{{leaf}}", name="input_blocks downsample op"))
    rules += [
        *res_block("middle_block.0", "mid_block.resnets.0", "middle_block"),
        *transformer("middle_block.1", "mid_block.attentions.0", "middle_block"),
        *res_block("middle_block.2", "mid_block.resnets.1", "middle_block"),
    ]
    for u in range(levels):
        for j in range(L + 1):
            n, d = u * (L + 1) + j, f"up_blocks.{u}"
            rules += res_block(f"output_blocks.{n}.0", f"{d}.resnets.{j}", "output_blocks")
            if up_attn[u]:
                rules += transformer(f"output_blocks.{n}.1", f"{d}.attentions.{j}", "output_blocks")
            if u < levels - 1 and j == L:
                k = 2 if up_attn[u] else 1  # the upsampler follows the block's last module
                rules.append(Rule(f"output_blocks.{n}.{k}.conv.{{leaf}}", f"{d}.upsamplers.0.conv.{{leaf}}",
                                  name="output_blocks upsample conv"))
    return rules


def svd_unet_rules(config: Mapping) -> list[Rule]:
    """sgm ``VideoUNet`` (without ``model.diffusion_model.``) -> diffusers names, for `config`'s layout."""
    levels, layers, down_attn, up_attn = _unet_layout(config)
    label_emb = [Rule("label_emb.0.0.{leaf}", "add_embedding.linear_1.{leaf}", name="label_emb"),
                 Rule("label_emb.0.2.{leaf}", "add_embedding.linear_2.{leaf}", name="label_emb")]
    return ldm_unet_rules(levels, layers[0], down_attn, up_attn, _video_res_block, _video_transformer, label_emb)


def svd_unet_map(config: Mapping | None = None) -> KeyMap:
    """sgm ``model.diffusion_model.*`` (prefix stripped) <-> diffusers ``UNetSpatioTemporalConditionModel``."""
    return KeyMap(svd_unet_rules(config or SVD_XT_UNET_CONFIG), name="original-sgm-svd-unet")


# --------------------------------------------------------------------------- VAE

_VAE_RESNET = [("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"),
               ("nin_shortcut", "conv_shortcut")]
_VAE_TEMPORAL = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"),
                 ("out_layers.3", "conv2")]
_VAE_ATTN = [("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")]


def vae_resnet(src: str, dst: str, part: str) -> list[Rule]:
    return [Rule(f"{src}.{a}.{{leaf}}", f"{dst}.{b}.{{leaf}}", name=f"{part} {a} -> {b}") for a, b in _VAE_RESNET]


def _vae_video_resnet(src: str, dst: str, part: str) -> list[Rule]:
    rules = [Rule(f"{src}.mix_factor", f"{dst}.time_mixer.mix_factor", name=f"{part} mix_factor -> time_mixer")]
    rules += [Rule(f"{src}.time_stack.{a}.{{leaf}}", f"{dst}.temporal_res_block.{b}.{{leaf}}",
                   name=f"{part} time_stack.{a} -> temporal_res_block.{b}") for a, b in _VAE_TEMPORAL]
    return rules + vae_resnet(src, f"{dst}.spatial_res_block", part)


def vae_attention(src: str, dst: str, part: str) -> list[Rule]:
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
                  *vae_attention(f"{side}.mid.attn_1", f"{side}.mid_block.attentions.0", f"{side} mid")]
    for i in range(levels):
        for j in range(layers):
            rules += vae_resnet(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", "encoder")
        if i < levels - 1:
            rules.append(Rule(f"encoder.down.{i}.downsample.conv.{{leaf}}",
                              f"encoder.down_blocks.{i}.downsamplers.0.conv.{{leaf}}", name="encoder downsample"))
    for k in range(2):
        rules += vae_resnet(f"encoder.mid.block_{k + 1}", f"encoder.mid_block.resnets.{k}", "encoder mid")
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


# --------------------------------------------------------------------------- image encoder

# stabilityai/stable-video-diffusion-img2vid(-xt)  image_encoder/config.json: OpenCLIP ViT-H/14
SVD_IMAGE_ENCODER_CONFIG = {
    "architectures": ["CLIPVisionModelWithProjection"],
    "model_type": "clip_vision_model",
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "image_size": 224,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 5120,
    "layer_norm_eps": 1e-05,
    "num_attention_heads": 16,
    "num_channels": 3,
    "num_hidden_layers": 32,
    "patch_size": 14,
    "projection_dim": 1024,
}


def transpose_2d(t: torch.Tensor) -> torch.Tensor:
    """OpenCLIP's ``proj`` (width, out), used as ``x @ proj`` <-> a linear weight (out, width); its own inverse."""
    return t.t().contiguous()


def open_clip_vision_rules() -> list[Rule | SplitRule]:
    """OpenCLIP ``VisionTransformer`` names (without ``...open_clip.model.visual.``) -> transformers'
    ``CLIPVisionModelWithProjection`` names. The layer count comes from the keys, not a config."""
    emb, block, layer = "vision_model.embeddings", "transformer.resblocks.{i:int}", "vision_model.encoder.layers.{i}"
    return [
        Rule("conv1.weight", f"{emb}.patch_embedding.weight", name="conv1 -> patch_embedding"),
        Rule("class_embedding", f"{emb}.class_embedding", name="class_embedding"),
        Rule("positional_embedding", f"{emb}.position_embedding.weight", name="positional_embedding"),
        Rule("ln_pre.{leaf}", "vision_model.pre_layrnorm.{leaf}", name="ln_pre -> pre_layrnorm"),
        Rule(block + ".ln_1.{leaf}", layer + ".layer_norm1.{leaf}", name="resblocks ln_1 -> layer_norm1"),
        SplitRule(block + ".attn.in_proj_weight",
                  tuple(f"{layer}.self_attn.{p}_proj.weight" for p in "qkv"), name="resblocks in_proj_weight -> q/k/v"),
        SplitRule(block + ".attn.in_proj_bias",
                  tuple(f"{layer}.self_attn.{p}_proj.bias" for p in "qkv"), name="resblocks in_proj_bias -> q/k/v"),
        Rule(block + ".attn.out_proj.{leaf}", layer + ".self_attn.out_proj.{leaf}", name="resblocks out_proj"),
        Rule(block + ".ln_2.{leaf}", layer + ".layer_norm2.{leaf}", name="resblocks ln_2 -> layer_norm2"),
        Rule(block + ".mlp.c_fc.{leaf}", layer + ".mlp.fc1.{leaf}", name="resblocks mlp.c_fc -> fc1"),
        Rule(block + ".mlp.c_proj.{leaf}", layer + ".mlp.fc2.{leaf}", name="resblocks mlp.c_proj -> fc2"),
        Rule("ln_post.{leaf}", "vision_model.post_layernorm.{leaf}", name="ln_post -> post_layernorm"),
        Rule("proj", "visual_projection.weight", forward=transpose_2d, reverse=transpose_2d,
             name="proj -> visual_projection (transposed)"),
    ]


def open_clip_vision_map() -> KeyMap:
    """sgm ``conditioner.embedders.0.open_clip.model.visual.*`` (prefix stripped) <-> transformers
    ``CLIPVisionModelWithProjection``."""
    return KeyMap(open_clip_vision_rules(), name="original-sgm-svd-image-encoder")


# --------------------------------------------------------------------------- detection


def detect(keys: Iterable[str]) -> bool:
    """True for an sgm Stable Video Diffusion file (prefixed keys, as Stability ships it), or a file
    holding one of its components under its sgm prefix (as :func:`vidcore.loading.save_original` writes)."""
    keys = set(keys)
    unet = any(k.startswith(UNET_PREFIX + "input_blocks.") and ".time_stack." in k for k in keys)
    vae = any(k.startswith(VAE_PREFIX + "decoder.") and "time_mix_conv" in k for k in keys)
    image_encoder = any(k.startswith(IMAGE_ENCODER_PREFIX + "transformer.resblocks.") for k in keys)
    return unet or vae or image_encoder


def split(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """An sgm file's tensors by component: ``unet``, ``vae`` and ``image_encoder`` (prefixes stripped;
    other keys dropped, see :func:`unrecognised`)."""
    out: dict[str, dict[str, torch.Tensor]] = {name: {} for name in COMPONENT_PREFIXES}
    for k, v in state.items():
        for name, prefix in COMPONENT_PREFIXES.items():
            if k.startswith(prefix):
                out[name][k[len(prefix):]] = v
                break
    return out


def unrecognised(keys: Iterable[str]) -> list[str]:
    """Keys that belong neither to a converted component nor to :data:`SKIPPED_PREFIXES` (sorted)."""
    known = (*COMPONENT_PREFIXES.values(), *SKIPPED_PREFIXES)
    return sorted(k for k in keys if not k.startswith(known))
