"""Write a randomly initialised ModelScope-layout pipeline folder, entirely offline.

The folder has the exact diffusers layout of ``damo-vilab/text-to-video-ms-1.7b`` (model_index.json,
scheduler, tokenizer, text_encoder, unet, vae), so every loader, the CLI and diffusers itself can read
it. Its weights are random: videos come out as structured noise. It exists to try the tool chain
with no network; real videos need a real checkpoint (``--model cerspense/zeroscope_v2_576w``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..loading import save_diffusers
from ..models.unet3d import UNet3D, UNet3DConfig
from ..models.vae import AutoencoderKL, AutoencoderKLConfig
from .clip_vocab import write_clip_vocab

SCHEDULER = {
    "_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
    "steps_offset": 1,
}

SIZES = {
    # name: (unet block_out_channels, head dim, text width, vae block_out_channels)
    "tiny": ((32, 64), 8, 32, (32, 64, 64, 64)),
    "small": ((64, 128, 256), 32, 64, (32, 64, 64, 64)),
}


def make_random_pipeline(folder: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Create ``folder`` (must not exist) holding a random text-to-video pipeline; returns its path."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} already exists")
    unet_ch, head_dim, text_dim, vae_ch = SIZES[size]
    torch.manual_seed(seed)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent if folder.parent.exists() else None, prefix=f".{folder.name}."))
    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(write_clip_vocab(tmp / "tokenizer")), model_max_length=77)
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        text_cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=text_dim, intermediate_size=4 * text_dim,
                                  num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                  projection_dim=text_dim, bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        CLIPTextModel(text_cfg).save_pretrained(str(tmp / "text_encoder"))
        n = len(unet_ch)
        unet = UNet3D(UNet3DConfig(
            block_out_channels=unet_ch, attention_head_dim=head_dim, cross_attention_dim=text_dim, norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock3D",) * (n - 1) + ("DownBlock3D",),
            up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (n - 1), sample_size=8))
        save_diffusers(unet, tmp / "unet")
        vae = AutoencoderKL(AutoencoderKLConfig(block_out_channels=vae_ch, layers_per_block=1, norm_num_groups=8,
                                                down_block_types=("DownEncoderBlock2D",) * len(vae_ch),
                                                up_block_types=("UpDecoderBlock2D",) * len(vae_ch), sample_size=256))
        save_diffusers(vae, tmp / "vae")
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2))
        index = {
            "_class_name": "TextToVideoSDPipeline", "_diffusers_version": "0.33.1",
            "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet3DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
