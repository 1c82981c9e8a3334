"""The demo's eight motions: diagonal clips move as named, the old directions' clips are unchanged, and the
angle scorer agrees with trigonometry on clips of known motion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vidcore.demo.data import COLORS, DIRECTIONS, SHAPES, make_clip, shape_mask
from vidcore.demo.evaluate import score_direction
from vidcore.demo.motions import (ANGLES, DIAGONALS, MOTIONS, angle_error, make_motion_clip, motion_accuracy,
                                  motion_angle, motion_combinations, score_motion)


def as_np(video: torch.Tensor) -> np.ndarray:
    return ((video + 1) / 2).permute(0, 2, 3, 1).numpy()


def disc_clip(angle_deg: float, speed: float = 2.0, size: int = 32, frames: int = 8) -> np.ndarray:
    """A white disc moving from the frame centre at ``angle_deg`` (compass: 0 right, 90 up), ``f h w 3``."""
    t = torch.arange(frames, dtype=torch.float32) - (frames - 1) / 2
    a = math.radians(angle_deg)
    cx = size / 2 + t * speed * math.cos(a)
    cy = size / 2 - t * speed * math.sin(a)  # image y points down
    alpha = shape_mask("circle", cx, cy, 4.0, size)
    return alpha[..., None].expand(-1, -1, -1, 3).numpy()


def test_motion_table():
    assert list(MOTIONS)[:4] == list(DIRECTIONS) and len(MOTIONS) == 8
    assert ANGLES == {"left": 180, "right": 0, "up": 90, "down": 270, "up right": 45, "up left": 135,
                      "down left": 225, "down right": 315}
    assert motion_combinations("up right")[0] == ("red", "circle", "up right") and len(motion_combinations("up")) == 12
    with pytest.raises(ValueError, match="direction must be one of"):
        motion_combinations("sideways")


def test_old_directions_are_data_make_clip():
    for i, direction in enumerate(DIRECTIONS):
        a, pa = make_motion_clip(40 + i, "blue", "square", direction, speed=(3.0, 3.5))
        b, pb = make_clip(40 + i, "blue", "square", direction, speed=(3.0, 3.5))
        assert pa == pb and torch.equal(a, b)


def test_diagonal_clips_move_at_45_degrees_inside_the_frame():
    for i, (color, shape) in enumerate((c, s) for c in COLORS for s in SHAPES):
        for direction, (ux, uy) in DIAGONALS.items():
            video, prompt = make_motion_clip(100 + i, color, shape, direction, speed=(3.0, 3.5))
            assert prompt == f"a {color} {shape} moving {direction}" and video.shape == (8, 3, 32, 32)
            frames = as_np(video)
            fg = frames.max(axis=-1) > 0.05
            assert fg.any(axis=(1, 2)).all()
            assert not fg[:, 0].any() and not fg[:, -1].any() and not fg[:, :, 0].any() and not fg[:, :, -1].any()
            angle = motion_angle(frames)
            assert angle_error(angle, direction) < 1.0, (prompt, angle)
            assert score_motion(frames) == direction
    a, _ = make_motion_clip(5, "red", "circle", "up right")
    b, _ = make_motion_clip(5, "red", "circle", "up right")
    c, _ = make_motion_clip(6, "red", "circle", "up right")
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="unknown attribute"):
        make_motion_clip(0, "red", "circle", "up up")


@pytest.mark.parametrize("angle", [0.0, 10.0, 22.0, 23.0, 44.0, 67.0, 100.0, 158.0, 203.0, 250.0, 292.0, 337.0, 350.0])
def test_angle_scoring_against_trigonometry(angle):
    video = disc_clip(angle)
    got = motion_angle(video)
    assert angle_error(got, "right") == pytest.approx(min(angle, 360 - angle), abs=0.5)
    want = min(MOTIONS, key=lambda name: min(abs(angle - ANGLES[name]) % 360, 360 - abs(angle - ANGLES[name]) % 360))
    assert score_motion(video) == want
    assert angle_error(got, want) < 22.5


def test_angle_scoring_tells_diagonal_from_axis():
    up, diag, steep = disc_clip(90.0), disc_clip(45.0), disc_clip(80.0)
    assert score_direction(up) == score_direction(diag) == "up"  # the dominant-axis scorer cannot tell them apart
    assert score_motion(up) == "up" and score_motion(diag) == "up right" and score_motion(steep) == "up"
    videos = np.stack([diag, up, disc_clip(30.0), disc_clip(60.0), disc_clip(225.0)])
    assert motion_accuracy(videos, ["up right"] * 5) == pytest.approx(3 / 5)  # 45, 30, 60 are within 22.5
    still = np.repeat(disc_clip(0.0, speed=0.0)[:1], 8, axis=0)
    assert motion_angle(still) is None and score_motion(still) is None
    assert motion_angle(np.zeros_like(up)) is None and motion_accuracy(np.zeros_like(up)[None], ["up"]) == 0.0
