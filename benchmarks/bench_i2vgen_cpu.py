"""Time vidcore's I2VGen-XL UNet against diffusers' I2VGenXLUNet on CPU (same saved random weights).

    /work/venv/bin/python benchmarks/bench_i2vgen_cpu.py                  # fp32 + bf16, 16 frames x 16x16 latent
    /work/venv/bin/python benchmarks/bench_i2vgen_cpu.py --dtype fp32 --repeats 6

Builds diffusers' I2VGenXLUNet from a reduced config (every parameter randomized), saves it, loads it
with ``vidcore.load_model``, prints the parity, then times one CFG forward (batch 2: noise, image
latents, CLIP image embedding, 77 text tokens, fps) per variant, interleaved in one process.

Note: diffusers' I2VGenXLUNet reads ``attention_head_dim`` as the number of heads (the real model has
64 heads of width 5/10/20/20); this reduced config has 16 heads of width 4/8/16/16.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

from bench_svd_cpu import timing_table
from common import add_repo_paths, add_timing_args, apply_threads, interleaved, loadavg, print_machine, rel_err

add_repo_paths()

CONFIG = dict(  # I2VGen-XL's layout (320/640/1280/1280, cross_attention_dim 1024) at a fifth of the width
    in_channels=4,
    out_channels=4,
    block_out_channels=(64, 128, 256, 256),
    layers_per_block=2,
    norm_num_groups=32,
    cross_attention_dim=1024,
    attention_head_dim=16,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=16, help="latent height = width")
    ap.add_argument("--batch", type=int, default=2, help="UNet batch (2 = one video with CFG)")
    ap.add_argument("--tokens", type=int, default=77)
    ap.add_argument("--dtype", choices=("all", "fp32", "bf16"), default="all")
    add_timing_args(ap, repeats=8, budget=120.0, unit="rounds")
    args = ap.parse_args()
    apply_threads(args)

    import diffusers
    from diffusers import I2VGenXLUNet

    import tiny
    import vidcore

    print("## Machine")
    print_machine()
    print(f"- command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    cfg = dict(CONFIG, sample_size=args.size)
    d = cfg["cross_attention_dim"]
    print(f"config: {cfg}")
    print(f"input: batch {args.batch}, 4 x {args.frames} frames x {args.size}x{args.size} latent (+ image latents), "
          f"image embedding {args.batch} x {d}, text {args.batch} x {args.tokens} x {d}")
    ref = tiny.randomize_(I2VGenXLUNet(**cfg), seed=0).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        ours = vidcore.load_model(tmp).eval()
    print(f"parameters: vidcore {sum(p.numel() for p in ours.parameters()) / 1e6:.2f} M, "
          f"diffusers {sum(p.numel() for p in ref.parameters()) / 1e6:.2f} M")
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, 4, args.frames, args.size, args.size)
    x, lat = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
    emb, text = torch.randn(args.batch, d, generator=g), torch.randn(args.batch, args.tokens, d, generator=g)
    t, fps = torch.tensor(501), torch.tensor([16] * args.batch)

    def run_ref(m, x, lat, emb, text):
        return m(x, t, fps=fps, image_latents=lat, image_embeddings=emb, encoder_hidden_states=text,
                 return_dict=False)[0]

    def run_ours(m, x, lat, emb, text):
        return m(x, t, fps, lat, emb, text)

    inputs32 = (x, lat, emb, text)
    variants = {}
    with torch.inference_mode():
        out32 = run_ref(ref, *inputs32)
        if args.dtype in ("all", "fp32"):
            print(f"fp32 parity: relative error {rel_err(out32, run_ours(ours, *inputs32)):.2e}")
            variants["diffusers fp32"] = (lambda: run_ref(ref, *inputs32), "fp32", True)
            variants["vidcore fp32"] = (lambda: run_ours(ours, *inputs32), "fp32", False)
        if args.dtype in ("all", "bf16"):
            ref16, ours16 = copy.deepcopy(ref).bfloat16(), copy.deepcopy(ours).bfloat16()
            inputs16 = tuple(v.bfloat16() for v in inputs32)
            a, b = run_ref(ref16, *inputs16), run_ours(ours16, *inputs16)
            print(f"bf16 parity: vidcore vs diffusers relative error {rel_err(a, b):.2e} "
                  f"(each vs diffusers fp32: diffusers {rel_err(out32, a):.2e}, vidcore {rel_err(out32, b):.2e})")
            variants["diffusers bf16"] = (lambda: run_ref(ref16, *inputs16), "bf16", True)
            variants["vidcore bf16"] = (lambda: run_ours(ours16, *inputs16), "bf16", False)
        print(f"\ntiming {len(variants)} variants x {args.repeats} rounds (interleaved, {args.warmup} warmup), "
              f"load average before: {loadavg()} ...", flush=True)
        times = interleaved({k: v[0] for k, v in variants.items()}, args.repeats, args.warmup, args.budget)
        print(f"load average after: {loadavg()}")
    print(f"\n## I2VGen-XL UNet forward, latent {args.batch}x4x{args.frames}x{args.size}x{args.size}, "
          f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, diffusers {diffusers.__version__}\n")
    print(timing_table(variants, times))


if __name__ == "__main__":
    main()
