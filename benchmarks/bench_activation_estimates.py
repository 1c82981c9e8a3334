"""The activation estimates of ``set_guidance_batching("auto")`` and ``decode_chunk_size="auto"``
(vidcore.sampling.memory) against measured CPU peaks.

Each case runs in a fresh subprocess with MALLOC_MMAP_THRESHOLD_=65536 (glibc maps every large buffer separately
and returns it on free), warms up on a tiny input, resets the peak RSS (writes "5" to /proc/self/clear_refs: VmHWM
:= VmRSS), runs once, and reports VmHWM after - VmRSS before (weights and inputs excluded, the output included):
the method of benchmarks/RESULTS.md "SVD VAE decode: time and peak memory". Models are random vidcore modules
(float32, 1 thread): a 2-level UNet3D (64/128 channels) for the UNet rule, the SD AutoencoderKL at half width
(64/128/256/256) for the decoder rule.

    python benchmarks/bench_activation_estimates.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from common import add_repo_paths, print_machine, table

add_repo_paths()

UNET_CASES = [(1, 32), (2, 32), (1, 48), (2, 48)]  # (batch, latent side), 4 frames
VAE_CASES = [1, 4]  # frames per decoder call, 16 x 16 latents -> 128 x 128 frames


def _peak(run, warm) -> float:
    def status(key):
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))

    with torch.no_grad():
        warm()
        before = status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        run()
        return (status("VmHWM") - before) * 1024


def measure_unet(batch: int, side: int) -> dict:
    from vidcore.models.unet3d import UNet3D, UNet3DConfig
    from vidcore.sampling.memory import unet_activation_bytes

    import tiny

    config = tiny.tiny_unet3d_config(block_out_channels=(64, 128), norm_num_groups=16, attention_head_dim=8)
    unet = UNet3D(UNet3DConfig.from_diffusers_config(config)).eval()
    x = torch.randn(batch, 4, 4, side, side)
    ctx = torch.randn(batch, 7, config["cross_attention_dim"])
    peak = _peak(lambda: unet(x, 10, ctx), lambda: unet(x[:1, :, :1, :8, :8], 10, ctx[:1]))
    return dict(peak=peak, estimate=unet_activation_bytes(x, 4, config["block_out_channels"][0]))


def measure_vae(frames: int) -> dict:
    from vidcore.models.vae import AutoencoderKL, AutoencoderKLConfig
    from vidcore.sampling.memory import decoded_frame_bytes

    config = AutoencoderKLConfig(block_out_channels=(64, 128, 256, 256))
    vae = AutoencoderKL(config).eval()
    z = torch.randn(frames, 4, 16, 16)
    peak = _peak(lambda: vae.decode(z), lambda: vae.decode(z[:1, :, :4, :4]))
    return dict(peak=peak, estimate=frames * decoded_frame_bytes(16, 16, 8, config.block_out_channels, 4))


def child(kind: str, arg: str) -> None:
    torch.set_num_threads(1)
    args = [int(a) for a in arg.split(",")]
    print(json.dumps(measure_unet(*args) if kind == "unet" else measure_vae(*args)))


def run(kind: str, *args) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, __file__, "--child", kind, ",".join(map(str, args))], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    print_machine()
    mib = 2**20
    rows = []
    for batch, side in UNET_CASES:
        r = run("unet", batch, side)
        rows.append((f"UNet3D 64/128, batch {batch}, 4 x {side} x {side} latents", f"{r['peak'] / mib:.1f}",
                     f"{r['estimate'] / mib:.1f}", f"{r['peak'] / r['estimate']:.2f}"))
    for frames in VAE_CASES:
        r = run("vae", frames)
        rows.append((f"AutoencoderKL 64/128/256/256, {frames} frame(s) 128 x 128", f"{r['peak'] / mib:.1f}",
                     f"{r['estimate'] / mib:.1f}", f"{r['peak'] / r['estimate']:.2f}"))
    print(table(rows, ("case", "measured peak MiB", "estimate MiB", "measured / estimate")))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3])
    else:
        main()
