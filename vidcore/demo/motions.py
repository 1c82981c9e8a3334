"""Eight motion directions for the demo: the four the base model knows plus the diagonals, and a scorer by angle.

The base model was trained on left / right / up / down only (``data.DIRECTIONS``); the motion LoRA
(``train_lora.py``) teaches a diagonal, named with words the frozen text encoder already knows:
``"a red circle moving up right"``. This module adds those clips and their scoring without touching
``data.py``'s functions, so the base model's training data stays bit for bit what it was.

* :func:`make_motion_clip` draws a clip for any of the eight :data:`MOTIONS`. For the four old directions it
  *is* ``data.make_clip`` (same seed, same clip); a diagonal clip moves the same distance along x and y (an
  exact 45 degree path), each axis built as ``make_clip`` builds its one moving axis, so with the training
  speed (3.0-3.5 px per frame per axis) it runs from one corner region to the opposite one.
* :func:`motion_angle` / :func:`score_motion`: the centroid velocity's angle (degrees, counter-clockwise from
  "right", y pointing up as in a compass) and the nearest of the eight directions, i.e. the direction whose
  angle is within 22.5 degrees. Unlike ``evaluate.score_direction`` (dominant axis only), this tells a shape
  going up from one going up and to the right.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .data import COLORS, DIRECTIONS, NUM_FRAMES, RADIUS, SHAPES, SIZE, SPEED, make_clip, prompt_for, shape_mask
from .evaluate import velocity

_R = 1 / math.sqrt(2)
DIAGONALS = {  # unit step (dx, dy) in image coordinates (y points down); names use the tokenizer's words
    "up right": (_R, -_R),
    "up left": (-_R, -_R),
    "down left": (-_R, _R),
    "down right": (_R, _R),
}
MOTIONS = {**DIRECTIONS, **DIAGONALS}
# compass angle of each motion in degrees: counter-clockwise from "right", with y pointing up
ANGLES = {name: math.degrees(math.atan2(-dy, dx)) % 360 for name, (dx, dy) in MOTIONS.items()}
SECTOR = 22.5  # half the angle between neighbouring directions: a video scores as the direction within this


def motion_combinations(direction: str) -> list[tuple[str, str, str]]:
    """The 12 (color, shape, direction) triples of one direction, in ``data.all_combinations`` order."""
    if direction not in MOTIONS:
        raise ValueError(f"direction must be one of {list(MOTIONS)}, got {direction!r}")
    return [(c, s, direction) for c in COLORS for s in SHAPES]


def make_motion_clip(seed: int, color: str, shape: str, direction: str, num_frames: int = NUM_FRAMES,
                     size: int = SIZE, speed: tuple[float, float] = SPEED) -> tuple[torch.Tensor, str]:
    """One clip ``(video f 3 h w in [-1, 1], prompt)`` moving in any of :data:`MOTIONS`.

    An old direction returns ``data.make_clip(seed, color, shape, direction, ...)`` unchanged. A diagonal draws,
    from ``seed``, the radius, one speed for both axes (so the path is exactly diagonal) and where the motion
    starts on each axis; like ``make_clip`` the whole shape (plus 1 px) stays inside the frame on every frame."""
    if direction in DIRECTIONS:
        return make_clip(seed, color, shape, direction, num_frames=num_frames, size=size, speed=speed)
    if color not in COLORS or shape not in SHAPES or direction not in DIAGONALS:
        raise ValueError(f"unknown attribute in ({color!r}, {shape!r}, {direction!r}); directions: {list(MOTIONS)}")
    g = torch.Generator().manual_seed(seed)

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand((), generator=g, dtype=torch.float64).item()

    scale = size / SIZE
    r = uniform(*RADIUS) * scale
    lo, hi = r + 1.0, size - r - 1.0
    travel = min(uniform(*speed) * scale * (num_frames - 1), hi - lo)  # per axis
    step = travel / max(num_frames - 1, 1)
    t = torch.arange(num_frames, dtype=torch.float32) * step
    ux, uy = DIAGONALS[direction]
    centre = []
    for u in (ux, uy):
        start = uniform(lo, hi - travel)  # low end of this axis' path
        centre.append(start + t if u > 0 else start + travel - t)
    alpha = shape_mask(shape, centre[0], centre[1], r, size)[:, None]  # f 1 h w
    video = alpha * torch.tensor(COLORS[color]).view(1, 3, 1, 1)  # black background
    return video * 2 - 1, prompt_for(color, shape, direction)



def motion_angle(video: np.ndarray) -> float | None:
    """Compass angle in degrees [0, 360) of the centroid velocity of ``f h w 3`` in [0, 1] (0 = right, 90 = up);
    None when the foreground is missing or does not move."""
    v = velocity(video)
    if v is None or not np.isfinite(v).all() or np.abs(v).max() == 0:
        return None
    return math.degrees(math.atan2(-v[1], v[0])) % 360


def angle_error(angle: float, direction: str) -> float:
    """Absolute difference in degrees (0..180) between a compass angle and ``direction``'s."""
    d = abs(angle - ANGLES[direction]) % 360
    return min(d, 360 - d)


def score_motion(video: np.ndarray) -> str | None:
    """The one of the eight :data:`MOTIONS` whose angle is nearest the video's motion (within 22.5 degrees of
    it; exactly half-way goes to the first in :data:`MOTIONS` order), or None when nothing moves."""
    angle = motion_angle(video)
    if angle is None:
        return None
    return min(MOTIONS, key=lambda name: angle_error(angle, name))


def motion_accuracy(videos: np.ndarray, directions: list[str]) -> float:
    """Share of ``videos`` (``n f h w 3`` in [0, 1]) whose motion is within 22.5 degrees of their direction."""
    hits = [(a := motion_angle(v)) is not None and angle_error(a, d) < SECTOR for v, d in zip(videos, directions)]
    return sum(hits) / max(len(hits), 1)
