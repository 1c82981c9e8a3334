"""Tiny random SD1.5 + ControlNet setups for the controlled-video pipeline, CLI and benchmark (diffusers is
imported inside functions).

``build_tiny_controlled(root)`` writes an SD1.5-layout pipeline folder (``root/sd``, DDIM scheduler with
SD1.5's schedule) and a ControlNet folder (``root/controlnet``) and returns diffusers'
``StableDiffusionControlNetPipeline`` built from the same components. :func:`reference_frames` runs
Text2Video-Zero's ControlNet recipe on it (cross-frame attention processors, the prompt repeated per frame,
one noise latent repeated over frames).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import PIL.Image
import torch

import tiny

SD15_DDIM = dict(beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False,
                 num_train_timesteps=1000, set_alpha_to_one=False, steps_offset=1)


def tiny_controlnet_config(**overrides) -> dict:
    """``ControlNetModel`` kwargs matching ``tiny.tiny_unet2d_config`` (levels 32, 64; 4 heads; context 24); the
    conditioning embedding halves the size once, as the tiny VAE does."""
    config = dict(in_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), block_out_channels=(32, 64),
                  layers_per_block=2, norm_num_groups=8, cross_attention_dim=24, attention_head_dim=4,
                  conditioning_embedding_out_channels=(8, 16))
    config.update(overrides)
    return config


class TinyControlled(NamedTuple):
    pipe: object  # diffusers StableDiffusionControlNetPipeline (float32)
    sd: Path  # SD1.5-layout folder (with controlnet/)
    controlnet: Path  # ControlNet folder


def tiny_sparse_config(kind: str, **overrides) -> dict:
    """Tiny SparseControlNetModel kwargs matching tiny.tiny_unet2d_config (levels 32, 64; 4 heads; context 24)."""
    config = dict(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
                  layers_per_block=2, norm_num_groups=8, cross_attention_dim=24, attention_head_dim=4,
                  conditioning_embedding_out_channels=(8, 16), motion_max_seq_length=24, motion_num_attention_heads=2,
                  use_simplified_condition_embedding=kind == "rgb", conditioning_channels=4 if kind == "rgb" else 3)
    config.update(overrides)
    return config


def build_tiny_controlled(root, seed: int = 0, unet_overrides: dict | None = None,
                          controlnet_overrides: dict | None = None, vae_overrides: dict | None = None) -> TinyControlled:
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline, UNet2DConditionModel

    root = Path(root)
    unet_config = tiny.tiny_unet2d_config(**(unet_overrides or {}))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = tiny.make_tiny_tokenizer(tmp)
    pipe = StableDiffusionControlNetPipeline(
        vae=tiny.randomize_(AutoencoderKL(**tiny.tiny_vae_config(**(vae_overrides or {}))), seed + 3).eval(),
        text_encoder=tiny.make_tiny_text_encoder(hidden=unet_config["cross_attention_dim"], seed=seed + 1,
                                                 tokenizer=tokenizer),
        tokenizer=tokenizer,
        unet=tiny.randomize_(UNet2DConditionModel(**unet_config), seed + 2).eval(),
        controlnet=tiny.randomize_(ControlNetModel(**tiny_controlnet_config(**(controlnet_overrides or {}))),
                                   seed + 4).eval(),
        scheduler=DDIMScheduler(**SD15_DDIM), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    tiny.make_tiny_tokenizer(root / "sd" / "tokenizer")
    pipe.save_pretrained(root / "sd")
    pipe.controlnet.save_pretrained(root / "controlnet")
    return TinyControlled(pipe, root / "sd", root / "controlnet")


def random_control_frames(n: int, height: int, width: int, seed: int = 0) -> list[PIL.Image.Image]:
    """``n`` RGB images of blobby random shapes (a stand-in for pose renderings)."""
    g = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        arr = np.zeros((height, width, 3), dtype=np.uint8)
        for _ in range(3):
            y, x = g.integers(0, height), g.integers(0, width)
            arr[max(0, y - 3): y + 3, max(0, x - 3): x + 3] = g.integers(0, 256, size=3, dtype=np.uint8)
        frames.append(PIL.Image.fromarray(arr))
    return frames


def shared_noise(pipe, frames: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """What vidcore draws from ``generator`` first: one latent, repeated over frames."""
    from diffusers.utils.torch_utils import randn_tensor

    s = pipe.vae_scale_factor
    one = randn_tensor((1, pipe.unet.config.in_channels, height // s, width // s), generator=generator)
    return one.repeat(frames, 1, 1, 1)


def reference_frames(pipe, frames, prompt: str, negative_prompt: str | None = None, seed: int = 0,
                     controlnet_batch_size: int | None = None, latents=None, height=None, width=None, **kwargs):
    """Text2Video-Zero's ControlNet recipe in diffusers: ``CrossFrameAttnProcessor(batch_size=2)`` (1 without
    guidance) on the UNet and the ControlNet, ``[prompt] * f``, shared noise; returns ``images`` (f H W 3).
    With an IP-Adapter loaded (``ip_adapter_image=``) the UNet's cross-attentions keep their IP-Adapter
    processors (cross-frame attention changes self-attention only)."""
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
        CrossFrameAttnProcessor)

    n = len(frames)
    guided = kwargs.get("guidance_scale", 7.5) > 1.0
    groups = 2 if guided else 1
    unet_procs, cn_procs = pipe.unet.attn_processors, pipe.controlnet.attn_processors
    if "ip_adapter_image" in kwargs:
        pipe.unet.set_attn_processor({name: CrossFrameAttnProcessor(batch_size=groups)
                                      if name.endswith("attn1.processor") else proc for name, proc in unet_procs.items()})
    else:
        pipe.unet.set_attn_processor(CrossFrameAttnProcessor(batch_size=groups))
    pipe.controlnet.set_attn_processor(CrossFrameAttnProcessor(batch_size=controlnet_batch_size or groups))
    try:
        h = height or frames[0].size[1]
        w = width or frames[0].size[0]
        generator = torch.Generator().manual_seed(seed)
        if latents is None:  # drawn from the generator the pipeline then uses (for DDIM's eta noise)
            latents = shared_noise(pipe, n, h, w, generator)
        out = pipe(prompt=[prompt] * n, negative_prompt=None if negative_prompt is None else [negative_prompt] * n,
                   image=frames, latents=latents, height=height, width=width,
                   generator=generator, output_type=kwargs.pop("output_type", "np"),
                   **kwargs)
    finally:
        pipe.unet.set_attn_processor(unet_procs)
        pipe.controlnet.set_attn_processor(cn_procs)
    return out.images
