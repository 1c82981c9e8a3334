"""Stable Video Diffusion on CPU: vidcore vs diffusers, same saved random weights.

    .venv/bin/python benchmarks/bench_svd_cpu.py pipeline  # whole pipeline, 8 frames 64x64, 10 steps, float32
    .venv/bin/python benchmarks/bench_svd_cpu.py pipeline --frames 16 --height 128 --width 128 --dtype bfloat16
    /work/venv/bin/python benchmarks/bench_svd_cpu.py unet     # UNet forward, fp32 + bf16, interleaved
    /work/venv/bin/python benchmarks/bench_svd_cpu.py vae      # temporal-VAE decode: time + peak RSS per chunk size

pipeline: builds a random StableVideoDiffusionPipeline with ``tests/tiny.py`` at larger-than-test sizes (UNet
32/64/128/128, heads 2/4/8/8, cross_attention_dim 64; temporal VAE 32/32/64/64, spatial factor 8; CLIP vision
encoder width 32), loads ``vidcore.StableVideoDiffusionPipeline.from_pretrained`` from the saved folder, casts
both to ``--dtype`` (float32 | bfloat16), checks the frames agree (seed 0, the same 128x128 random image), then
times full calls (CLIP image encoding, VAE encoding of the image, Euler loop with per-frame CFG, temporal-VAE
decode of all frames at once, ``output_type="np"``) alternately in one process. Flags: --frames --height --width
--steps --dtype --repeats --warmup --budget --threads. Speed = diffusers time / vidcore time (> 1: vidcore faster).

unet: builds diffusers' UNetSpatioTemporalConditionModel from a reduced SVD config (every parameter
randomized), saves it, loads it with ``vidcore.load_model``, prints the parity, then times one CFG
forward (batch 2, one image-embedding token, added_time_ids) of each variant, interleaved in one process.
The context is one token, as in SVD: vidcore's attention then skips q/k and the scores (softmax over
one key is 1, so the output is v projected), diffusers computes them.

vae: builds diffusers' AutoencoderKLTemporalDecoder from a reduced config, saves it, and decodes
``--frames`` latents the way both pipelines do (``decode_chunk_size`` frames per decoder call,
outputs concatenated). Every (library, chunk size) measurement runs in a fresh subprocess:
  - environment MALLOC_MMAP_THRESHOLD_=65536 so glibc maps every large buffer separately and gives it
    back on free (no heap retention hiding or inflating the peak);
  - load the model and the latents, warm up with a one-frame decode, then reset the peak RSS
    (write "5" to /proc/self/clear_refs, which sets VmHWM to the current VmRSS);
  - peak = VmHWM after the decode - VmRSS before it (weights, input and imports excluded; the
    decoded output is included, as it is part of what a decode holds at its end);
  - time: median of ``--repeats`` decodes after that first (measured) one.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import (DTYPES, add_pipeline_args, add_repo_paths, apply_threads, interleaved, loadavg, median_ms,
                    print_machine, rel_err, table, time_pipelines)

add_repo_paths()

UNET_CONFIG = dict(  # SVD's layout (320/640/1280/1280, head dim 64) at a fifth of the width, head dim 32
    block_out_channels=(64, 128, 256, 256),
    num_attention_heads=(2, 4, 8, 8),
    cross_attention_dim=1024,
    layers_per_block=2,
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=768,
    in_channels=8,
    out_channels=4,
    num_frames=14,
)
VAE_CONFIG = dict(  # SVD's VAE (128/256/512/512, 4 levels -> x8) at half the width
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    block_out_channels=(64, 128, 256, 256),
    layers_per_block=2,
    latent_channels=4,
    scaling_factor=0.18215,
)


def bench_unet(args) -> None:
    import diffusers
    from diffusers import UNetSpatioTemporalConditionModel

    import tiny
    import vidcore

    cfg = dict(UNET_CONFIG, sample_size=args.size)
    print(f"config: {cfg}")
    print(f"input: batch {args.batch}, {args.frames} frames x 8 x {args.size}x{args.size} latent, "
          f"context {args.batch} x 1 x {cfg['cross_attention_dim']}, added_time_ids {args.batch} x 3")
    ref = tiny.randomize_(UNetSpatioTemporalConditionModel(**cfg), seed=0).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        ours = vidcore.load_model(tmp).eval()
    print(f"parameters: vidcore {sum(p.numel() for p in ours.parameters()) / 1e6:.2f} M, "
          f"diffusers {sum(p.numel() for p in ref.parameters()) / 1e6:.2f} M")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.frames, 8, args.size, args.size, generator=g)
    ctx = torch.randn(args.batch, 1, cfg["cross_attention_dim"], generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.02]] * args.batch)
    t = torch.tensor(0.7)  # SVD feeds 0.25 * log(sigma)

    def run_ref(m, x, c, i):
        return m(x, t, c, i, return_dict=False)[0]

    def run_ours(m, x, c, i):
        return m(x, t, c, i)

    variants = {}
    with torch.inference_mode():
        if args.dtype in ("all", "fp32"):
            print(f"fp32 parity: relative error {rel_err(run_ref(ref, x, ctx, ids), run_ours(ours, x, ctx, ids)):.2e}")
            variants["diffusers fp32"] = (lambda: run_ref(ref, x, ctx, ids), "fp32", True)
            variants["vidcore fp32"] = (lambda: run_ours(ours, x, ctx, ids), "fp32", False)
        if args.dtype in ("all", "bf16"):
            ref16, ours16 = copy.deepcopy(ref).bfloat16(), copy.deepcopy(ours).bfloat16()
            x16, c16, i16 = x.bfloat16(), ctx.bfloat16(), ids.bfloat16()
            out32 = run_ref(ref, x, ctx, ids)
            a, b = run_ref(ref16, x16, c16, i16), run_ours(ours16, x16, c16, i16)
            print(f"bf16 parity: vidcore vs diffusers relative error {rel_err(a, b):.2e} "
                  f"(each vs diffusers fp32: diffusers {rel_err(out32, a):.2e}, vidcore {rel_err(out32, b):.2e})")
            variants["diffusers bf16"] = (lambda: run_ref(ref16, x16, c16, i16), "bf16", True)
            variants["vidcore bf16"] = (lambda: run_ours(ours16, x16, c16, i16), "bf16", False)
        print(f"\ntiming {len(variants)} variants x {args.repeats} rounds (interleaved, {args.warmup} warmup), "
              f"load average before: {loadavg()} ...", flush=True)
        times = interleaved({k: v[0] for k, v in variants.items()}, args.repeats, args.warmup, args.budget)
        print(f"load average after: {loadavg()}")
    print(f"\n## SVD UNet forward, latent {args.batch}x{args.frames}x8x{args.size}x{args.size}, "
          f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, diffusers {diffusers.__version__}\n")
    print(timing_table(variants, times))


def timing_table(variants, times) -> str:
    base = {v[1]: k for k, v in variants.items() if v[2]}
    rows = []
    for name, (_, dt, _) in variants.items():
        b = base[dt]
        m, ts = median_ms(times.wall[name]), sorted(1000 * s for s in times.wall[name])
        rows.append((name, f"{m:.0f}", f"{ts[0]:.0f}-{ts[-1]:.0f}", f"{median_ms(times.cpu[name]):.0f}", len(ts),
                     f"{median_ms(times.wall[b]) / m:.2f}x", f"{1 / times.paired_ratio(name, b):.2f}x",
                     f"{median_ms(times.cpu[b]) / median_ms(times.cpu[name]):.2f}x"))
    return table(rows, ("variant", "median ms", "min-max ms", "median CPU ms", "n", "speed vs diffusers same dtype "
                        "(ratio of medians)", "speed (median paired ratio)", "speed (CPU time)"))


# --------------------------------------------------------------------------- VAE decode


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def vae_child(args) -> None:
    """One measurement (run in a subprocess): prints a JSON line."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    lib, folder, chunk = args.lib, args.folder, args.chunk
    if lib == "diffusers":
        from diffusers import AutoencoderKLTemporalDecoder

        vae = AutoencoderKLTemporalDecoder.from_pretrained(folder).eval()
        dec = lambda z, n: vae.decode(z, num_frames=n).sample  # noqa: E731
    else:
        import vidcore

        vae = vidcore.load_model(folder).eval()
        dec = lambda z, n: vae.decode(z, num_frames=n)  # noqa: E731
    z = torch.randn(args.frames, 4, args.size, args.size, generator=torch.Generator().manual_seed(0))

    def decode():  # the pipelines' decode_latents loop
        return torch.cat([dec(part, part.shape[0]) for part in z.split(chunk)])

    with torch.inference_mode():
        dec(z[:1], 1)  # warm-up (kernel selection, lazy init) at the smallest size
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before, hwm0 = _status_kib("VmRSS"), _status_kib("VmHWM")
        t0 = time.perf_counter()
        out = decode()
        first = time.perf_counter() - t0
        peak = _status_kib("VmHWM")
        out_bytes = out.numel() * out.element_size()
        del out
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            decode()
            times.append(time.perf_counter() - t0)
    print(json.dumps(dict(lib=lib, chunk=chunk, peak_mib=(peak - before) / 1024, reset_ok=hwm0 - before < 4096,
                          first_s=first, median_s=statistics.median(times) if times else first,
                          out_mib=out_bytes / 2**20)))


def bench_vae(args) -> None:
    import diffusers
    from diffusers import AutoencoderKLTemporalDecoder

    import tiny

    chunks = [int(c) for c in args.chunks.split(",")]
    chunks = [args.frames if c == 0 else c for c in chunks]
    cfg = dict(VAE_CONFIG)
    print(f"config: {cfg}")
    px = args.size * 8
    print(f"decode: {args.frames} latents 4x{args.size}x{args.size} -> {args.frames} frames 3x{px}x{px}, float32")
    with tempfile.TemporaryDirectory() as tmp:
        ref = tiny.randomize_(AutoencoderKLTemporalDecoder(**cfg), seed=0).eval()
        ref.save_pretrained(tmp)
        import vidcore

        ours = vidcore.load_model(tmp).eval()
        z = torch.randn(args.frames, 4, args.size, args.size, generator=torch.Generator().manual_seed(0))
        check = min(chunks)
        with torch.inference_mode():
            a = torch.cat([ref.decode(p, num_frames=p.shape[0]).sample for p in z.split(check)])
            b = torch.cat([ours.decode(p, num_frames=p.shape[0]) for p in z.split(check)])
        print(f"fp32 parity (decode_chunk_size {check}): relative error {rel_err(a, b):.2e}")
        del ref, ours, a, b
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        print(f"\nload average before: {loadavg()}", flush=True)
        results = []
        for r in range(args.rounds):  # interleaved: every (lib, chunk) once per round
            for chunk in chunks:
                for lib in (("diffusers", "vidcore") if (r + chunk) % 2 else ("vidcore", "diffusers")):
                    cmd = [sys.executable, __file__, "vae-child", "--lib", lib, "--folder", tmp, "--chunk", str(chunk),
                           "--frames", str(args.frames), "--size", str(args.size), "--repeats", str(args.repeats),
                           "--threads", str(args.threads)]
                    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                    results.append(json.loads(res.stdout.strip().splitlines()[-1]))
                    print(results[-1], flush=True)
        print(f"load average after: {loadavg()}")
    assert all(r["reset_ok"] for r in results), "VmHWM reset did not work"
    agg = {}
    for r in results:
        agg.setdefault((r["lib"], r["chunk"]), []).append(r)
    base = statistics.median(r["peak_mib"] for r in agg[("diffusers", args.frames)])
    base_t = statistics.median(r["median_s"] for r in agg[("diffusers", args.frames)])
    rows = []
    for chunk in chunks:
        for lib in ("diffusers", "vidcore"):
            rs = agg[(lib, chunk)]
            peak = statistics.median(r["peak_mib"] for r in rs)
            t = statistics.median(r["median_s"] for r in rs)
            label = f"{chunk}" + (" (all; diffusers' default)" if chunk == args.frames else "")
            rows.append((lib, label, f"{peak:.0f}", f"{min(r['peak_mib'] for r in rs):.0f}-"
                         f"{max(r['peak_mib'] for r in rs):.0f}", f"{peak / base:.2f}", f"{1000 * t:.0f}",
                         f"{t / base_t:.2f}", len(rs)))
    threads = args.threads or torch.get_num_threads()
    print(f"\n## SVD VAE decode, {args.frames} frames {px}x{px}, {threads} torch thread(s), torch {torch.__version__}, "
          f"diffusers {diffusers.__version__}; decoded output {results[0]['out_mib']:.2f} MiB\n")
    print(table(rows, ("library", "decode_chunk_size", "peak RSS growth MiB (median)", "min-max MiB",
                       "peak vs diffusers default", "decode ms (median)", "time vs diffusers default", "runs")))


# --------------------------------------------------------------------------- whole pipeline

PIPE_UNET = dict(  # SVD's layout at a tenth of the width (as bench_t2v_pipeline_cpu.py's UNet)
    block_out_channels=(32, 64, 128, 128),
    down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
    up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
    num_attention_heads=(2, 4, 8, 8),
    cross_attention_dim=64,
    layers_per_block=2,
    addition_time_embed_dim=32,
    projection_class_embeddings_input_dim=96,
    num_frames=14,
)
PIPE_VAE = dict(block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                layers_per_block=1)


def bench_pipeline(args) -> None:
    import numpy as np
    from PIL import Image

    import tiny
    import vidcore

    print(f"UNet overrides: {PIPE_UNET}\nVAE overrides: {PIPE_VAE}")
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        ref = tiny.build_tiny_svd_pipeline(folder, unet_overrides=PIPE_UNET, vae_overrides=PIPE_VAE)
        t1 = time.perf_counter()
        ours = vidcore.StableVideoDiffusionPipeline.from_pretrained(folder)
        t2 = time.perf_counter()
    ref.set_progress_bar_config(disable=True)
    ours.set_progress_bar_config(disable=True)
    ref.to(DTYPES[args.dtype])
    ours.to(dtype=DTYPES[args.dtype])
    print(f"built + saved diffusers pipeline in {t1 - t0:.1f} s; vidcore from_pretrained {t2 - t1:.2f} s")
    print(f"UNet parameters: {sum(p.numel() for p in ref.unet.parameters()) / 1e6:.2f} M, "
          f"VAE {sum(p.numel() for p in ref.vae.parameters()) / 1e6:.2f} M")
    pixels = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    kwargs = dict(height=args.height, width=args.width, num_frames=args.frames, num_inference_steps=args.steps,
                  output_type="np")

    def run_ref():
        return ref(image, generator=torch.Generator().manual_seed(0), **kwargs).frames

    def run_ours():
        return ours(image, generator=torch.Generator().manual_seed(0), **kwargs).frames

    time_pipelines("SVD pipeline", run_ref, run_ours, args)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "pipeline":
        ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("what", choices=("pipeline",))
        add_pipeline_args(ap)
        args = ap.parse_args()
        apply_threads(args)
        print("## Machine")
        print_machine()
        print(f"- command: {' '.join([Path(sys.executable).name] + sys.argv)}")
        return bench_pipeline(args)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("pipeline", "unet", "vae", "vae-child"))
    ap.add_argument("--frames", type=int, default=14)
    ap.add_argument("--size", type=int, default=16, help="latent height = width")
    ap.add_argument("--batch", type=int, default=2, help="UNet batch (2 = one video with CFG)")
    ap.add_argument("--dtype", choices=("all", "fp32", "bf16"), default="all")
    ap.add_argument("--repeats", type=int, default=8, help="unet: timing rounds; vae: timed decodes per subprocess")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--budget", type=float, default=120.0, help="unet: stop timing rounds after this many seconds")
    ap.add_argument("--chunks", default="0,2,4,8", help="vae: decode_chunk_size values, 0 = all frames")
    ap.add_argument("--rounds", type=int, default=2, help="vae: subprocess measurements per (library, chunk)")
    ap.add_argument("--lib", help=argparse.SUPPRESS)  # vae-child only
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--chunk", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads; 0 = torch's default")
    args = ap.parse_args()
    if args.what == "vae-child":
        return vae_child(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    print("## Machine")
    print_machine()
    print(f"- command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    bench_unet(args) if args.what == "unet" else bench_vae(args)


if __name__ == "__main__":
    main()
