"""Time vidcore's controlled video pipeline (Text2Video-Zero + ControlNet) against diffusers' recipe on CPU, on a
reduced random SD1.5-layout model and ControlNet.

- vidcore: ``ControlledVideoPipeline`` (one control image per frame, shared noise, cross-frame attention in the
  UNet and the ControlNet).
- diffusers: ``StableDiffusionControlNetPipeline`` with ``CrossFrameAttnProcessor(batch_size=2)`` on the UNet and
  the ControlNet, the prompt repeated per frame and the noise latent repeated over frames (the recipe of diffusers'
  Text2Video-Zero documentation).

Both are built from the same random weights (``tests/tiny_controlnet.py``), checked to agree, then timed as full
calls (text encoding, sampling with ControlNet, VAE decode, postprocessing) alternately in one process (interleaved
rounds, medians reported). Modes: plain (CFG) and guess mode (ControlNet on the conditional half only; diffusers'
ControlNet processor then groups the frames as one video, batch_size=1).

    /work/venv/bin/python benchmarks/bench_controlled_video_cpu.py
    /work/venv/bin/python benchmarks/bench_controlled_video_cpu.py --frames 8 --size 64 --steps 10 --repeats 7
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import (add_repo_paths, add_timing_args, apply_threads, interleaved, loadavg, median_ms, print_machine,
                    rel_err, table)

add_repo_paths()

# The reduced SD1.5 UNet and VAE of the Text2Video-Zero benchmark, and the matching ControlNet with SD's
# conditioning embedding (16/32/96/256, factor 8).
from bench_text2video_zero_cpu import UNET, VAE  # noqa: E402

CONTROLNET = dict(block_out_channels=(32, 64, 128, 128), layers_per_block=2, attention_head_dim=8,
                  norm_num_groups=16, cross_attention_dim=64,
                  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                  conditioning_embedding_out_channels=(16, 32, 96, 256))
HEADER = ("pipeline", "median ms", "min-max ms", "median CPU ms", "n", "ratio of medians", "median paired ratio")


def rows_for(times, names) -> list[tuple]:
    base = names[0]
    rows = []
    for name in names:
        m, ts = median_ms(times.wall[name]), sorted(1000 * x for x in times.wall[name])
        rows.append((name, f"{m:.0f}", f"{ts[0]:.0f}-{ts[-1]:.0f}", f"{median_ms(times.cpu[name]):.0f}", len(ts),
                     f"{m / median_ms(times.wall[base]):.2f}", f"{times.paired_ratio(name, base):.2f}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=64, help="height = width in pixels")
    ap.add_argument("--steps", type=int, default=10)
    add_timing_args(ap, repeats=7, budget=90.0, unit="a mode")
    args = ap.parse_args()
    apply_threads(args)

    import diffusers

    import tiny_controlnet as tc
    from vidcore.controls import canny
    from vidcore.pipelines.controlled_video import ControlledVideoPipeline

    print("## Machine")
    print_machine()
    print(f"\nUNet overrides: {UNET}\nControlNet overrides: {CONTROLNET}\nVAE overrides: {VAE}")

    with tempfile.TemporaryDirectory() as tmp:
        built = tc.build_tiny_controlled(Path(tmp), unet_overrides=UNET, controlnet_overrides=CONTROLNET,
                                         vae_overrides=VAE)
        ours = ControlledVideoPipeline.from_pretrained(built.sd, controlnet=built.controlnet)
    ours.set_progress_bar_config(disable=True)
    ref = built.pipe
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    print(f"UNet {count(ref.unet):.2f} M, ControlNet {count(ref.controlnet):.2f} M, VAE {count(ref.vae):.2f} M "
          "parameters")

    # edge maps of a square moving right, as the canny ControlNet would get them
    video = np.zeros((args.frames, args.size, args.size, 3), dtype=np.uint8)
    side = args.size // 3
    for i, f in enumerate(video):
        x = (i * (args.size - side)) // max(args.frames - 1, 1)
        f[side: 2 * side, x: x + side] = 220
    control = canny(video)
    from PIL import Image
    control = [Image.fromarray(f) for f in control]
    prompt = "a red car on a road"
    results = {}
    modes = {"plain": dict(), "guess mode": dict(guess_mode=True, guidance_scale=4.0)}
    with torch.inference_mode():
        for mode, extra in modes.items():
            kw = dict(num_inference_steps=args.steps, **extra)
            cn_batch = 1 if extra.get("guess_mode") else None
            fns = {
                "diffusers": lambda kw=kw, cn=cn_batch: tc.reference_frames(ref, control, prompt, seed=0,
                                                                            controlnet_batch_size=cn, **kw),
                "vidcore": lambda kw=kw: ours(prompt, control, output_type="np",
                                              generator=torch.Generator().manual_seed(0), **kw).frames[0],
            }
            a, b = np.asarray(fns["diffusers"]()), np.asarray(fns["vidcore"]())
            print(f"\n{mode}: frames {a.shape}, relative error vidcore vs diffusers {rel_err(a, b):.2e}")
            print(f"timing {args.repeats} rounds (interleaved, {args.warmup} warmup), load average before: "
                  f"{loadavg()} ...", flush=True)
            results[mode] = interleaved(fns, args.repeats, args.warmup, args.budget)
            print(f"load average after: {loadavg()}")

    print(f"\n## Controlled video (Text2Video-Zero + ControlNet), {args.frames} frames {args.size}x{args.size}, "
          f"{args.steps} steps, fp32, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}, "
          f"diffusers {diffusers.__version__}")
    for mode in modes:
        print(f"\n### {mode}\n")
        print(table(rows_for(results[mode], ["diffusers", "vidcore"]), HEADER))
    print("\nratio < 1: faster than diffusers. Paired ratio: per-round vidcore/diffusers wall time, median over rounds.")


if __name__ == "__main__":
    main()
