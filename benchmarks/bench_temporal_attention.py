"""Temporal attention at the real shapes of SVD-XT, AnimateDiff and ModelScope: three paths side by side.

q, k, v arrive in the spatial layout ``(b f) n (heads d)`` (what the q/k/v projections of a temporal
transformer produce when the block does not permute its input) and the output is wanted in that layout.

* ``a diffusers``: ``rearrange -> (b n) h f d`` + ``.contiguous()`` for q, k, v, SDPA, permute back
  + ``.contiguous()`` (three input copies, one output copy).
* ``b strided``: SDPA on a strided ``(n, h, f, d)`` view of each video (no input copies; the last
  dim is contiguous, which the flash/mem-efficient kernels accept) + one copy of the output into
  ``(b f) n (h d)``.
* ``c triton`` (CUDA only): ``vidcore.kernels.temporal_attention_triton`` reads and writes the spatial layout
  directly (``dot`` and ``fma`` variants).

For each shape: median time, achieved GB/s for the ideal traffic (read q, k, v once + write out once)
and that as a fraction of the device's copy bandwidth, measured in the same process (``dst.copy_(src)``
of a large buffer, counting read + write). Outputs of every path are checked against the reference.

    /work/venv/bin/python benchmarks/bench_temporal_attention.py --small          # CPU, < 1 min
    python benchmarks/bench_temporal_attention.py                                 # CUDA, full shapes, bf16
    python benchmarks/bench_temporal_attention.py --models svd --dtype fp16 --repeats 50
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from common import add_repo_paths, print_machine, table

add_repo_paths()

from vidcore.kernels.temporal_attention import (  # noqa: E402
    HAS_TRITON,
    temporal_attention_reference,
    temporal_attention_triton,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Shape:
    model: str
    level: str
    batch: int  # videos (CFG doubles it)
    frames: int
    h: int
    w: int
    channels: int
    heads: int

    @property
    def head_dim(self) -> int:
        return self.channels // self.heads


def model_shapes(scale: int = 1) -> dict[str, list[Shape]]:
    """Per-level temporal self-attention shapes (CFG batch 2). ``scale`` divides the latent h and w."""
    def s(model, level, f, h, w, c, heads):
        return Shape(model, level, 2, f, max(1, h // scale), max(1, w // scale), c, heads)

    return {
        # SVD-XT 1024x576, 25 frames: latents 72x128; heads (5,10,20,20) x 64
        "svd": [s("SVD-XT", "L0 72x128", 25, 72, 128, 320, 5), s("SVD-XT", "L1 36x64", 25, 36, 64, 640, 10),
                s("SVD-XT", "L2 18x32", 25, 18, 32, 1280, 20), s("SVD-XT", "mid 9x16", 25, 9, 16, 1280, 20)],
        # AnimateDiff v1-5-2 512x512, 16 frames: 8 motion-module heads -> head dims 40/80/160
        "animatediff": [s("AnimateDiff", "L0 64x64", 16, 64, 64, 320, 8), s("AnimateDiff", "L1 32x32", 16, 32, 32, 640, 8),
                        s("AnimateDiff", "L2 16x16", 16, 16, 16, 1280, 8), s("AnimateDiff", "L3 8x8", 16, 8, 8, 1280, 8)],
        # ModelScope T2V 256x256 and 320x576, 16 frames, head dim 64
        "modelscope": [s("ModelScope 256", "L0 32x32", 16, 32, 32, 320, 5), s("ModelScope 256", "L1 16x16", 16, 16, 16, 640, 10),
                       s("ModelScope 256", "L2 8x8", 16, 8, 8, 1280, 20),
                       s("ModelScope 320x576", "L0 40x72", 16, 40, 72, 320, 5),
                       s("ModelScope 320x576", "L1 20x36", 16, 20, 36, 640, 10),
                       s("ModelScope 320x576", "L2 10x18", 16, 10, 18, 1280, 20)],
    }


# ------------------------------------------------------------------------------------------------
# the paths
# ------------------------------------------------------------------------------------------------

def diffusers_path(q, k, v, f, heads):
    to = lambda t: rearrange(t, "(b f) n (h d) -> (b n) h f d", f=f, h=heads).contiguous()  # noqa: E731
    out = F.scaled_dot_product_attention(to(q), to(k), to(v))
    return rearrange(out, "(b n) h f d -> (b f) n (h d)", n=q.shape[1]).contiguous()


def strided_path(q, k, v, f, heads):
    rows, n, c = q.shape
    d = c // heads
    out = torch.empty(rows, n, c, dtype=q.dtype, device=q.device)
    for i in range(rows // f):  # one SDPA per video on a (n, h, f, d) view: no input copies
        view = lambda t: t[i * f:(i + 1) * f].view(f, n, heads, d).permute(1, 2, 0, 3)  # noqa: E731
        o = F.scaled_dot_product_attention(view(q), view(k), view(v))  # (n, h, f, d)
        out[i * f:(i + 1) * f].view(f, n, heads, d).copy_(o.permute(2, 0, 1, 3))
    return out


# ------------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------------

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fns(fns: dict, device, repeats: int, warmup: int = 2, budget_s: float | None = None,
             calls: int = 1) -> dict[str, float]:
    """Median seconds per call; variants interleaved (one sample each per round, rotating order).

    On CUDA a sample is ``calls`` back-to-back calls between two events (divided by ``calls``), so
    the GPU time is measured rather than the Python launch latency of a single small call."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    names = list(fns)
    times = {n: [] for n in names}
    start = time.perf_counter()
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            if device.type == "cuda":
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record()
                for _ in range(calls):
                    fns[n]()
                e1.record()
                e1.synchronize()
                times[n].append(e0.elapsed_time(e1) / 1000.0 / calls)
            else:
                t0 = time.perf_counter()
                fns[n]()
                times[n].append(time.perf_counter() - t0)
        if budget_s is not None and r >= 2 and time.perf_counter() - start > budget_s:
            break
    return {n: statistics.median(ts) for n, ts in times.items()}


def copy_bandwidth(device, nbytes: int, repeats: int) -> float:
    """Device copy bandwidth in GB/s (bytes read + bytes written per second)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    t = time_fns({"copy": lambda: dst.copy_(src)}, device, repeats)["copy"]
    return 2 * src.numel() * 4 / t / 1e9


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="divide latent h, w by --scale (CPU: finishes in < 1 min)")
    ap.add_argument("--scale", type=int, default=8, help="spatial divisor with --small (default 8)")
    ap.add_argument("--models", default="svd,animatediff,modelscope")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default: 30 CUDA, 5 CPU)")
    ap.add_argument("--device", default=None, help="default: cuda if available else cpu")
    ap.add_argument("--triton-variants", default="dot,fma", help="Triton variants to time on CUDA")
    ap.add_argument("--calls", type=int, default=10,
                    help="CUDA: back-to-back calls per timed sample (1 = include per-call launch latency)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-check", action="store_true", help="skip the correctness check against the reference")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    repeats = args.repeats or (30 if device.type == "cuda" else 5)
    scale = args.scale if args.small else 1
    shapes = [s for m in args.models.split(",") for s in model_shapes(scale)[m.strip()]]
    use_triton = device.type == "cuda" and HAS_TRITON
    variants = [v for v in args.triton_variants.split(",") if v] if use_triton else []

    print("## Temporal attention: diffusers rearrange path vs strided SDPA vs Triton\n")
    print_machine()
    if device.type == "cuda":
        import triton
        print(f"- gpu: {torch.cuda.get_device_name(device)}; triton {triton.__version__}")
    print(f"- device {device}, dtype {str(dtype).replace('torch.', '')}, {repeats} timed rounds "
          f"({args.calls if device.type == 'cuda' else 1} back-to-back calls per sample), "
          f"{'--small (h, w / %d)' % scale if args.small else 'full shapes'}")
    copy_bytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    bw = copy_bandwidth(device, copy_bytes, max(5, repeats // 2))
    print(f"- reference copy bandwidth (read+write, {copy_bytes >> 20} MiB buffer): {bw:.1f} GB/s\n")
    if device.type != "cuda":
        print("(no CUDA: Triton path not timed; CPU SDPA numbers show the layout-copy overhead only)\n")

    header = ("model", "level", "(b f, n, c)", "heads x d", "path", "median ms", "GB/s", "% copy BW", "vs diffusers", "max err")
    rows = []
    for s in shapes:
        gen = torch.Generator(device="cpu").manual_seed(0)
        shape = (s.batch * s.frames, s.h * s.w, s.channels)
        q, k, v = (torch.randn(shape, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
        f, heads = s.frames, s.heads
        fns = {"a diffusers": lambda: diffusers_path(q, k, v, f, heads),
               "b strided": lambda: strided_path(q, k, v, f, heads)}
        out_buf = torch.empty_like(q)
        for var in variants:
            fns[f"c triton-{var}"] = (lambda var=var: temporal_attention_triton(q, k, v, f, heads, out=out_buf, variant=var))
        errs = {}
        if not args.no_check:
            ref = temporal_attention_reference(q, k, v, f, heads).float()
            for name, fn in fns.items():
                errs[name] = (fn().float() - ref).abs().max().item()
            del ref
        med = time_fns(fns, device, repeats, budget_s=None if device.type == "cuda" else 8.0,
                       calls=args.calls if device.type == "cuda" else 1)
        nbytes = 4 * q.numel() * q.element_size()
        for name, t in med.items():
            gbs = nbytes / t / 1e9
            rows.append((s.model, s.level, "%d, %d, %d" % shape, f"{heads} x {s.head_dim}", name, f"{t * 1e3:.3f}",
                         f"{gbs:.1f}", f"{100 * gbs / bw:.0f} %", f"{med['a diffusers'] / t:.2f}x",
                         f"{errs[name]:.1e}" if name in errs else "-"))
        del q, k, v, out_buf
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(table(rows, header))
    print("\nGB/s counts the ideal traffic only (q, k, v read once + out written once); the copies of the "
          "diffusers/strided paths are extra traffic they pay on top.")


if __name__ == "__main__":
    main()
