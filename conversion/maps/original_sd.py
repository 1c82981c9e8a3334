"""Original Stable Diffusion 1.x single files (CompVis LDM layout: ``v1-5-pruned-emaonly.safetensors`` and
the civitai fine-tunes shipped the same way) <-> diffusers names.

Such a file holds a whole LDM ``LatentDiffusion``; three parts are converted:

* ``model.diffusion_model.*`` (LDM ``UNetModel``) <-> diffusers ``UNet2DConditionModel``;
* ``first_stage_model.*`` (LDM ``AutoencoderKL``) <-> diffusers ``AutoencoderKL``;
* ``cond_stage_model.transformer.*`` (``FrozenCLIPEmbedder``: a transformers ``CLIPTextModel``, so its keys
  already are transformers' ``text_model.*``) <-> transformers ``CLIPTextModel`` (the pipeline's
  ``text_encoder``; no vidcore module of its own; transformers 5 drops the ``text_model.`` level).

The rest is skipped on purpose (:data:`SKIPPED`): the EMA copy of the UNet (``model_ema.*``, diffusers
also loads the non-EMA weights by default), the noise-schedule buffers LDM stores (``betas``,
``alphas_cumprod``, ...; the scheduler recomputes them) and the text encoder's ``position_ids`` (a
transformers buffer, ``arange(77)``, not a weight; some fine-tunes carry a corrupted float copy).
:func:`unrecognised` lists anything else. SD2.x files hold an OpenCLIP text tower
(``cond_stage_model.model.*``) that is not converted; their UNet and VAE load with an SD2 ``config_from``.

UNet layout (L = layers_per_block; ``input_blocks`` / ``output_blocks`` entry ``n`` is a list
``[ResBlock, SpatialTransformer?, Upsample?]``)::

    time_embed.{0,2}                      time_embedding.linear_{1,2}
    input_blocks.0.0                      conv_in
    input_blocks.{b*(L+1)+j+1}.{0,1}      down_blocks.b.{resnets,attentions}.j
    input_blocks.{(b+1)*(L+1)}.0.op       down_blocks.b.downsamplers.0.conv
    middle_block.{0,1,2}                  mid_block.{resnets.0, attentions.0, resnets.1}
    output_blocks.{u*(L+1)+j}.{0,1}       up_blocks.u.{resnets,attentions}.j
    output_blocks.{u*(L+1)+L}.{2 or 1}    up_blocks.u.upsamplers.0.conv   (2 after an attention, else 1)
    out.{0,2}                             conv_norm_out / conv_out

Res blocks: ``in_layers.{0,2}`` -> ``norm1/conv1``, ``emb_layers.1`` -> ``time_emb_proj``,
``out_layers.{0,3}`` -> ``norm2/conv2``, ``skip_connection`` -> ``conv_shortcut``. Spatial transformers keep
their names (SD1.x stores ``proj_in``/``proj_out`` as 1x1 convolutions, SD2.x as linear layers; diffusers
keeps either shape, and vidcore's UNet2D map converts by config).

VAE layout: ``{encoder,decoder}.{conv_in, conv_out}``, ``norm_out`` -> ``conv_norm_out``,
``encoder.down.i.block.j`` -> ``encoder.down_blocks.i.resnets.j`` (``nin_shortcut`` -> ``conv_shortcut``),
``encoder.down.i.downsample.conv`` -> ``downsamplers.0.conv``, ``mid.block_{1,2}`` -> ``mid_block.resnets.{0,1}``,
``mid.attn_1.{norm, q, k, v, proj_out}`` (1x1 convs) -> ``mid_block.attentions.0.{group_norm, to_q, to_k,
to_v, to_out.0}`` (linears); the decoder's levels run the other way (``decoder.up.{n-1-i}`` ->
``decoder.up_blocks.i``); ``quant_conv`` / ``post_quant_conv`` keep their names.

This follows diffusers' ``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint`` and
``convert_ldm_clip_checkpoint`` (single_file_utils); the tests check the reverse maps against them.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

from ..engine import KeyMap, Rule
from .original_svd import RESNET_NAMES, per_block, vae_attention, vae_resnet, ldm_unet_rules

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."
COMPONENT_PREFIXES = {"unet": UNET_PREFIX, "vae": VAE_PREFIX, "text_encoder": TEXT_ENCODER_PREFIX}
POSITION_IDS = TEXT_ENCODER_PREFIX + "text_model.embeddings.position_ids"

_SCHEDULE = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
             "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
             "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
             "logvar", "lvlb_weights", "model_ema.decay", "model_ema.num_updates")
SKIPPED = {
    "model_ema.": "the UNet's EMA copy (flattened names); the non-EMA weights are loaded, as diffusers does",
    POSITION_IDS: "transformers' position-index buffer (arange(77)), recomputed by CLIPTextModel",
    **{name: "a noise-schedule buffer of LDM's LatentDiffusion; the scheduler recomputes it" for name in _SCHEDULE},
}

# runwayml/stable-diffusion-v1-5  unet/config.json
SD15_UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}

# runwayml/stable-diffusion-v1-5  vae/config.json
SD15_VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# runwayml/stable-diffusion-v1-5  text_encoder/config.json (OpenAI CLIP ViT-L/14 text tower)
SD15_TEXT_ENCODER_CONFIG = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}


# --------------------------------------------------------------------------- UNet


def _res_block(src: str, dst: str, part: str) -> list[Rule]:
    return [Rule(f"{src}.{a}.{{leaf}}", f"{dst}.{b}.{{leaf}}", name=f"{part} {a} -> {b}") for a, b in RESNET_NAMES]


def _unet_layout(config: Mapping) -> tuple[int, int, list[bool], list[bool]]:
    get = lambda k: config.get(k) if config.get(k) is not None else SD15_UNET_CONFIG[k]  # noqa: E731
    levels = len(get("block_out_channels"))
    down = [("CrossAttn" in t) for t in get("down_block_types")]
    up = [("CrossAttn" in t) for t in get("up_block_types")]
    if len(down) != levels or len(up) != levels:
        raise ValueError(f"config has {levels} block_out_channels but {len(down)} down and {len(up)} up block types")
    layers = per_block(get("layers_per_block"), levels)
    if len(set(layers)) != 1:  # LDM's flat block numbering assumes one count for every level
        raise ValueError(f"the LDM layout needs one layers_per_block for every level, got {layers}")
    return levels, layers[0], down, up


def _transformer(src: str, dst: str, part: str) -> list[Rule]:
    return [Rule(f"{src}.{{rest}}", f"{dst}.{{rest}}", name=f"{part} transformer")]


def sd_unet_rules(config: Mapping) -> list[Rule]:
    """LDM ``UNetModel`` names (without ``model.diffusion_model.``) -> diffusers names, for `config`'s layout."""
    levels, L, down_attn, up_attn = _unet_layout(config)
    return ldm_unet_rules(levels, L, down_attn, up_attn, _res_block, _transformer)


def sd_unet_map(config: Mapping | None = None) -> KeyMap:
    """LDM ``model.diffusion_model.*`` (prefix stripped) <-> diffusers ``UNet2DConditionModel``."""
    return KeyMap(sd_unet_rules(config or SD15_UNET_CONFIG), name="original-ldm-sd-unet")


# --------------------------------------------------------------------------- VAE


def sd_vae_rules(config: Mapping) -> list[Rule]:
    """LDM ``first_stage_model.*`` (prefix stripped) -> diffusers ``AutoencoderKL`` names."""
    get = lambda k: config.get(k) if config.get(k) is not None else SD15_VAE_CONFIG[k]  # noqa: E731
    levels, layers = len(get("block_out_channels")), int(get("layers_per_block"))
    rules = [Rule(f"{name}.{{leaf}}", f"{name}.{{leaf}}", name=name) for name in ("quant_conv", "post_quant_conv")]
    for side in ("encoder", "decoder"):
        rules += [Rule(f"{side}.conv_in.{{leaf}}", f"{side}.conv_in.{{leaf}}", name=f"{side} conv_in"),
                  Rule(f"{side}.conv_out.{{leaf}}", f"{side}.conv_out.{{leaf}}", name=f"{side} conv_out"),
                  Rule(f"{side}.norm_out.{{leaf}}", f"{side}.conv_norm_out.{{leaf}}", name=f"{side} norm_out"),
                  *vae_attention(f"{side}.mid.attn_1", f"{side}.mid_block.attentions.0", f"{side} mid")]
        for k in range(2):
            rules += vae_resnet(f"{side}.mid.block_{k + 1}", f"{side}.mid_block.resnets.{k}", f"{side} mid")
    for i in range(levels):
        for j in range(layers):
            rules += vae_resnet(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", "encoder")
        if i < levels - 1:
            rules.append(Rule(f"encoder.down.{i}.downsample.conv.{{leaf}}",
                              f"encoder.down_blocks.{i}.downsamplers.0.conv.{{leaf}}", name="encoder downsample"))
    for i in range(levels):
        level = levels - 1 - i  # LDM counts decoder levels from the output end
        for j in range(layers + 1):
            rules += vae_resnet(f"decoder.up.{level}.block.{j}", f"decoder.up_blocks.{i}.resnets.{j}", "decoder")
        if i < levels - 1:
            rules.append(Rule(f"decoder.up.{level}.upsample.conv.{{leaf}}",
                              f"decoder.up_blocks.{i}.upsamplers.0.conv.{{leaf}}", name="decoder upsample"))
    return rules


def sd_vae_map(config: Mapping | None = None) -> KeyMap:
    """LDM ``first_stage_model.*`` (prefix stripped) <-> diffusers ``AutoencoderKL``."""
    return KeyMap(sd_vae_rules(config or SD15_VAE_CONFIG), name="original-ldm-sd-vae")


# --------------------------------------------------------------------------- text encoder


def clip_text_map(module_keys: Iterable[str] = ("text_model.",)) -> KeyMap:
    """``cond_stage_model.transformer.*`` (prefix stripped: ``text_model.*``) <-> transformers ``CLIPTextModel``.

    The names are the same, except that transformers 5 dropped the module's ``text_model`` wrapper
    (``embeddings.*``, ``encoder.*``, ``final_layer_norm.*``): pass the module's keys to get the map for the
    installed version."""
    prefixed = any(k.startswith("text_model.") for k in module_keys)
    return KeyMap([Rule("text_model.{rest}", "text_model.{rest}" if prefixed else "{rest}", name="text_model")],
                  name="original-ldm-sd-text-encoder")


# --------------------------------------------------------------------------- detection


def detect(keys: Iterable[str]) -> bool:
    """True for an LDM Stable Diffusion file (prefixed keys), or one holding a component under its LDM prefix
    (as :func:`vidcore.loading.save_original` writes). Callers rule out sgm SVD and ModelScope files first."""
    return any(k.startswith((UNET_PREFIX + "input_blocks.", VAE_PREFIX + "encoder.", VAE_PREFIX + "decoder.",
                             TEXT_ENCODER_PREFIX + "text_model.")) for k in keys)


def _skipped(key: str, skipped: Mapping[str, str]) -> bool:
    return key in skipped or key.startswith("model_ema.")


def split_components(state: Mapping[str, torch.Tensor], prefixes: Mapping[str, str],
                     skipped: Mapping[str, str]) -> dict[str, dict[str, torch.Tensor]]:
    """``state``'s tensors by component name (prefix stripped); ``skipped`` keys, EMA copies and keys under
    no prefix are dropped. Shared by the SD and SDXL layouts, which differ only in prefixes and skip lists."""
    out: dict[str, dict[str, torch.Tensor]] = {name: {} for name in prefixes}
    for k, v in state.items():
        if _skipped(k, skipped):
            continue
        for name, prefix in prefixes.items():
            if k.startswith(prefix):
                out[name][k[len(prefix):]] = v
                break
    return out


def keys_outside(keys: Iterable[str], prefixes: Mapping[str, str], skipped: Mapping[str, str]) -> list[str]:
    """Keys under none of ``prefixes`` and not skipped (sorted): what a conversion would silently lose."""
    return sorted(k for k in keys if not _skipped(k, skipped) and not k.startswith(tuple(prefixes.values())))


def split(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """An LDM file's tensors by component: ``unet``, ``vae``, ``text_encoder`` (prefixes stripped; skipped
    and unrecognised keys dropped)."""
    return split_components(state, COMPONENT_PREFIXES, SKIPPED)


def unrecognised(keys: Iterable[str]) -> list[str]:
    """Keys that belong neither to a converted component nor to :data:`SKIPPED` (sorted)."""
    return keys_outside(keys, COMPONENT_PREFIXES, SKIPPED)
