"""Random IP-Adapter files in the original ``h94/IP-Adapter`` layout for the tests (diffusers-free).

``original_ip_adapter`` makes a state dict (plain projection or plus resampler) sized for a diffusers UNet's
cross-attentions (``cross_attention_widths``); ``write_ip_adapter_repo`` writes a ``models/`` folder as the hub
repo has it: a CLIP image encoder, a plain ``.safetensors``, a plus ``.bin`` (nested dicts) and one adapter too
wide for the UNet.
"""

from __future__ import annotations

from pathlib import Path

import torch

import tiny


def cross_attention_widths(unet) -> list[int]:
    """Width of each cross-attention in the order diffusers numbers an IP-Adapter file's layers (1, 3, 5, ...)."""
    ch = list(unet.config.block_out_channels)
    widths = []
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue
        part, block = name.split(".")[0], int(name.split(".")[1]) if not name.startswith("mid") else -1
        widths.append(ch[-1] if part == "mid_block" else (ch[::-1] if part == "up_blocks" else ch)[block])
    return widths


def original_ip_adapter(kind: str, widths: list[int], context_dim: int, embed_dim: int, seed: int = 0) -> dict:
    """A random IP-Adapter state dict in the original layout (``image_proj.*`` and ``ip_adapter.{2j+1}.*``)."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape, gain=1.0):
        return gain * torch.randn(shape, generator=g) / shape[-1] ** 0.5

    def norm(prefix, dim):
        return {f"{prefix}.weight": 1 + 0.1 * torch.randn(dim, generator=g), f"{prefix}.bias": 0.1 * torch.randn(dim, generator=g)}

    state = {}
    if kind == "plain":
        tokens = 4
        state.update({"image_proj.proj.weight": w(tokens * context_dim, embed_dim),
                      "image_proj.proj.bias": 0.1 * torch.randn(tokens * context_dim, generator=g),
                      **norm("image_proj.norm", context_dim)})
    else:  # the perceiver resampler: 4 blocks (diffusers' fixed depth), 64-wide heads
        hidden, queries, heads = 40, 6, 1
        state.update({"image_proj.latents": torch.randn(1, queries, hidden, generator=g) / hidden ** 0.5,
                      "image_proj.proj_in.weight": w(hidden, embed_dim),
                      "image_proj.proj_in.bias": 0.1 * torch.randn(hidden, generator=g),
                      "image_proj.proj_out.weight": w(context_dim, hidden),
                      "image_proj.proj_out.bias": 0.1 * torch.randn(context_dim, generator=g),
                      **norm("image_proj.norm_out", context_dim)})
        for i in range(4):
            p = f"image_proj.layers.{i}"
            state.update({**norm(f"{p}.0.norm1", hidden), **norm(f"{p}.0.norm2", hidden),
                          f"{p}.0.to_q.weight": w(64 * heads, hidden), f"{p}.0.to_kv.weight": w(128 * heads, hidden),
                          f"{p}.0.to_out.weight": w(hidden, 64 * heads), **norm(f"{p}.1.0", hidden),
                          f"{p}.1.1.weight": w(4 * hidden, hidden), f"{p}.1.3.weight": w(hidden, 4 * hidden)})
    for j, width in enumerate(widths):
        state[f"ip_adapter.{2 * j + 1}.to_k_ip.weight"] = w(width, context_dim, gain=3.0)
        state[f"ip_adapter.{2 * j + 1}.to_v_ip.weight"] = w(width, context_dim, gain=3.0)
    return state


def nested(state: dict) -> dict:
    """The ``.bin`` layout: two nested dicts."""
    out = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state.items():
        group, rest = key.split(".", 1)
        out[group][rest] = value
    return out


def write_ip_adapter_repo(root, unet, embed_dim: int = 32, prefix: str = "sd15") -> Path:
    """``root/models/``: ``image_encoder/``, ``ip-adapter_{prefix}.safetensors`` (plain), ``ip-adapter-plus_{prefix}.bin``
    (plus) and ``ip-adapter_wide.safetensors`` (8 wider than the UNet's context) for the diffusers ``unet``."""
    from safetensors.torch import save_file

    models = Path(root) / "models"
    widths, ctx = cross_attention_widths(unet), unet.config.cross_attention_dim
    tiny.make_tiny_image_encoder(projection_dim=embed_dim).save_pretrained(models / "image_encoder")
    save_file(original_ip_adapter("plain", widths, ctx, embed_dim, seed=5), models / f"ip-adapter_{prefix}.safetensors")
    torch.save(nested(original_ip_adapter("plus", widths, ctx, embed_dim, seed=6)), models / f"ip-adapter-plus_{prefix}.bin")
    save_file(original_ip_adapter("plain", widths, ctx + 8, embed_dim, seed=7), models / "ip-adapter_wide.safetensors")
    return Path(root)
