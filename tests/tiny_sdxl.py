"""A tiny random AnimateDiff SDXL setup for the pipeline and CLI tests (diffusers imported inside functions).

``build_tiny_animatediff_sdxl(root)`` writes what a user downloads: an SDXL-layout pipeline folder
(``root/sdxl``: UNet2DConditionModel with text_time conditioning, AutoencoderKL, CLIPTextModel +
CLIPTextModelWithProjection and their tokenizers, the SDXL base repo's Euler scheduler config) and an SDXL-style
MotionAdapter folder (``root/adapter``). It returns diffusers' ``AnimateDiffSDXLPipeline`` built from the same
components, with the UNet's ``add_embedding`` copied into the motion UNet (diffusers' ``from_unet2d`` leaves
it random).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import NamedTuple

import tiny

# stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json
SDXL_SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "interpolation_type": "linear", "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False,
}


class TinySDXL(NamedTuple):
    pipe: object  # diffusers AnimateDiffSDXLPipeline (float32, Euler as stored)
    sdxl: Path  # SDXL-layout pipeline folder
    adapter: Path  # MotionAdapter folder


def make_text_encoder_2(tokenizer, hidden: int = 24, projection: int = 20, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
                            projection_dim=projection, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return tiny.randomize_(CLIPTextModelWithProjection(config), seed).eval()


def build_tiny_animatediff_sdxl(root, seed: int = 0) -> TinySDXL:
    from diffusers import (AnimateDiffSDXLPipeline, AutoencoderKL, EulerDiscreteScheduler, MotionAdapter,
                           StableDiffusionXLPipeline, UNet2DConditionModel)

    root = Path(root)
    unet_config = tiny.tiny_sdxl_unet_config()  # context 40 = 16 + 24, pooled 20
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = tiny.make_tiny_tokenizer(tmp)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_2 = tiny.make_tiny_tokenizer(tmp, pad_token="!")  # OpenCLIP's padding, as SDXL's tokenizer_2
    text_encoder = tiny.make_tiny_text_encoder(hidden=16, seed=seed + 1, tokenizer=tokenizer)
    text_encoder_2 = make_text_encoder_2(tokenizer_2, seed=seed + 2)
    unet = tiny.randomize_(UNet2DConditionModel(**unet_config), seed + 3).eval()
    vae = tiny.randomize_(AutoencoderKL(**tiny.tiny_vae_config(scaling_factor=0.13025)), seed + 4).eval()
    adapter = tiny.randomize_(MotionAdapter(**tiny.tiny_sdxl_motion_adapter_config()), seed + 5).eval()
    scheduler = EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG)
    sdxl = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                     add_watermarker=False)
    for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        tiny.make_tiny_tokenizer(root / "sdxl" / name, pad_token=pad)
    sdxl.save_pretrained(root / "sdxl")
    adapter.save_pretrained(root / "adapter")
    pipe = AnimateDiffSDXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                   tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, motion_adapter=adapter,
                                   scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG))
    pipe.unet.add_embedding.load_state_dict(unet.add_embedding.state_dict())
    pipe.set_progress_bar_config(disable=True)
    return TinySDXL(pipe, root / "sdxl", root / "adapter")
