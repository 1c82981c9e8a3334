"""AnimateDiff on CPU, vidcore vs diffusers on the same saved random weights: the whole pipeline (default) or
the UNet forward alone (``unet``).

    .venv/bin/python benchmarks/bench_animatediff_cpu.py                      # pipeline, 8 frames 64x64, 10 steps
    .venv/bin/python benchmarks/bench_animatediff_cpu.py pipeline --frames 16 --height 128 --width 128 --dtype bfloat16
    .venv/bin/python benchmarks/bench_animatediff_cpu.py unet --repeats 8 --budget 120

pipeline: builds a random SD1.5-layout pipeline folder and MotionAdapter with ``tests/tiny_animatediff.py``
at larger-than-test sizes (UNet 32/64/128/128, heads 2/4/8/8, cross_attention_dim 64, mid-block motion module,
32 frame positions; VAE 32/32/64/64, spatial factor 8), loads ``vidcore.AnimateDiffPipeline.from_pretrained(sd,
motion_adapter=adapter)``, casts both pipelines to ``--dtype`` (``float32`` | ``bfloat16``), checks the
frames agree (seed 0), then times full calls (text encoding, DDIM loop with CFG, VAE decode, ``output_type="np"``)
alternately in one process. Flags: --frames --height --width --steps --guidance-scale --dtype --repeats
--warmup --budget --threads. Speed = diffusers time / vidcore time (> 1: vidcore faster).

unet: builds diffusers' ``UNet2DConditionModel`` and ``MotionAdapter`` from a reduced SD1.5 / v2-adapter config
(every parameter randomized), saves both, loads them with ``vidcore.load_model`` and wraps them in
``UNetMotion``; the reference is ``UNetMotionModel.from_unet2d(unet, adapter)``. Prints the parity, then
times one CFG forward (batch 2, 77 text tokens; diffusers gets the text repeated per frame, as its pipeline
passes it) of each variant, interleaved in one process, in float32 and bfloat16.
"""

from __future__ import annotations

import argparse
import copy
import time
import sys
import tempfile
from pathlib import Path

import torch

from common import (DTYPES, add_pipeline_args, add_repo_paths, add_timing_args, apply_threads, interleaved, loadavg,
                    print_machine, rel_err, time_pipelines)

add_repo_paths()

UNET_CONFIG = dict(  # SD1.5's layout (320/640/1280/1280) at a fifth of the width, head width 32
    block_out_channels=(64, 128, 256, 256),
    attention_head_dim=(2, 4, 8, 8),  # diffusers' name for the head count
    cross_attention_dim=768,
    layers_per_block=2,
    norm_num_groups=32,
)
ADAPTER_CONFIG = dict(  # guoyww/animatediff-motion-adapter-v1-5-2's layout (mid-block module, 32 positions)
    block_out_channels=(64, 128, 256, 256),
    motion_layers_per_block=2,
    motion_num_attention_heads=(2, 4, 8, 8),
    motion_norm_num_groups=32,
    motion_max_seq_length=32,
    use_motion_mid_block=True,
)


PIPE_UNET = dict(  # SD1.5's pattern at a tenth of the width (as bench_t2v_pipeline_cpu.py's UNet)
    block_out_channels=(32, 64, 128, 128),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    attention_head_dim=(2, 4, 8, 8),
    norm_num_groups=16,
    cross_attention_dim=64,
)
PIPE_ADAPTER = dict(block_out_channels=(32, 64, 128, 128), motion_norm_num_groups=16,
                    motion_num_attention_heads=(2, 4, 8, 8), motion_max_seq_length=32, use_motion_mid_block=True)
PIPE_VAE = dict(block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_num_groups=8)


def bench_pipeline(args) -> None:
    import tempfile

    import tiny_animatediff
    import vidcore

    print(f"UNet overrides: {PIPE_UNET}\nadapter overrides: {PIPE_ADAPTER}\nVAE overrides: {PIPE_VAE}")
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        setup = tiny_animatediff.build_tiny_animatediff(root, unet_overrides=PIPE_UNET, adapter_overrides=PIPE_ADAPTER,
                                                        vae_overrides=PIPE_VAE)
        t1 = time.perf_counter()
        from vidcore.pipelines.animatediff import animatediff_scheduler

        ours = vidcore.AnimateDiffPipeline.from_pretrained(  # the reference's scheduler: AnimateDiff's recommended DDIM
            setup.sd, motion_adapter=setup.adapter,
            scheduler=animatediff_scheduler(setup.sd / "scheduler" / "scheduler_config.json"))
        t2 = time.perf_counter()
    ref = setup.pipe
    ref.set_progress_bar_config(disable=True)
    ours.set_progress_bar_config(disable=True)
    ref.to(DTYPES[args.dtype])
    ours.to(dtype=DTYPES[args.dtype])
    print(f"built + saved diffusers pipeline in {t1 - t0:.1f} s; vidcore from_pretrained {t2 - t1:.2f} s")
    print(f"UNet parameters (with motion modules): {sum(p.numel() for p in ref.unet.parameters()) / 1e6:.2f} M, "
          f"VAE {sum(p.numel() for p in ref.vae.parameters()) / 1e6:.2f} M")
    kwargs = dict(prompt="a red panda eating bamboo", negative_prompt="blurry", num_frames=args.frames,
                  height=args.height, width=args.width, num_inference_steps=args.steps,
                  guidance_scale=args.guidance_scale, output_type="np")

    def run_ref():
        return ref(generator=torch.Generator().manual_seed(0), **kwargs).frames

    def run_ours():
        return ours(generator=torch.Generator().manual_seed(0), **kwargs).frames

    time_pipelines("AnimateDiff pipeline", run_ref, run_ours, args)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "unet":
        del sys.argv[1]
        return main_unet()
    if len(sys.argv) > 1 and sys.argv[1] == "pipeline":
        del sys.argv[1]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pipeline_args(ap)
    ap.add_argument("--guidance-scale", type=float, default=7.5)
    args = ap.parse_args()
    apply_threads(args)
    print("## Machine")
    print_machine()
    print(f"- command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    bench_pipeline(args)


def main_unet() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=16, help="latent height = width (16 -> 128x128 pixels)")
    ap.add_argument("--batch", type=int, default=2, help="2 = one video with classifier-free guidance")
    ap.add_argument("--dtype", choices=("all", "fp32", "bf16"), default="all")
    add_timing_args(ap, repeats=8, budget=120.0, unit="rounds")
    args = ap.parse_args()
    apply_threads(args)
    print("## Machine")
    print_machine()
    print(f"- command: {' '.join([Path(sys.executable).name] + sys.argv)}")

    import diffusers
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    import tiny
    import vidcore
    from bench_svd_cpu import timing_table
    from vidcore.models.motion import UNetMotion

    unet_cfg = dict(UNET_CONFIG, sample_size=args.size)
    print(f"UNet config: {unet_cfg}\nadapter config: {ADAPTER_CONFIG}")
    print(f"input: batch {args.batch}, 4 x {args.frames} frames x {args.size}x{args.size} latent, "
          f"context {args.batch} x 77 x {unet_cfg['cross_attention_dim']}")
    unet = tiny.randomize_(UNet2DConditionModel(**unet_cfg), seed=0).eval()
    adapter = tiny.randomize_(MotionAdapter(**ADAPTER_CONFIG), seed=1).eval()
    with tempfile.TemporaryDirectory() as tmp:
        unet.save_pretrained(f"{tmp}/unet")
        adapter.save_pretrained(f"{tmp}/adapter")
        ours = UNetMotion(vidcore.load_model(f"{tmp}/unet"), vidcore.load_model(f"{tmp}/adapter")).eval()
    ref = UNetMotionModel.from_unet2d(unet, adapter).eval()
    del unet, adapter
    print(f"parameters: vidcore {sum(p.numel() for p in ours.parameters()) / 1e6:.2f} M, "
          f"diffusers {sum(p.numel() for p in ref.parameters()) / 1e6:.2f} M")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 4, args.frames, args.size, args.size, generator=g)
    ctx = torch.randn(args.batch, 77, unet_cfg["cross_attention_dim"], generator=g)
    t = torch.tensor(601)

    def run_ref(m, x, c):
        return m(x, t, c.repeat_interleave(args.frames, dim=0), return_dict=False)[0]

    def run_ours(m, x, c):
        return m(x, t, c)

    variants = {}
    with torch.inference_mode():
        out32 = run_ref(ref, x, ctx)
        if args.dtype in ("all", "fp32"):
            print(f"fp32 parity: relative error {rel_err(out32, run_ours(ours, x, ctx)):.2e}")
            variants["diffusers fp32"] = (lambda: run_ref(ref, x, ctx), "fp32", True)
            variants["vidcore fp32"] = (lambda: run_ours(ours, x, ctx), "fp32", False)
        if args.dtype in ("all", "bf16"):
            ref16, ours16 = copy.deepcopy(ref).bfloat16(), copy.deepcopy(ours).bfloat16()
            x16, c16 = x.bfloat16(), ctx.bfloat16()
            a, b = run_ref(ref16, x16, c16), run_ours(ours16, x16, c16)
            print(f"bf16 parity: vidcore vs diffusers relative error {rel_err(a, b):.2e} "
                  f"(each vs diffusers fp32: diffusers {rel_err(out32, a):.2e}, vidcore {rel_err(out32, b):.2e})")
            variants["diffusers bf16"] = (lambda: run_ref(ref16, x16, c16), "bf16", True)
            variants["vidcore bf16"] = (lambda: run_ours(ours16, x16, c16), "bf16", False)
        print(f"\ntiming {len(variants)} variants x {args.repeats} rounds (interleaved, {args.warmup} warmup), "
              f"load average before: {loadavg()} ...", flush=True)
        times = interleaved({k: v[0] for k, v in variants.items()}, args.repeats, args.warmup, args.budget)
        print(f"load average after: {loadavg()}")
    print(f"\n## AnimateDiff UNet forward, latent {args.batch}x4x{args.frames}x{args.size}x{args.size}, "
          f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, diffusers {diffusers.__version__}\n")
    print(timing_table(variants, times))


if __name__ == "__main__":
    main()
