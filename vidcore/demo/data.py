"""Synthetic training videos for the demo model: one coloured shape moving on a black background.

Every clip is fully determined by its seed (and optional fixed attributes). A clip is a float tensor
``f 3 h w`` in [-1, 1] plus its prompt ``"a {color} {shape} moving {direction}"``. Shapes are
rendered with 4x4 supersampling so sub-pixel motion is smooth. The shape stays entirely inside the
frame for the whole clip; speed, size, start position and the cross-axis position are random.
"""

from __future__ import annotations

import itertools

import torch

COLORS = {  # RGB in [0, 1]; saturated, so the hue is unambiguous on the black background
    "red": (0.95, 0.10, 0.10),
    "green": (0.10, 0.85, 0.15),
    "blue": (0.15, 0.30, 1.00),
    "yellow": (0.95, 0.90, 0.10),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {  # unit step (dx, dy) in image coordinates (y points down)
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
BACKGROUND = (0.0, 0.0, 0.0)

NUM_FRAMES = 8
SIZE = 32
RADIUS = (4.0, 6.0)  # half-extent of the shape in pixels
SPEED = (1.5, 2.5)  # pixels per frame
SUPERSAMPLE = 4


def prompt_for(color: str, shape: str, direction: str) -> str:
    return f"a {color} {shape} moving {direction}"


def all_combinations() -> list[tuple[str, str, str]]:
    """The 48 (color, shape, direction) triples, in a fixed order."""
    return list(itertools.product(COLORS, SHAPES, DIRECTIONS))


def all_prompts() -> list[str]:
    """The 48 prompts the demo model is trained on."""
    return [prompt_for(*c) for c in all_combinations()]


def parse_prompt(prompt: str) -> tuple[str, str, str]:
    """``"a red circle moving right"`` -> ``("red", "circle", "right")``; ValueError otherwise."""
    words = prompt.split()
    if len(words) != 5 or words[0] != "a" or words[3] != "moving" or words[1] not in COLORS \
            or words[2] not in SHAPES or words[4] not in DIRECTIONS:
        raise ValueError(f"not a demo prompt: {prompt!r} (expected 'a <color> <shape> moving <direction>' with "
                         f"color in {list(COLORS)}, shape in {list(SHAPES)}, direction in {list(DIRECTIONS)})")
    return words[1], words[2], words[4]


def shape_mask(shape: str, cx: torch.Tensor, cy: torch.Tensor, r: float, size: int,
               supersample: int = SUPERSAMPLE) -> torch.Tensor:
    """Anti-aliased coverage ``f h w`` in [0, 1] of ``shape`` centred at (cx[i], cy[i]) with half-extent r."""
    n = size * supersample
    coords = (torch.arange(n, dtype=torch.float32) + 0.5) / supersample  # pixel units, pixel centres at k + 0.5
    dx = coords[None, None, :] - cx[:, None, None]
    dy = coords[None, :, None] - cy[:, None, None]
    if shape == "circle":
        inside = dx * dx + dy * dy <= r * r
    elif shape == "square":
        s = 0.85 * r  # about the circle's area
        inside = (dx.abs() <= s) & (dy.abs() <= s)
    elif shape == "triangle":  # pointing up, base 2r wide, height 1.8r, centred on its bounding box
        top, bottom = -0.9 * r, 0.9 * r
        half_width = (dy - top) / (bottom - top) * r
        inside = (dy >= top) & (dy <= bottom) & (dx.abs() <= half_width)
    else:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    cover = inside.to(torch.float32).reshape(-1, size, supersample, size, supersample)
    return cover.mean(dim=(2, 4))


def make_clip(seed: int, color: str | None = None, shape: str | None = None, direction: str | None = None,
              num_frames: int = NUM_FRAMES, size: int = SIZE,
              speed: tuple[float, float] = SPEED, trail: int = 0,
              across: tuple[float, float] = (0.0, 1.0)) -> tuple[torch.Tensor, str]:
    """One clip ``(video f 3 h w in [-1, 1], prompt)``; attributes not given are drawn from ``seed``.

    ``trail``: number of fading copies drawn at the shape's previous positions (a comet-like motion
    trail, so a single frame already shows which way the shape goes). ``across``: the part of the free range the
    cross-axis position is drawn from (the image-to-video demo keeps the shape near the middle, so where it
    starts tells where it goes)."""
    g = torch.Generator().manual_seed(seed)

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand((), generator=g, dtype=torch.float64).item()

    def choice(options):
        options = list(options)
        return options[int(torch.randint(len(options), (), generator=g))]

    color = color if color is not None else choice(COLORS)
    shape = shape if shape is not None else choice(SHAPES)
    direction = direction if direction is not None else choice(DIRECTIONS)
    if color not in COLORS or shape not in SHAPES or direction not in DIRECTIONS:
        raise ValueError(f"unknown attribute in ({color!r}, {shape!r}, {direction!r})")
    scale = size / SIZE
    r = uniform(*RADIUS) * scale
    lo, hi = r + 1.0, size - r - 1.0  # centre range that keeps the whole shape (plus 1 px) inside
    travel = min(uniform(*speed) * scale * (num_frames - 1), hi - lo)
    step = travel / max(num_frames - 1, 1)
    start = uniform(lo, hi - travel)  # position along the motion axis where the motion starts (low end)
    free = hi - lo
    across = uniform(lo, hi) if across == (0.0, 1.0) else uniform(lo + across[0] * free, lo + across[1] * free)
    ux, uy = DIRECTIONS[direction]
    t = torch.arange(num_frames, dtype=torch.float32) * step
    along = start + t if (ux + uy) > 0 else start + travel - t
    cx, cy = (along, torch.full_like(along, across)) if ux else (torch.full_like(along, across), along)

    alpha = shape_mask(shape, cx, cy, r, size)[:, None]  # f 1 h w
    for k in range(1, trail + 1):  # ghost k: where the shape was k frames earlier, fainter with k
        back = step * k
        gx, gy = cx - ux * back, cy - uy * back
        ghost = shape_mask(shape, gx, gy, r, size)[:, None] * (0.5 * (1 - k / (trail + 1)))
        alpha = torch.maximum(alpha, ghost)
    fg = torch.tensor(COLORS[color]).view(1, 3, 1, 1)
    bg = torch.tensor(BACKGROUND).view(1, 3, 1, 1)
    video = bg + alpha * (fg - bg)  # f 3 h w in [0, 1]
    return video * 2 - 1, prompt_for(color, shape, direction)


def make_dataset(num_clips: int, seed: int = 0, num_frames: int = NUM_FRAMES, size: int = SIZE,
                 speed: tuple[float, float] = SPEED, trail: int = 0) -> tuple[torch.Tensor, list[str]]:
    """``num_clips`` clips cycling through all 48 prompts: ``(videos n f 3 h w, prompts)``.

    Clip ``i`` uses combination ``i % 48`` and the seed ``seed * 1_000_003 + i``.
    """
    combos = all_combinations()
    videos, prompts = [], []
    for i in range(num_clips):
        video, prompt = make_clip(seed * 1_000_003 + i, *combos[i % len(combos)], num_frames=num_frames, size=size,
                                  speed=speed, trail=trail)
        videos.append(video)
        prompts.append(prompt)
    return torch.stack(videos), prompts
