"""Score the demo model: does each video show the prompt's color, moving in the prompt's direction?

``python -m vidcore.demo.evaluate [--model DIR] [--seeds 4] [--steps N] [--guidance G] [--fp8 [COMPONENT ...]]``

Generates every color x shape x direction prompt (48) with several seeds through
``vidcore.TextToVideoPipeline`` and scores each video with two simple measurements:

* color: pixels far from the (black) background are the foreground; each one's hue goes to the
  nearest of the four demo colors' hues; the majority wins.
* direction: the foreground's centroid is tracked over frames; a least-squares line through it gives
  the velocity (dx, dy); the larger axis and its sign give left/right/up/down.

Smoothness: per-frame centroid steps along the prompt's axis; a video moves smoothly when every step
goes the right way and the steps' spread (std / mean) is small.

``--fp8`` scores the pipeline with fp8 weight storage (``pipe.enable_layerwise_casting()``: the UNet by default,
``--fp8 unet vae`` adds the VAE), which shows what the rounding costs in accuracy.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from .data import COLORS, DIRECTIONS, all_combinations, prompt_for

COLOR_THRESHOLD = 0.3  # a pixel votes on the color when its max-channel distance from the background exceeds this
MOTION_THRESHOLD = 0.1  # below this distance a pixel is background for the centroid (ignores faint noise)
BACKGROUND = (0.0, 0.0, 0.0)
_HUES = {name: colorsys.rgb_to_hsv(*rgb)[0] for name, rgb in COLORS.items()}


def background_distance(video: np.ndarray) -> np.ndarray:
    """video ``f h w 3`` in [0, 1] -> max-channel distance from the background color, ``f h w``."""
    return np.abs(video - np.asarray(BACKGROUND, dtype=video.dtype)).max(axis=-1)


def foreground_weight(video: np.ndarray) -> np.ndarray:
    """Centroid weight ``f h w``: linear in the distance from the background (so an anti-aliased edge
    pixel counts by its coverage), zero below ``MOTION_THRESHOLD``."""
    return np.clip((background_distance(video) - MOTION_THRESHOLD) / (1 - MOTION_THRESHOLD), 0, 1)


def pixel_hues(rgb: np.ndarray) -> np.ndarray:
    """``n 3`` RGB in [0, 1] -> hue in [0, 1) (same convention as colorsys)."""
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    mx, mn = rgb.max(axis=1), rgb.min(axis=1)
    d = np.where(mx - mn > 1e-6, mx - mn, 1.0)
    h = np.where(mx == r, (g - b) / d % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
    return h / 6.0 % 1.0


def score_color(video: np.ndarray) -> str | None:
    """Dominant foreground color name of ``f h w 3`` in [0, 1], or None when there is no foreground."""
    dist = background_distance(video)
    keep = dist > COLOR_THRESHOLD
    if not keep.any():
        return None
    weight = dist
    hues = pixel_hues(video[keep])
    names = list(_HUES)
    ref = np.array([_HUES[n] for n in names])
    dist = np.abs(hues[:, None] - ref[None, :])
    dist = np.minimum(dist, 1 - dist)
    votes = np.bincount(dist.argmin(axis=1), weights=weight[keep], minlength=len(names))
    return names[int(votes.argmax())]


def centroids(video: np.ndarray) -> np.ndarray:
    """Foreground centroid (x, y) per frame, ``f 2``; NaN for frames with no foreground."""
    weight = foreground_weight(video)
    f, h, w = weight.shape
    ys, xs = np.mgrid[0:h, 0:w]
    total = weight.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (weight * xs).sum(axis=(1, 2)) / total
        cy = (weight * ys).sum(axis=(1, 2)) / total
    out = np.stack([cx, cy], axis=1)
    out[total < 1e-6] = np.nan
    return out


def velocity(video: np.ndarray) -> np.ndarray | None:
    """Least-squares centroid velocity (dx, dy) in pixels per frame, or None with < 2 visible frames."""
    c = centroids(video)
    ok = ~np.isnan(c[:, 0])
    if ok.sum() < 2:
        return None
    t = np.arange(len(c))[ok].astype(np.float64)
    t = t - t.mean()
    return (t[:, None] * (c[ok] - c[ok].mean(axis=0))).sum(axis=0) / (t * t).sum()


def score_direction(video: np.ndarray) -> str | None:
    """left / right / up / down from the dominant axis of the centroid velocity (image y points down)."""
    v = velocity(video)
    if v is None or not np.isfinite(v).all() or np.abs(v).max() == 0:
        return None
    if abs(v[0]) >= abs(v[1]):
        return "right" if v[0] > 0 else "left"
    return "down" if v[1] > 0 else "up"


def smoothness(video: np.ndarray, direction: str) -> tuple[bool, float]:
    """(every per-frame step goes ``direction``'s way, std / mean of the steps along its axis)."""
    c = centroids(video)
    ux, uy = DIRECTIONS[direction]
    along = c[:, 0] * ux + c[:, 1] * uy
    steps = np.diff(along)
    if np.isnan(steps).any() or steps.mean() <= 0:
        return False, float("inf")
    return bool((steps > 0).all()), float(steps.std() / steps.mean())


def score_videos(videos: np.ndarray, combos: list[tuple[str, str, str]]) -> list[dict]:
    """videos ``n f h w 3`` in [0, 1]; one result dict per video."""
    rows = []
    for video, (color, shape, direction) in zip(videos, combos):
        got_color, got_dir = score_color(video), score_direction(video)
        monotone, spread = smoothness(video, direction)
        rows.append(dict(color=color, shape=shape, direction=direction, got_color=got_color,
                         got_direction=got_dir, color_ok=got_color == color, direction_ok=got_dir == direction,
                         monotone=monotone, step_spread=spread))
    return rows


def summarize(rows: list[dict]) -> dict:
    def acc(items, key):
        return sum(r[key] for r in items) / max(len(items), 1)

    by_color, by_dir, by_shape = defaultdict(list), defaultdict(list), defaultdict(list)
    for r in rows:
        by_color[r["color"]].append(r)
        by_dir[r["direction"]].append(r)
        by_shape[r["shape"]].append(r)
    spreads = [r["step_spread"] for r in rows if r["direction_ok"]]
    return dict(
        videos=len(rows),
        color_accuracy=acc(rows, "color_ok"),
        direction_accuracy=acc(rows, "direction_ok"),
        monotone_fraction=acc(rows, "monotone"),
        median_step_spread=float(np.median(spreads)) if spreads else float("nan"),
        per_color={k: acc(v, "color_ok") for k, v in by_color.items()},
        per_direction={k: acc(v, "direction_ok") for k, v in by_dir.items()},
        per_shape={k: (acc(v, "color_ok"), acc(v, "direction_ok")) for k, v in by_shape.items()},
    )


def format_summary(s: dict) -> str:
    lines = [f"{'color':<8} color acc  | {'direction':<9} direction acc"]
    colors, dirs = list(s["per_color"]), list(s["per_direction"])
    for i in range(max(len(colors), len(dirs))):
        left = f"{colors[i]:<8} {s['per_color'][colors[i]]:9.1%}" if i < len(colors) else " " * 18
        right = f"{dirs[i]:<9} {s['per_direction'][dirs[i]]:13.1%}" if i < len(dirs) else ""
        lines.append(f"{left}  | {right}")
    lines.append("shape     color / direction acc")
    for k, (c, d) in s["per_shape"].items():
        lines.append(f"{k:<9} {c:6.1%} / {d:6.1%}")
    lines.append(f"videos: {s['videos']}")
    lines.append(f"color accuracy:     {s['color_accuracy']:.1%}")
    lines.append(f"direction accuracy: {s['direction_accuracy']:.1%}")
    lines.append(f"smooth motion: {s['monotone_fraction']:.1%} of videos move the prompt's way on every frame; "
                 f"median per-frame step spread (std/mean) {s['median_step_spread']:.2f}")
    return "\n".join(lines)


def generate(pipe, combos, seeds: int, num_frames: int, steps: int, guidance: float, batch: int = 48,
             height: int | None = None, width: int | None = None) -> tuple[np.ndarray, list]:
    """Every combo with seeds 0..seeds-1 -> (videos n f h w 3 in [0, 1], combos in the same order)."""
    jobs = [(c, s) for s in range(seeds) for c in combos]
    videos = []
    for i in range(0, len(jobs), batch):
        part = jobs[i:i + batch]
        out = pipe([prompt_for(*c) for c, _ in part], num_frames=num_frames, num_inference_steps=steps,
                   guidance_scale=guidance, height=height, width=width,
                   generator=[torch.Generator().manual_seed(s) for _, s in part], output_type="np")
        videos.append(out.frames)
    return np.concatenate(videos), [c for c, _ in jobs]


def evaluate(model=None, seeds: int = 4, steps: int | None = None, guidance: float | None = None,
             num_frames: int | None = None, verbose: bool = True, fp8: tuple[str, ...] | None = None) -> dict:
    """Score every prompt with ``seeds`` seeds; ``fp8``: components stored in float8_e4m3fn (``()``: the
    pipeline's default ones), None: no fp8."""
    import vidcore

    from . import DEFAULTS, demo_model_path

    steps = steps or DEFAULTS["num_inference_steps"]
    guidance = DEFAULTS["guidance_scale"] if guidance is None else guidance
    num_frames = num_frames or DEFAULTS["num_frames"]
    pipe = vidcore.TextToVideoPipeline.from_pretrained(model or demo_model_path())
    pipe.set_progress_bar_config(disable=True)
    if fp8 is not None:
        pipe.enable_layerwise_casting(torch.float8_e4m3fn, components=tuple(fp8) or None)
    start = time.perf_counter()
    videos, combos = generate(pipe, all_combinations(), seeds, num_frames, steps, guidance,
                              height=DEFAULTS["height"], width=DEFAULTS["width"])
    summary = summarize(score_videos(videos, combos))
    summary.update(seeds=seeds, steps=steps, guidance=guidance, num_frames=num_frames, fp8=fp8,
                   seconds=round(time.perf_counter() - start, 1))
    if verbose:
        print(format_summary(summary))
        weights = "" if fp8 is None else f", fp8 weights: {', '.join(fp8) or 'default components'}"
        print(f"({len(combos)} videos, {steps} DDIM steps, guidance {guidance}{weights}, {summary['seconds']} s)")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vidcore.demo.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="pipeline folder (default: the shipped demo model)")
    p.add_argument("--seeds", type=int, default=4, help="seeds per prompt (default 4)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: DEFAULTS)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: DEFAULTS)")
    p.add_argument("--frames", type=int, default=None, help="frames per video (default: DEFAULTS)")
    p.add_argument("--fp8", nargs="*", default=None, metavar="COMPONENT",
                   help="store these components' weights in float8_e4m3fn (no names: the UNet)")
    p.add_argument("--json", default=None, help="also write the summary to this JSON file")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    summary = evaluate(args.model, args.seeds, args.steps, args.guidance, args.frames, fp8=args.fp8)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
