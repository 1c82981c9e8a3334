"""Tiny training setups for the LoRA trainer tests: a small ModelScope-layout pipeline folder and folders of
captioned clips written with PyAV / Pillow (diffusers imported inside the functions that need it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tiny

# 2 UNet levels of 16/32 channels, 1 layer each; VAE 8/16 channels (x2): a 4-frame 16x16 step takes ~0.1 s
UNET = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=4, cross_attention_dim=16)
VAE = dict(block_out_channels=(8, 16), norm_num_groups=4)


def build_model(folder, scheduler_overrides: dict | None = None) -> Path:
    """A random tiny TextToVideoSDPipeline folder; ``scheduler_overrides`` are written into its scheduler config."""
    folder = Path(folder)
    tiny.build_tiny_t2v_pipeline(folder, unet_overrides=UNET, vae_overrides=VAE)
    if scheduler_overrides:
        path = folder / "scheduler" / "scheduler_config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | scheduler_overrides))
    return folder


def random_frames(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """Smooth-ish random frames (a moving gradient plus noise) as n h w 3 uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(n):
        base = (np.sin((x + 2 * i) / 3.0 + seed)[..., None] * 60 + 128 + y[..., None] * 2) % 256
        frames.append(np.clip(base + rng.integers(-20, 20, (height, width, 3)), 0, 255))
    return np.stack(frames).astype(np.uint8)


def write_clips(folder, kinds=("mp4", "gif", "frames"), frames: int = 6, captions: str = "mixed") -> Path:
    """One clip per kind: ``mp4`` (PyAV, 24x32), ``gif`` (Pillow, 20x20), ``frames`` (a folder of PNGs, 18x24),
    ``webm`` (PyAV VP9). Captions: "mixed" puts the first clip's in metadata.jsonl and the others in side-car
    .txt files; "none" writes none."""
    from PIL import Image

    from vidcore.io import export_to_gif, export_to_video

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k, kind in enumerate(kinds):
        if kind == "mp4":
            name = f"clip{k}.mp4"
            export_to_video(random_frames(frames, 24, 32, k), str(folder / name), fps=8)
        elif kind == "webm":
            name = f"clip{k}.webm"
            export_to_video(random_frames(frames, 24, 32, k), str(folder / name), fps=8, codec="libvpx-vp9")
        elif kind == "gif":
            name = f"clip{k}.gif"
            export_to_gif(list(random_frames(frames, 20, 20, k)), str(folder / name), fps=8)
        elif kind == "frames":
            name = f"clip{k}"
            (folder / name).mkdir()
            for i, frame in enumerate(random_frames(frames, 18, 24, k)):
                Image.fromarray(frame).save(folder / name / f"{i:03d}.png")
        else:
            raise ValueError(kind)
        names.append(name)
    if captions == "mixed":
        (folder / "metadata.jsonl").write_text(json.dumps({"file_name": names[0], "text": "a red ball"}) + "\n")
        for k, name in enumerate(names[1:], 1):
            (folder / f"{Path(name).stem}.txt").write_text(f"clip number {k} moving left\n")
    return folder
