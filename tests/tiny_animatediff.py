"""Tiny random AnimateDiff setups for the pipeline and CLI tests (diffusers imported inside functions).

``build_tiny_animatediff(root)`` writes what a user downloads: a Stable Diffusion 1.5-layout pipeline
folder (``root/sd``: UNet2DConditionModel, AutoencoderKL, CLIP text encoder + tokenizer and the hub's
PNDM scheduler config) and a MotionAdapter folder (``root/adapter``); it returns the diffusers
``AnimateDiffPipeline`` built from the same components with the DDIM scheduler AnimateDiff's docs
recommend.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import NamedTuple

import torch

import tiny

# scheduler_config.json of runwayml/stable-diffusion-v1-5 (PNDM with skip_prk_steps)
SD15_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
# what AnimateDiff's documentation passes to DDIMScheduler.from_pretrained(base, subfolder="scheduler", ...)
ANIMATEDIFF_DDIM = dict(clip_sample=False, timestep_spacing="linspace", beta_schedule="linear", steps_offset=1)


class TinyAnimateDiff(NamedTuple):
    pipe: object  # diffusers AnimateDiffPipeline (float32, DDIM as recommended)
    sd: Path  # SD1.5-layout pipeline folder
    adapter: Path  # MotionAdapter folder


def recommended_ddim(sd_folder):
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_pretrained(sd_folder, subfolder="scheduler", **ANIMATEDIFF_DDIM)


def build_tiny_animatediff(root, seed: int = 0, adapter_overrides: dict | None = None,
                           unet_overrides: dict | None = None, variant_fp16: bool = False,
                           vae_overrides: dict | None = None) -> TinyAnimateDiff:
    from diffusers import (AnimateDiffPipeline, AutoencoderKL, MotionAdapter, PNDMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)

    root = Path(root)
    unet_config = tiny.tiny_unet2d_config(**(unet_overrides or {}))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = tiny.make_tiny_tokenizer(tmp)
    text_encoder = tiny.make_tiny_text_encoder(hidden=unet_config["cross_attention_dim"], seed=seed + 1,
                                               tokenizer=tokenizer)
    unet = tiny.randomize_(UNet2DConditionModel(**unet_config), seed + 2).eval()
    vae = tiny.randomize_(AutoencoderKL(**tiny.tiny_vae_config(**(vae_overrides or {}))), seed + 3).eval()
    adapter = tiny.randomize_(MotionAdapter(**tiny.tiny_motion_adapter_config(**(adapter_overrides or {}))),
                              seed + 4).eval()
    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    sd = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                 scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                 requires_safety_checker=False)
    tiny.make_tiny_tokenizer(root / "sd" / "tokenizer")
    if variant_fp16:
        sd.to(torch.float16)
        adapter.to(torch.float16)
        sd.save_pretrained(root / "sd", variant="fp16")
        adapter.save_pretrained(root / "adapter", variant="fp16")
        sd.to(torch.float32)
        adapter.to(torch.float32)
    sd.save_pretrained(root / "sd")
    adapter.save_pretrained(root / "adapter")
    pipe = AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                               motion_adapter=adapter, scheduler=recommended_ddim(root / "sd"))
    pipe.set_progress_bar_config(disable=True)
    return TinyAnimateDiff(pipe, root / "sd", root / "adapter")


def motion_lora(ref_unet, seed: int = 1, rank: int = 2) -> dict:
    """A random motion LoRA in the hub's layout (unet.{...}.attn1.processor.to_q_lora.down.weight) for every
    motion-module attention projection of diffusers' UNetMotionModel ``ref_unet``."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in ref_unet.named_modules():
        if ".motion_modules." not in name or not isinstance(module, torch.nn.Linear):
            continue
        parent, proj = name.rsplit(".", 1)
        if proj == "0" and parent.endswith(".to_out"):
            parent, proj = parent.rsplit(".", 1)
        if proj not in ("to_q", "to_k", "to_v", "to_out") or not parent.rsplit(".", 1)[-1].startswith("attn"):
            continue
        base = f"unet.{parent}.processor.{proj}_lora"
        state[f"{base}.down.weight"] = torch.randn(rank, module.in_features, generator=g) / module.in_features ** 0.5
        state[f"{base}.up.weight"] = torch.randn(module.out_features, rank, generator=g) * 0.5
    assert state
    return state
