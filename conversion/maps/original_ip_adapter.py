"""Original IP-Adapter files (tencent-ailab's layout, as on ``h94/IP-Adapter``: ``ip-adapter_sd15.safetensors``,
``ip-adapter-plus_sd15.bin``, ``ip-adapter_sdxl.safetensors`` ...) <-> vidcore's ``IPAdapter`` module.

A file holds two groups. In ``.safetensors`` they are key prefixes; a ``.bin`` pickles them as two nested
dicts (:func:`flatten_groups` turns those into the same prefixed keys)::

    image_proj.*              the image projection model
    ip_adapter.{n}.to_k_ip.weight / ip_adapter.{n}.to_v_ip.weight
                              the key/value projections of the image prompt for the n-th attention layer
                              (n = 1, 3, 5, ...: the cross-attentions in diffusers' processor order)

Image projections:

* plain (``ip-adapter_sd15``, ``ip-adapter_sdxl``): ``proj`` (linear, image embedding -> tokens x width) and
  ``norm`` (LayerNorm); vidcore uses the same names.
* plus (``ip-adapter-plus_sd15``, ``ip-adapter-plus_sdxl_vit-h``, ``-plus-face``): a perceiver resampler
  (``latents``, ``proj_in``, ``layers.{i}.0`` attention with a fused ``to_kv``, ``layers.{i}.1`` LayerNorm +
  GELU MLP, ``proj_out``, ``norm_out``); the rules below rename its layers and cut ``to_kv`` in two.

The ``ip_adapter`` group keeps its names (vidcore's module is keyed by the same ``n``).
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

from ..engine import KeyMap, Rule, SplitRule

GROUPS = ("image_proj", "ip_adapter")
_LAYER = "image_proj.layers.{i:int}"
_RESAMPLER = "image_proj.layers.{i}"

IP_ADAPTER_MAP = KeyMap([
    Rule(f"{_LAYER}.0.norm1.{{leaf}}", f"{_RESAMPLER}.ln0.{{leaf}}"),
    Rule(f"{_LAYER}.0.norm2.{{leaf}}", f"{_RESAMPLER}.ln1.{{leaf}}"),
    Rule(f"{_LAYER}.0.to_q.weight", f"{_RESAMPLER}.attn.to_q.weight"),
    SplitRule(f"{_LAYER}.0.to_kv.weight", (f"{_RESAMPLER}.attn.to_k.weight", f"{_RESAMPLER}.attn.to_v.weight")),
    Rule(f"{_LAYER}.0.to_out.weight", f"{_RESAMPLER}.attn.to_out.weight"),
    Rule(f"{_LAYER}.1.0.{{leaf}}", f"{_RESAMPLER}.ff_norm.{{leaf}}"),
    Rule(f"{_LAYER}.1.1.weight", f"{_RESAMPLER}.ff.proj_in.weight"),
    Rule(f"{_LAYER}.1.3.weight", f"{_RESAMPLER}.ff.proj_out.weight"),
    Rule("image_proj.{key}", "image_proj.{key}"),
    Rule("ip_adapter.{n:int}.to_k_ip.weight", "ip_adapter.{n}.to_k_ip.weight"),
    Rule("ip_adapter.{n:int}.to_v_ip.weight", "ip_adapter.{n}.to_v_ip.weight"),
])

_IP_KEY = re.compile(r"^ip_adapter\.(\d+)\.to_([kv])_ip\.weight$")
HEAD_DIM = 64  # the resampler's attention head width in every released file (diffusers assumes it too)


def flatten_groups(obj: Mapping) -> dict[str, torch.Tensor]:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` (a pickled file, or a state dict passed in) -> prefixed keys;
    an already flat dict is returned as it is."""
    if not any(isinstance(obj.get(g), Mapping) for g in GROUPS):
        return dict(obj)
    out = {}
    for group, inner in obj.items():
        if group not in GROUPS or not isinstance(inner, Mapping):
            raise ValueError(f"an IP-Adapter state dict has the groups {GROUPS}, found {group!r}")
        out.update({f"{group}.{k}": v for k, v in inner.items()})
    return out


def detect(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("image_proj.") for k in state) and any(k.startswith("ip_adapter.") for k in state)


def config_from_keys(state: Mapping[str, torch.Tensor]) -> dict:
    """The IPAdapterConfig fields an original state dict implies (its kind and every width come from shapes).

    Raises ValueError for the variants vidcore does not implement (FaceID, full-face, their LoRA keys)."""
    if not detect(state):
        raise ValueError("not an IP-Adapter state dict: it needs 'image_proj.*' and 'ip_adapter.*' keys "
                         "(an original IP-Adapter file such as h94/IP-Adapter models/ip-adapter_sd15.safetensors)")
    extra = sorted(k for k in state if k.startswith("ip_adapter.") and not _IP_KEY.match(k))
    if extra:
        raise ValueError(f"IP-Adapter keys {extra[:4]} are not image-prompt key/value projections (FaceID files with "
                         "LoRA weights are not supported)")
    layers: dict[int, list[int]] = {}
    for key, tensor in state.items():
        m = _IP_KEY.match(key)
        if m:
            layers.setdefault(int(m.group(1)), [tensor.shape[0], tensor.shape[1]])
    ids = tuple(sorted(layers))
    widths = tuple(layers[n][0] for n in ids)
    context = {layers[n][1] for n in ids}
    if len(context) != 1:
        raise ValueError(f"IP-Adapter key/value projections take inputs of different widths {sorted(context)}")
    proj = {k[len("image_proj."):]: v for k, v in state.items() if k.startswith("image_proj.")}
    common = {"layer_ids": ids, "layer_widths": widths, "cross_attention_dim": context.pop()}
    if "proj.weight" in proj and "norm.weight" in proj:
        width = proj["norm.weight"].shape[0]
        return {"kind": "plain", "image_embed_dim": proj["proj.weight"].shape[1],
                "num_tokens": proj["proj.weight"].shape[0] // width, "output_dim": width, **common}
    if "latents" in proj and "proj_in.weight" in proj:
        depth = len({k.split(".")[1] for k in proj if k.startswith("layers.")})
        return {"kind": "plus", "image_embed_dim": proj["proj_in.weight"].shape[1],
                "num_tokens": proj["latents"].shape[1], "output_dim": proj["proj_out.weight"].shape[0],
                "hidden_dim": proj["latents"].shape[2], "depth": depth,
                "heads": proj["layers.0.0.to_q.weight"].shape[0] // HEAD_DIM,
                "ff_inner": proj["layers.0.1.1.weight"].shape[0], **common}
    raise ValueError(f"IP-Adapter image projection with keys {sorted(proj)[:6]} is not supported: vidcore reads the "
                     "plain (proj, norm) and plus (perceiver resampler) projections; FaceID and full-face files "
                     "are not implemented")
