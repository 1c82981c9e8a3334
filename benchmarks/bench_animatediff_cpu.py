"""AnimateDiff UNet forward on CPU: vidcore ``UNetMotion`` vs diffusers ``UNetMotionModel``, same saved weights.

    /work/venv/bin/python benchmarks/bench_animatediff_cpu.py --repeats 8 --budget 120

Builds diffusers' ``UNet2DConditionModel`` and ``MotionAdapter`` from a reduced SD1.5 / v2-adapter config
(every parameter randomized), saves both, loads them with ``vidcore.load_model`` and wraps them in
``UNetMotion``; the reference is ``UNetMotionModel.from_unet2d(unet, adapter)``. Prints the parity, then
times one CFG forward (batch 2, 77 text tokens; diffusers gets the text repeated per frame, as its pipeline
passes it) of each variant, interleaved in one process, in float32 and bfloat16.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

from common import add_repo_paths, add_timing_args, apply_threads, interleaved, loadavg, print_machine, rel_err

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


def main() -> None:
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
