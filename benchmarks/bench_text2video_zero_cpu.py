"""Time vidcore's Text2Video-Zero pipelines against diffusers' on CPU, on a reduced random SD1.5-layout model.

- zero-shot: ``vidcore.TextToVideoZeroPipeline`` vs diffusers' deprecated ``TextToVideoZeroPipeline`` (DDIM).
- edit: ``vidcore.VideoInstructPix2PixPipeline`` vs diffusers' ``StableDiffusionInstructPix2PixPipeline`` with
  ``CrossFrameAttnProcessor(batch_size=3)`` on the frames as a batch (the stored Euler ancestral sampler), the
  recipe diffusers documents.

Each pair is built from the same random weights (``tests/tiny_zero.py``), checked to agree, then timed as full
calls (text encoding, sampling, VAE encode/decode, postprocessing) alternately in one process; medians reported.

    /work/venv/bin/python benchmarks/bench_text2video_zero_cpu.py
    /work/venv/bin/python benchmarks/bench_text2video_zero_cpu.py --frames 8 --size 64 --steps 10 --repeats 7
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

# SD1.5's UNet layout (three cross-attention levels + one plain level, 8 heads) at 1/10 of the width;
# a four-level VAE (spatial factor 8, as SD's), narrow. The text encoder's width follows cross_attention_dim.
UNET = dict(block_out_channels=(32, 64, 128, 128), layers_per_block=2, attention_head_dim=8, norm_num_groups=16,
            cross_attention_dim=64, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, sample_size=8)
VAE = dict(block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_num_groups=8)


def rows_for(times, names) -> list[tuple]:
    base = names[0]
    rows = []
    for name in names:
        m, ts = median_ms(times.wall[name]), sorted(1000 * x for x in times.wall[name])
        rows.append((name, f"{m:.0f}", f"{ts[0]:.0f}-{ts[-1]:.0f}", f"{median_ms(times.cpu[name]):.0f}", len(ts),
                     f"{m / median_ms(times.wall[base]):.2f}", f"{times.paired_ratio(name, base):.2f}"))
    return rows


HEADER = ("pipeline", "median ms", "min-max ms", "median CPU ms", "n", "ratio of medians", "median paired ratio")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=64, help="height = width in pixels")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--t0", type=int, default=7, help="zero-shot t0 (steps from the end); t1 = t0 + 1")
    add_timing_args(ap, repeats=7, budget=90.0, unit="a pair")
    args = ap.parse_args()
    apply_threads(args)

    import diffusers

    import tiny_zero
    import vidcore
    import vidcore.schedulers

    print("## Machine")
    print_machine()
    print(f"\nUNet overrides: {UNET}\nVAE overrides: {VAE}")

    with tempfile.TemporaryDirectory() as tmp:
        sd = tiny_zero.build_tiny_sd(Path(tmp) / "sd", unet_overrides=UNET, vae_overrides=VAE)
        p2p = tiny_zero.build_tiny_pix2pix(Path(tmp) / "p2p", unet_overrides=UNET, vae_overrides=VAE)
        # zero-shot: DDIM from the stored (PNDM) config on both sides; edit: the stored Euler ancestral on both
        zero_ours = vidcore.TextToVideoZeroPipeline.from_pretrained(
            Path(tmp) / "sd", scheduler=vidcore.schedulers.DDIMScheduler.from_config(Path(tmp) / "sd"))
        edit_ours = vidcore.VideoInstructPix2PixPipeline.from_pretrained(Path(tmp) / "p2p")
    zero_ref = tiny_zero.zero_pipeline(sd)
    for pipe in (zero_ours, edit_ours):
        pipe.set_progress_bar_config(disable=True)
    print(f"UNet parameters: {sum(p.numel() for p in sd.unet.parameters()) / 1e6:.2f} M, "
          f"VAE {sum(p.numel() for p in sd.vae.parameters()) / 1e6:.2f} M")

    zero_kw = dict(prompt="a horse galloping on a street", video_length=args.frames, height=args.size,
                   width=args.size, num_inference_steps=args.steps, t0=args.t0, t1=args.t0 + 1)
    frames = tiny_zero.random_frames(args.frames, args.size, args.size)
    edit_kw = dict(num_inference_steps=args.steps, guidance_scale=7.5, image_guidance_scale=1.5)
    prompt = "make it Van Gogh style"
    pairs = {
        "zero-shot": {
            "diffusers": lambda: zero_ref(generator=torch.Generator().manual_seed(0), **zero_kw).images,
            "vidcore": lambda: zero_ours(generator=torch.Generator().manual_seed(0), **zero_kw).frames[0],
        },
        "edit": {
            "diffusers": lambda: tiny_zero.pix2pix_reference(p2p, frames, prompt,
                                                             generator=torch.Generator().manual_seed(0), **edit_kw),
            "vidcore": lambda: edit_ours(prompt=prompt, video=frames, output_type="np",
                                         generator=torch.Generator().manual_seed(0), **edit_kw).frames[0],
        },
    }
    results = {}
    with torch.inference_mode():
        for mode, fns in pairs.items():
            a, b = np.asarray(fns["diffusers"]()), np.asarray(fns["vidcore"]())
            print(f"\n{mode}: frames {a.shape}, relative error vidcore vs diffusers {rel_err(a, b):.2e}")
            print(f"timing {args.repeats} rounds (interleaved, {args.warmup} warmup), load average before: "
                  f"{loadavg()} ...", flush=True)
            results[mode] = interleaved(fns, args.repeats, args.warmup, args.budget)
            print(f"load average after: {loadavg()}")

    print(f"\n## Text2Video-Zero, {args.frames} frames {args.size}x{args.size}, {args.steps} steps, fp32, "
          f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, diffusers {diffusers.__version__}")
    for mode in pairs:
        what = (f"zero-shot (t0={args.t0}, t1={args.t0 + 1}, CFG)" if mode == "zero-shot"
                else "edit (InstructPix2Pix, three-way guidance, Euler)")
        print(f"\n### {what}\n")
        print(table(rows_for(results[mode], ["diffusers", "vidcore"]), HEADER))
    print("\nratio < 1: faster than diffusers. Paired ratio: per-round vidcore/diffusers wall time, median over rounds.")


if __name__ == "__main__":
    main()
