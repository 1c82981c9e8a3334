"""Time vidcore's TextToVideoPipeline against diffusers' TextToVideoSDPipeline (ModelScope) on CPU.

Builds a random diffusers TextToVideoSDPipeline with the test harness (``tests/tiny.py``) at
larger-than-test sizes, saves it, loads ``vidcore.TextToVideoPipeline.from_pretrained`` from the
same folder, runs both with the same seed and arguments, checks the frames agree, then times full
calls (text encoding, denoising loop with CFG, VAE decode, postprocessing) alternately in one process.

    .venv/bin/python benchmarks/bench_t2v_pipeline_cpu.py
    .venv/bin/python benchmarks/bench_t2v_pipeline_cpu.py --frames 16 --height 128 --width 128 --steps 10 --repeats 5
    .venv/bin/python benchmarks/bench_t2v_pipeline_cpu.py --dtype bfloat16

--dtype float32|bfloat16: both pipelines are cast with ``pipe.to(dtype)`` after loading (bfloat16: the frames
must agree loosely, mean |difference| < 0.02, and hold no NaN; float32: relative error < 1e-3). The table's speed columns are diffusers time /
vidcore time (> 1: vidcore faster); the line starting with RESULT is the one RESULTS.md records.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from common import (DTYPES, add_pipeline_args, add_repo_paths, apply_threads, interleaved, median_ms, print_machine,
                    rel_err, table, time_pipelines)

add_repo_paths()

# UNet: ModelScope layout (4 levels, cross-attention on the top three) at 1/10 of the width,
# head width 16 (heads 2/4/8/8; transformer_in 8 heads). Text encoder width follows cross_attention_dim.
UNET = dict(
    block_out_channels=(32, 64, 128, 128),
    layers_per_block=2,
    attention_head_dim=16,
    norm_num_groups=16,
    cross_attention_dim=64,
)
# VAE: four levels like SD's (spatial factor 8), narrow.
VAE = dict(block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_num_groups=8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pipeline_args(ap, repeats=15, budget=120.0)
    ap.add_argument("--guidance-scale", type=float, default=9.0)
    ap.add_argument("--components", action="store_true",
                    help="also time the parts separately: one CFG UNet forward at the pipeline's latent shape and "
                         "one VAE decode of all frames (diffusers/vidcore interleaved)")
    args = ap.parse_args()
    apply_threads(args)

    import diffusers

    import tiny
    import vidcore

    print("## Machine")
    print_machine()
    print(f"\nUNet overrides: {UNET}\nVAE overrides: {VAE}")

    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        ref = tiny.build_tiny_t2v_pipeline(folder, unet_overrides=UNET, vae_overrides=VAE)
        t1 = time.perf_counter()
        ours = vidcore.TextToVideoPipeline.from_pretrained(folder)
        t2 = time.perf_counter()
    ref.set_progress_bar_config(disable=True)
    ours.set_progress_bar_config(disable=True)
    ref.to(DTYPES[args.dtype])
    ours.to(dtype=DTYPES[args.dtype])
    print(f"built + saved diffusers pipeline in {t1 - t0:.1f} s; vidcore from_pretrained {t2 - t1:.2f} s")
    print(f"UNet parameters: {sum(p.numel() for p in ref.unet.parameters()) / 1e6:.2f} M, "
          f"VAE {sum(p.numel() for p in ref.vae.parameters()) / 1e6:.2f} M")

    kwargs = dict(prompt="a red panda eating bamboo", negative_prompt="blurry", num_frames=args.frames,
                  height=args.height, width=args.width, num_inference_steps=args.steps,
                  guidance_scale=args.guidance_scale, output_type="np")

    def run_ref():
        return ref(generator=torch.Generator().manual_seed(0), **kwargs).frames

    def run_ours():
        return ours(generator=torch.Generator().manual_seed(0), **kwargs).frames

    time_pipelines("Text-to-video pipeline", run_ref, run_ours, args)

    if args.components:
        time_components(ref, ours, args)


def time_components(ref, ours, args) -> None:
    s = 2 ** (len(ref.vae.config.block_out_channels) - 1)
    h, w = args.height // s, args.width // s
    g = torch.Generator().manual_seed(1)
    dt = DTYPES[args.dtype]
    x = torch.randn(2, ref.unet.config.in_channels, args.frames, h, w, generator=g).to(dt)
    ctx = torch.randn(2, 77, ref.unet.config.cross_attention_dim, generator=g).to(dt)
    z = torch.randn(args.frames, ref.vae.config.latent_channels, h, w, generator=g).to(dt)
    t = torch.tensor(501)
    with torch.inference_mode():
        print(f"\ncomponents: UNet relative error "
              f"{rel_err(ref.unet(x, t, encoder_hidden_states=ctx).sample, ours.unet(x, t, ctx)):.2e}, "
              f"VAE decode relative error {rel_err(ref.vae.decode(z).sample, ours.vae.decode(z)):.2e}", flush=True)
        fns = {"diffusers UNet": lambda: ref.unet(x, t, encoder_hidden_states=ctx),
               "vidcore UNet": lambda: ours.unet(x, t, ctx),
               "diffusers VAE decode": lambda: ref.vae.decode(z),
               "vidcore VAE decode": lambda: ours.vae.decode(z)}
        times = interleaved(fns, args.repeats, args.warmup, args.budget)
    rows = []
    for name in fns:
        base = "diffusers " + name.split(" ", 1)[1]
        rows.append((name, f"{median_ms(times.wall[name]):.0f}", f"{median_ms(times.cpu[name]):.0f}", len(times.wall[name]),
                     f"{median_ms(times.wall[name]) / median_ms(times.wall[base]):.2f}",
                     f"{times.paired_ratio(name, base):.2f}",
                     f"{median_ms(times.cpu[name]) / median_ms(times.cpu[base]):.2f}"))
    print(f"\n## Components: UNet CFG forward 2x4x{args.frames}x{h}x{w}, VAE decode {args.frames}x4x{h}x{w}\n")
    print(table(rows, ("part", "median ms", "median CPU ms", "n", "ratio of medians", "median paired ratio",
                       "CPU-time ratio")))


if __name__ == "__main__":
    main()
