"""Tiny random Stable Diffusion 1.5-layout folders for the Text2Video-Zero and video InstructPix2Pix tests
(diffusers imported inside functions).

``build_tiny_sd(folder)`` saves a 4-channel text-to-image model with the hub SD1.5 PNDM scheduler config;
``build_tiny_pix2pix(folder)`` an 8-channel InstructPix2Pix model with timbrooks/instruct-pix2pix's Euler
ancestral scheduler config. Each returns the diffusers pipeline holding the same modules.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import PIL.Image
import tiny
from tiny_animatediff import SD15_SCHEDULER_CONFIG

# scheduler_config.json of timbrooks/instruct-pix2pix
PIX2PIX_SCHEDULER_CONFIG = {
    "_class_name": "EulerAncestralDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "trained_betas": None,
}


def _components(in_channels: int, seed: int, unet_overrides: dict | None, vae_overrides: dict | None = None):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet_config = tiny.tiny_unet2d_config(in_channels=in_channels, **(unet_overrides or {}))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = tiny.make_tiny_tokenizer(tmp)
    text_encoder = tiny.make_tiny_text_encoder(hidden=unet_config["cross_attention_dim"], seed=seed + 1,
                                               tokenizer=tokenizer)
    unet = tiny.randomize_(UNet2DConditionModel(**unet_config), seed + 2).eval()
    vae = tiny.randomize_(AutoencoderKL(**tiny.tiny_vae_config(**(vae_overrides or {}))), seed + 3).eval()
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, safety_checker=None,
                feature_extractor=None, requires_safety_checker=False)


def _save(pipe, folder: Path):
    tiny.make_tiny_tokenizer(folder / "tokenizer")
    pipe.save_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sd(folder, seed: int = 0, unet_overrides: dict | None = None, vae_overrides: dict | None = None):
    """SD1.5-layout folder (PNDM scheduler config) -> diffusers ``StableDiffusionPipeline`` (float32)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG),
                                   **_components(4, seed, unet_overrides, vae_overrides))
    return _save(pipe, Path(folder))


def build_tiny_pix2pix(folder, seed: int = 0, unet_overrides: dict | None = None,
                       vae_overrides: dict | None = None):
    """InstructPix2Pix-layout folder (8-channel UNet, Euler ancestral config) -> diffusers
    ``StableDiffusionInstructPix2PixPipeline`` (float32)."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline(
        scheduler=EulerAncestralDiscreteScheduler.from_config(PIX2PIX_SCHEDULER_CONFIG),
        **_components(8, seed, unet_overrides, vae_overrides))
    return _save(pipe, Path(folder))


def zero_pipeline(sd_pipe):
    """diffusers' deprecated ``TextToVideoZeroPipeline`` on ``sd_pipe``'s modules with DDIM from its config
    (the paper's sampler; the tests give vidcore the same with ``scheduler=``)."""
    from diffusers import DDIMScheduler, TextToVideoZeroPipeline

    pipe = TextToVideoZeroPipeline(vae=sd_pipe.vae, text_encoder=sd_pipe.text_encoder, tokenizer=sd_pipe.tokenizer,
                                   unet=sd_pipe.unet, scheduler=DDIMScheduler.from_config(sd_pipe.scheduler.config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_frames(n: int, height: int, width: int, seed: int = 0) -> list[PIL.Image.Image]:
    """``n`` smooth-ish random RGB frames (a moving gradient plus noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for k in range(n):
        base = np.stack([(xx + 3 * k) / width, yy / height, ((xx + yy + k) % 7) / 7], axis=-1)
        arr = np.clip(base * 200 + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        frames.append(PIL.Image.fromarray(arr))
    return frames


def pix2pix_reference(pipe, frames, prompt, batch_size: int | None = 3, **kwargs):
    """The Text2Video-Zero recipe for video InstructPix2Pix in diffusers: cross-frame attention over the
    three-way guidance batch (``batch_size=1`` without guidance, None: no cross-frame attention), the frames as
    a batch of images with the prompt repeated. Returns np f h w 3."""
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
        CrossFrameAttnProcessor,
    )

    if isinstance(kwargs.get("negative_prompt"), str):
        kwargs["negative_prompt"] = [kwargs["negative_prompt"]] * len(frames)
    original = pipe.unet.attn_processors
    if batch_size is not None:
        pipe.unet.set_attn_processor(CrossFrameAttnProcessor(batch_size=batch_size))
    try:
        return pipe(prompt=[prompt] * len(frames), image=frames, output_type="np", **kwargs).images
    finally:
        pipe.unet.set_attn_processor(original)

