"""Score the image-to-video demo model: from a first frame showing a shape near one edge, does the video keep the
shape's color in every frame and move it toward the far side?

``python -m vidcore.demo.evaluate_svd [--model DIR] [--seeds 2] [--steps 10]``

The first frames are the training data's kind (:func:`vidcore.demo.train_svd.make_clips`: every color x shape x
direction, shapes near the middle across their path) but from seeds the training never used. Each video is scored
with the text-to-video evaluation's measurements (:mod:`vidcore.demo.evaluate`): the majority foreground hue of
every frame, and the direction of the least-squares centroid velocity.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from .data import all_combinations
from .evaluate import score_color, score_direction

EVAL_SEED = 9_000  # clip seeds far from the training ones (seed * 1_000_003 + i for small i)
DEFAULTS = dict(num_frames=8, height=32, width=32, num_inference_steps=10, fps=7)


def first_frames(seeds: int) -> tuple[list[np.ndarray], list[tuple[str, str, str]]]:
    """(first frames h w 3 in [0, 1], their clip's (color, shape, direction)) for every combo x seed."""
    from .train_svd import SVDDemoConfig, make_clips

    cfg = SVDDemoConfig()
    combos = all_combinations() * seeds
    clips = make_clips(cfg, len(combos), EVAL_SEED)
    return [((c[0].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1) for c in clips], combos


def evaluate(model=None, seeds: int = 1, steps: int | None = None, verbose: bool = True,
             limit: int | None = None, batch: int = 48) -> dict:
    import vidcore

    from . import svd_demo_model_path

    steps = steps or DEFAULTS["num_inference_steps"]
    pipe = vidcore.StableVideoDiffusionPipeline.from_pretrained(model or svd_demo_model_path())
    pipe.set_progress_bar_config(disable=True)
    images, combos = first_frames(seeds)
    images, combos = images[:limit], combos[:limit]  # limit: the first videos only (tests)
    start = time.perf_counter()
    videos = []
    for i in range(0, len(images), batch):  # video k samples with seed k, whatever the batching
        part = np.stack(images[i:i + batch])  # b h w 3 in [0, 1]
        videos.extend(pipe(part, height=DEFAULTS["height"], width=DEFAULTS["width"],
                           num_frames=DEFAULTS["num_frames"], num_inference_steps=steps, fps=DEFAULTS["fps"],
                           output_type="np", fix_batch_quirks=True,
                           generator=[torch.Generator().manual_seed(i + j) for j in range(len(part))]).frames)
    rows = []
    for video, (color, shape, direction) in zip(videos, combos):
        colors = [score_color(frame[None]) for frame in video]
        rows.append(dict(color=color, shape=shape, direction=direction, got_direction=score_direction(video),
                         color_every_frame=all(c == color for c in colors),
                         color_frames=sum(c == color for c in colors) / len(colors)))
    n = len(rows)
    summary = dict(videos=n, steps=steps, seconds=round(time.perf_counter() - start, 1),
                   color_every_frame=sum(r["color_every_frame"] for r in rows) / n,
                   color_frames=sum(r["color_frames"] for r in rows) / n,
                   direction=sum(r["got_direction"] == r["direction"] for r in rows) / n)
    if verbose:
        print(f"color kept in every frame: {100 * summary['color_every_frame']:.1f} % (target >= 95 %); frames "
              f"with the right color: {100 * summary['color_frames']:.1f} %; motion toward the far side: "
              f"{100 * summary['direction']:.1f} % (target >= 90 %); {n} videos, {steps} Euler steps, "
              f"{summary['seconds']} s")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vidcore.demo.evaluate_svd", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="pipeline folder (default: the shipped image-to-video demo model)")
    p.add_argument("--seeds", type=int, default=2, help="first frames per color x shape x direction (default 2)")
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default 10)")
    p.add_argument("--json", default=None, help="also write the summary to this JSON file")
    args = p.parse_args(argv)
    summary = evaluate(args.model, args.seeds, args.steps)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
