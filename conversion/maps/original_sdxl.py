"""Original Stable Diffusion XL single files (Stability's ``sd_xl_base_1.0.safetensors`` and the civitai
fine-tunes shipped the same way) <-> diffusers / transformers names.

Such a file holds four parts (prefixes stripped before the maps run):

* ``model.diffusion_model.*``: the LDM ``UNetModel`` numbering of :mod:`.original_sd` (three levels for
  SDXL, the first without attention) plus SDXL's micro-conditioning MLP ``label_emb.0.{0,2}`` <->
  ``add_embedding.linear_{1,2}``;
* ``first_stage_model.*``: the LDM VAE (same names as SD1.x);
* ``conditioner.embedders.0.transformer.*``: CLIP ViT-L/14's text tower, already in transformers'
  ``CLIPTextModel`` names (``text_model.*``);
* ``conditioner.embedders.1.model.*``: OpenCLIP ViT-bigG/14's text tower in open_clip's names, <->
  transformers' ``CLIPTextModelWithProjection``::

      token_embedding.weight / positional_embedding   text_model.embeddings.{token,position}_embedding.weight
      transformer.resblocks.{i}.ln_1 / ln_2           text_model.encoder.layers.{i}.layer_norm1 / layer_norm2
      transformer.resblocks.{i}.attn.in_proj_*        ...self_attn.{q,k,v}_proj.*   (split in three equal parts)
      transformer.resblocks.{i}.attn.out_proj         ...self_attn.out_proj
      transformer.resblocks.{i}.mlp.c_fc / c_proj     ...mlp.fc1 / fc2
      ln_final                                        text_model.final_layer_norm
      text_projection (width, proj), used as x @ P    text_projection.weight (proj, width): transposed

Skipped on purpose: OpenCLIP's ``logit_scale`` (a contrastive-training temperature), the ViT-L tower's
``position_ids`` buffer, LDM's noise-schedule buffers and the EMA copy (as for SD1.x). The renames follow
diffusers' ``convert_ldm_unet_checkpoint``, ``convert_ldm_clip_checkpoint`` and
``convert_open_clip_checkpoint`` (single_file_utils); the tests check the reverse maps against them.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

from ..engine import KeyMap, Rule, SplitRule
from . import original_sd
from .original_svd import ldm_unet_rules, transpose_2d

UNET_PREFIX = original_sd.UNET_PREFIX
VAE_PREFIX = original_sd.VAE_PREFIX
TEXT_ENCODER_PREFIX = "conditioner.embedders.0.transformer."
TEXT_ENCODER_2_PREFIX = "conditioner.embedders.1.model."
COMPONENT_PREFIXES = {"unet": UNET_PREFIX, "vae": VAE_PREFIX, "text_encoder": TEXT_ENCODER_PREFIX,
                      "text_encoder_2": TEXT_ENCODER_2_PREFIX}
SKIPPED = {
    **{k: v for k, v in original_sd.SKIPPED.items() if k != original_sd.POSITION_IDS},
    TEXT_ENCODER_PREFIX + "text_model.embeddings.position_ids": "transformers' position-index buffer (arange(77))",
    TEXT_ENCODER_2_PREFIX + "logit_scale": "OpenCLIP's contrastive temperature, unused for text conditioning",
}


def sdxl_unet_map(config: Mapping) -> KeyMap:
    """LDM ``model.diffusion_model.*`` (prefix stripped) <-> diffusers ``UNet2DConditionModel`` for an SDXL
    ``config`` (its block layout; the ``text_time`` embedding is ``label_emb.0``)."""
    levels, L, down_attn, up_attn = original_sd._unet_layout(config)
    head = [Rule(f"label_emb.0.{a}.{{leaf}}", f"add_embedding.linear_{b}.{{leaf}}", name="label_emb -> add_embedding")
            for a, b in ((0, 1), (2, 2))]
    return KeyMap(ldm_unet_rules(levels, L, down_attn, up_attn, original_sd._res_block, original_sd._transformer, head),
                  name="original-ldm-sdxl-unet")


def open_clip_text_map() -> KeyMap:
    """``conditioner.embedders.1.model.*`` (prefix stripped) <-> transformers ``CLIPTextModelWithProjection``
    (the layer count comes from the keys)."""
    block, layer = "transformer.resblocks.{i:int}", "text_model.encoder.layers.{i}"
    return KeyMap([
        Rule("token_embedding.weight", "text_model.embeddings.token_embedding.weight", name="token_embedding"),
        Rule("positional_embedding", "text_model.embeddings.position_embedding.weight", name="positional_embedding"),
        Rule(block + ".ln_1.{leaf}", layer + ".layer_norm1.{leaf}", name="resblocks ln_1 -> layer_norm1"),
        SplitRule(block + ".attn.in_proj_weight", tuple(f"{layer}.self_attn.{p}_proj.weight" for p in "qkv"),
                  name="resblocks in_proj_weight -> q/k/v"),
        SplitRule(block + ".attn.in_proj_bias", tuple(f"{layer}.self_attn.{p}_proj.bias" for p in "qkv"),
                  name="resblocks in_proj_bias -> q/k/v"),
        Rule(block + ".attn.out_proj.{leaf}", layer + ".self_attn.out_proj.{leaf}", name="resblocks out_proj"),
        Rule(block + ".ln_2.{leaf}", layer + ".layer_norm2.{leaf}", name="resblocks ln_2 -> layer_norm2"),
        Rule(block + ".mlp.c_fc.{leaf}", layer + ".mlp.fc1.{leaf}", name="resblocks mlp.c_fc -> fc1"),
        Rule(block + ".mlp.c_proj.{leaf}", layer + ".mlp.fc2.{leaf}", name="resblocks mlp.c_proj -> fc2"),
        Rule("ln_final.{leaf}", "text_model.final_layer_norm.{leaf}", name="ln_final -> final_layer_norm"),
        Rule("text_projection", "text_projection.weight", forward=transpose_2d, reverse=transpose_2d,
             name="text_projection (transposed)"),
    ], name="original-sdxl-open-clip-text-encoder")


def detect(keys: Iterable[str]) -> bool:
    """True for an SDXL LDM file: SDXL's conditioner text towers or a UNet with ``label_emb`` next to LDM keys."""
    keys = list(keys)
    return any(k.startswith((TEXT_ENCODER_2_PREFIX + "transformer.", UNET_PREFIX + "label_emb.")) for k in keys)


def split(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """An SDXL file's tensors by component (prefixes stripped; skipped and unrecognised keys dropped)."""
    return original_sd.split_components(state, COMPONENT_PREFIXES, SKIPPED)


def unrecognised(keys: Iterable[str]) -> list[str]:
    """Keys that belong neither to a converted component nor to :data:`SKIPPED` (sorted)."""
    return original_sd.keys_outside(keys, COMPONENT_PREFIXES, SKIPPED)
