"""The demo model's parts that do not need shipped weights: the synthetic data matches its prompts,
the evaluation's scoring is right on ground truth, and training runs and lowers the loss (smoke test)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import vidcore

from vidcore.demo.data import (COLORS, DIRECTIONS, SHAPES, all_combinations, all_prompts, make_clip, make_dataset,
                               parse_prompt)
from vidcore.demo.evaluate import centroids, score_color, score_direction, score_videos, smoothness, summarize
from vidcore.demo.train import DemoConfig, train


def as_np(video: torch.Tensor) -> np.ndarray:
    """f 3 h w in [-1, 1] -> f h w 3 in [0, 1] (what the pipeline's output_type="np" gives)."""
    return ((video + 1) / 2).permute(0, 2, 3, 1).numpy()


def test_prompts():
    prompts = all_prompts()
    assert len(prompts) == len(set(prompts)) == 48 == len(COLORS) * len(SHAPES) * len(DIRECTIONS)
    assert "a red circle moving right" in prompts
    assert parse_prompt("a yellow triangle moving up") == ("yellow", "triangle", "up")
    with pytest.raises(ValueError, match="not a demo prompt"):
        parse_prompt("a purple circle moving right")


def test_clips_match_prompts():
    for i, (color, shape, direction) in enumerate(all_combinations()):
        video, prompt = make_clip(1000 + i, color, shape, direction)
        assert prompt == f"a {color} {shape} moving {direction}"
        assert video.shape == (8, 3, 32, 32) and video.dtype == torch.float32
        assert video.min() >= -1 and video.max() <= 1
        frames = as_np(video)
        # the shape is in every frame, never touches the border, and has the prompt's color
        fg = frames.max(axis=-1) > 0.05
        assert fg.any(axis=(1, 2)).all()
        assert not fg[:, 0].any() and not fg[:, -1].any() and not fg[:, :, 0].any() and not fg[:, :, -1].any()
        inside = frames[frames.max(axis=-1) > 0.99 * frames.max()]
        np.testing.assert_allclose(inside.mean(axis=0), COLORS[color], atol=0.02)
        # it moves the prompt's way by at least 1.4 px every frame, at a constant speed
        c = centroids(frames)
        dx, dy = DIRECTIONS[direction]
        steps = np.diff(c[:, 0] * dx + c[:, 1] * dy)
        across = np.diff(c[:, 0] * abs(dy) + c[:, 1] * abs(dx))
        assert (steps > 1.4).all() and np.abs(across).max() < 0.05 and steps.std() < 0.15, (prompt, steps)


def test_clips_are_deterministic_and_varied():
    a, pa = make_clip(7)
    b, pb = make_clip(7)
    c, _ = make_clip(8, *parse_prompt(pa))
    assert pa == pb and torch.equal(a, b)
    assert not torch.equal(a, c)
    videos, prompts = make_dataset(50, seed=1)
    assert videos.shape == (50, 8, 3, 32, 32) and prompts[:48] == all_prompts() and prompts[48] == prompts[0]


# -- scoring ----------------------------------------------------------------------------------------

def test_scoring_on_ground_truth():
    combos = all_combinations()
    videos = np.stack([as_np(make_clip(i, *c)[0]) for i, c in enumerate(combos)])
    for video, (color, _, direction) in zip(videos, combos):
        assert score_color(video) == color
        assert score_direction(video) == direction
        monotone, spread = smoothness(video, direction)
        assert monotone and spread < 0.1
    summary = summarize(score_videos(videos, combos))
    assert summary["color_accuracy"] == summary["direction_accuracy"] == summary["monotone_fraction"] == 1.0


def test_scoring_detects_wrong_answers():
    video = as_np(make_clip(3, "red", "square", "right")[0])
    assert score_direction(video[::-1]) == "left"
    assert score_direction(video.transpose(0, 2, 1, 3)) == "down"  # swap x and y
    assert score_color(video[..., [1, 0, 2]]) == "green"
    assert score_color(np.zeros_like(video)) is None and score_direction(np.zeros_like(video)) is None
    assert smoothness(video[[0, 2, 1, 3, 4, 5, 6, 7]], "right")[0] is False


def test_fast_clips_cross_the_frame_and_trails_point_back():
    for i, (color, shape, direction) in enumerate(all_combinations()[:12]):
        plain, _ = make_clip(i, color, shape, direction, speed=(3.0, 3.5))
        trailed, _ = make_clip(i, color, shape, direction, speed=(3.0, 3.5), trail=3)
        a, b = as_np(plain), as_np(trailed)
        dx, dy = DIRECTIONS[direction]
        along = centroids(a) @ np.array([dx, dy])
        assert along[-1] - along[0] > 18  # (32 - 2 r - 2) px: start and end at opposite edges
        # the trail keeps the shape itself, adds only fainter pixels, and lies behind it
        assert np.all(b >= a - 1e-6) and (b > a + 1e-3).any()
        ghost = (b - a).max(axis=-1)
        assert ghost.max() <= 0.5 * np.max(COLORS[color]) + 1e-6
        assert (centroids(b) @ np.array([dx, dy]) < along).all()
        assert score_color(b) == color and score_direction(b) == direction


def test_sample_timesteps():
    from vidcore.demo.train import sample_timesteps

    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(4000, 1000, 0.0, g)
    assert t.min() >= 0 and t.max() <= 999 and abs(t.float().mean().item() - 499.5) < 15
    t = sample_timesteps(4000, 1000, 1.0, g)
    assert t.min() >= 700 and t.max() <= 999
    t = sample_timesteps(4000, 1000, 0.5, g)
    assert abs((t >= 700).float().mean().item() - (0.5 + 0.5 * 0.3)) < 0.03


# -- the shipped model ------------------------------------------------------------------------------

def test_training_smoke(tmp_path):
    cfg = replace(DemoConfig(), size=16, num_frames=4, num_clips=48, vae_channels=(8, 8), vae_steps=30, vae_batch=16,
                  text_width=16, unet_channels=(8, 16), unet_steps=30, unet_batch=4, warmup=5, log_every=5,
                  snapshot_every=10, text_pretrain_steps=5)
    seen = []

    def progress(step, text_encoder, unet_ema, unet, tokenizer, vae):
        seen.append((step, type(unet_ema).__name__, type(vae).__name__, tokenizer.model_max_length))

    out = train(cfg, tmp_path / "tiny", quiet=True, callback=progress)
    assert seen == [(s, "UNet3D", "AutoencoderKL", 77) for s in (10, 20, 30)]
    log = json.loads((out / "train_log.json").read_text())
    for stage in ("vae_loss", "unet_loss"):
        losses = [p["loss"] for p in log[stage]]
        assert len(losses) == 6 and losses[-1] < losses[0], (stage, losses)
    pipe = vidcore.TextToVideoPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a red circle moving right", num_frames=4, num_inference_steps=2, output_type="np").frames
    assert frames.shape == (1, 4, 16, 16, 3)
    with pytest.raises(FileExistsError):
        train(cfg, out, quiet=True)
