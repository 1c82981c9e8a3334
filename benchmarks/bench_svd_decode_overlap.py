"""SVD ``decode_overlap`` (issue #18): seam jumps, decode time and peak memory of the temporal-VAE decode with
overlapping chunks against diffusers' disjoint ones (CPU).

A random temporal VAE at half SVD's width (``bench_svd_cpu.VAE_CONFIG``) decodes a latent video that changes
slowly and evenly over ``--frames`` frames (a linear blend of two random latents), so every frame-to-frame step
of the true video is about the same; chunk borders show as jumps. For each overlap, ``decode_chunk_size``
frames per decoder call:

* jump at borders / inside: mean absolute frame-to-frame difference (pixels in [-1, 1]) at the frames where the
  disjoint chunks meet, over the mean difference elsewhere (1.0 = no visible seam);
* max / median jump over the whole video;
* decode time (median of ``--repeats``) and peak memory: a fresh subprocess per overlap, glibc's mmap threshold
  lowered so freed buffers return to the OS, ``/proc/self/clear_refs`` resetting the high-water mark after a
  warm-up; peak = VmHWM after the decode - VmRSS before it (as bench_svd_cpu.py measures).

    python benchmarks/bench_svd_decode_overlap.py                     # 25 frames, chunks of 8, ~3 min
    python benchmarks/bench_svd_decode_overlap.py --frames 9 --chunk 4 --overlaps 0,1 --size 4 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import add_repo_paths, loadavg, print_machine, table

add_repo_paths()

VAE_CONFIG = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                  block_out_channels=(64, 128, 256, 256), layers_per_block=2, latent_channels=4, scaling_factor=0.18215)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def latent_video(frames: int, size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, size, size, generator=g), torch.randn(4, size, size, generator=g)
    t = torch.linspace(0, 1, frames).view(-1, 1, 1, 1)
    return (1 - t) * a + t * b  # f 4 h w


def child(args) -> None:
    """One overlap in a fresh process: prints a JSON line (jumps, time, peak)."""
    import vidcore
    from vidcore.pipelines.temporal_decode import decode_overlapping

    torch.set_num_threads(args.threads)
    vae = vidcore.load_model(args.folder).eval()
    z = latent_video(args.frames, args.size)

    def decode():
        dec = lambda part: vae.decode(part, num_frames=part.shape[0])  # noqa: E731
        if args.overlap == 0:
            return torch.cat([dec(part) for part in z.split(args.chunk)])
        return decode_overlapping(dec, z, args.chunk, args.overlap)

    with torch.inference_mode():
        vae.decode(z[:1], num_frames=1)
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        frames = decode()
        peak = _status_kib("VmHWM")
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            decode()
            times.append(time.perf_counter() - t0)
    jumps = (frames[1:] - frames[:-1]).abs().mean(dim=(1, 2, 3))  # jumps[t - 1]: frame t - 1 -> t
    borders = [t for t in range(args.chunk, args.frames, args.chunk)]  # where disjoint chunks meet
    inside = [t for t in range(1, args.frames) if t not in borders]
    ratio = (statistics.mean(float(jumps[t - 1]) for t in borders) / statistics.mean(float(jumps[t - 1]) for t in inside)
             if borders and inside else float("nan"))
    print(json.dumps(dict(overlap=args.overlap, border_ratio=ratio,
                          max_over_median=float(jumps.max() / jumps.median()), median_s=statistics.median(times),
                          peak_mib=(peak - before) / 1024)))


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--chunk", type=int, default=8, help="decode_chunk_size")
    ap.add_argument("--overlaps", default="0,1,2,4")
    ap.add_argument("--size", type=int, default=8, help="latent height and width (pixels: 8x)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tiny", action="store_true", help="a 2-level VAE (for the CPU test)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--overlap", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return ""
    from diffusers import AutoencoderKLTemporalDecoder

    import tiny

    print("## Machine")
    print_machine()
    config = tiny.tiny_svd_vae_config() if args.tiny else VAE_CONFIG
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tiny.randomize_(AutoencoderKLTemporalDecoder(**config), seed=0).eval().save_pretrained(tmp)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        for overlap in (int(o) for o in args.overlaps.split(",")):
            cmd = [sys.executable, __file__, "--child", "--folder", tmp, "--overlap", str(overlap), "--frames",
                   str(args.frames), "--chunk", str(args.chunk), "--size", str(args.size), "--repeats",
                   str(args.repeats), "--threads", str(args.threads)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            rows.append((overlap, f"{r['border_ratio']:.2f}", f"{r['max_over_median']:.2f}", f"{r['median_s']:.2f}",
                         f"{r['peak_mib']:.0f}"))
            print(rows[-1], flush=True)
    px = args.size * (2 if args.tiny else 8)
    print(f"\n{args.frames} latents 4x{args.size}x{args.size} -> frames 3x{px}x{px}, decode_chunk_size {args.chunk}, "
          f"float32, {args.threads} thread(s); load average {loadavg()}\n")
    result = table(rows, ("decode_overlap", "jump at borders / inside", "max / median jump", "decode s (median)",
                          "peak RSS growth MiB"))
    print(result)
    return result


if __name__ == "__main__":
    main()
