"""Long videos (issue #16): what one AnimateDiff video costs against its length, for sliding context windows
(vidcore.sampling.windows) and, when the pipeline has it, FreeNoise, on a small random model (CPU).

    python benchmarks/bench_long_video.py                          # 16, 32, 64, 128 frames
    python benchmarks/bench_long_video.py --frames 16 32 --steps 2 --repeats 1

For each length and setup it reports the UNet passes per video (calls of the UNetMotion forward, counted by a
forward hook, and the frames those calls covered), the median wall and process CPU time of the denoising loop
over rounds in which the setups of one length take turns (``output_type="latent"``: the per-frame VAE decode
costs the same for every setup; with one torch thread the CPU time leaves out time lost to other load on a
shared machine), and the peak resident memory the call added. Memory is the process's peak RSS (Linux ``VmHWM``, reset before each call through
``/proc/self/clear_refs``): torch's CPU allocator is invisible to tracemalloc and has no memory statistics, so
the operating system's count is the one that sees the tensors. It is "n/a" where /proc is missing.

Setups are :class:`Setup` entries: a name, ``prepare(pipe, frames) -> call arguments`` (None: does not apply,
e.g. the whole video beyond the motion adapter's position table) and an optional ``cleanup(pipe)``, so another
method (FreeNoise, a cache) is one more entry; ``--free-noise`` adds ``pipe.enable_free_noise`` when it exists.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from common import (
    add_timing_args,
    apply_threads,
    interleaved,
    loadavg,
    print_machine,
    table,
)

SIZES = {  # name: (UNet / adapter block_out_channels, latent height = width)
    "tiny": ((16, 32), 4),
    "small": ((32, 64, 128), 8),
}
TABLE_HEADER = ("frames", "setup", "UNet calls", "frames through the UNet", "wall s", "CPU s", "CPU ms per frame",
                "peak RSS added (MiB)")


@dataclass
class Setup:
    name: str
    prepare: Callable[[object, int], dict | None]  # (pipe, frames) -> pipeline call arguments, None: n/a
    cleanup: Callable[[object], None] | None = None
    note: str = ""


def whole_video(pipe, frames: int) -> dict | None:
    """No windows: possible only up to the motion adapter's position table."""
    return {"context_length": frames} if frames <= pipe.motion_adapter.max_frames else None


def windows(length: int, stride: int) -> Callable[[object, int], dict]:
    return lambda pipe, frames: {"context_length": length, "context_stride": stride}


def free_noise(length: int, stride: int) -> Setup:
    """FreeNoise (another part of issue #16): windowed attention inside the motion modules, one UNet call."""
    def prepare(pipe, frames):
        pipe.enable_free_noise(context_length=length, context_stride=stride)
        return {}

    return Setup(f"FreeNoise {length}/{stride}", prepare, lambda pipe: pipe.disable_free_noise())


def default_setups(pipe, length: int, with_free_noise: bool) -> list[Setup]:
    setups = [Setup("whole video", whole_video, note="no windows"),
              Setup(f"windows {length}/{max(1, length // 4)}", windows(length, max(1, length // 4))),
              Setup(f"windows {length}/{max(1, length // 2)}", windows(length, max(1, length // 2)))]
    if with_free_noise and hasattr(pipe, "enable_free_noise"):
        setups.append(free_noise(length, max(1, length // 4)))
    return setups


def build_pipeline(size: str, max_frames: int, seed: int = 0):
    """A random AnimateDiff pipeline (vidcore modules only; no text encoder: the call gets embeddings)."""
    from vidcore.models.motion import MotionAdapter, MotionAdapterConfig
    from vidcore.models.unet2d import UNet2D, UNet2DConfig
    from vidcore.models.vae import AutoencoderKL, AutoencoderKLConfig
    from vidcore.pipelines.animatediff import AnimateDiffPipeline, animatediff_scheduler

    channels, _ = SIZES[size]
    levels = len(channels)
    unet = UNet2D(UNet2DConfig(block_out_channels=channels, layers_per_block=1, norm_num_groups=8,
                               down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
                               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
                               cross_attention_dim=32, attention_head_dim=2))
    adapter = MotionAdapter(MotionAdapterConfig(block_out_channels=channels, motion_layers_per_block=1,
                                                motion_norm_num_groups=8, motion_num_attention_heads=2,
                                                motion_max_seq_length=max_frames, use_motion_mid_block=False))
    vae = AutoencoderKL(AutoencoderKLConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                            down_block_types=("DownEncoderBlock2D",) * 2,
                                            up_block_types=("UpDecoderBlock2D",) * 2))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (unet, adapter, vae):
            for name, p in module.named_parameters():  # non-trivial values everywhere (no zero output layers)
                noise = torch.randn(p.shape, generator=g)
                p.copy_(noise / math.sqrt(math.prod(p.shape[1:])) if p.ndim >= 2 else
                        1 + 0.1 * noise if "norm" in name else 0.1 * noise)
    scheduler = animatediff_scheduler({"_class_name": "DDIMScheduler", "num_train_timesteps": 1000,
                                       "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "epsilon",
                                       "set_alpha_to_one": False})
    pipe = AnimateDiffPipeline(tokenizer=None, text_encoder=None, unet=unet.eval(), vae=vae.eval(),
                               scheduler=scheduler, motion_adapter=adapter.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


class UNetCounter:
    """Calls of the UNetMotion forward and the video frames they covered (batch x frames of each call)."""

    def __init__(self, unet):
        self.calls = self.frames = 0
        self.handle = unet.register_forward_pre_hook(self.hook)

    def hook(self, module, args):
        sample = args[0]
        self.calls += 1
        self.frames += sample.shape[0] * sample.shape[2]

    def reset(self) -> None:
        self.calls = self.frames = 0


def _vm_hwm_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_memory() -> None:
    """Hand memory that malloc keeps after frees back to the system (glibc), so that RSS before a call is what
    is live and the peak counts what the call allocates, not what an earlier call left in malloc's pools."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_added(fn) -> float | None:
    """MiB the process's peak RSS rose above its RSS before ``fn()`` (None where /proc cannot tell)."""
    _release_free_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # the peak restarts from the current RSS
        before = _vm_hwm_kib()
    except OSError:
        before = None
    fn()
    after = _vm_hwm_kib()
    return None if before is None or after is None else (after - before) / 1024


def runner(pipe, setup: Setup, frames: int, args) -> Callable[[], None] | None:
    """One video of ``frames`` frames with ``setup`` (prepared and cleaned up around the call), or None where
    the setup does not apply."""
    try:
        applies = setup.prepare(pipe, frames) is not None
    finally:
        if setup.cleanup is not None:
            setup.cleanup(pipe)
    if not applies:
        return None
    latent = SIZES[args.size][1]
    g = torch.Generator().manual_seed(0)
    embeds = {"prompt_embeds": torch.randn(1, 77, 32, generator=g),
              "negative_prompt_embeds": torch.randn(1, 77, 32, generator=g)}
    s = pipe.vae_scale_factor

    def run() -> None:
        call = setup.prepare(pipe, frames)
        try:
            pipe(num_frames=frames, height=latent * s, width=latent * s, num_inference_steps=args.steps,
                 output_type="latent", generator=torch.Generator().manual_seed(1), **embeds, **call)
        finally:
            if setup.cleanup is not None:
                setup.cleanup(pipe)

    return run


def main(argv: list[str] | None = None, setups: Callable | None = None) -> str:
    """Run the benchmark; returns the markdown table. ``setups(pipe) -> list[Setup]`` replaces the default
    ones (whole video, windows of ``--context-length`` with strides of a quarter and a half, FreeNoise)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--context-length", type=int, default=16)
    ap.add_argument("--max-frames", type=int, default=32, help="the motion adapter's motion_max_seq_length")
    ap.add_argument("--free-noise", action="store_true", help="also FreeNoise, when the pipeline has it")
    add_timing_args(ap, repeats=3, budget=0.0, unit="calls")
    args = ap.parse_args(argv)
    apply_threads(args)
    print("## Machine")
    print_machine()
    print(f"- command: {' '.join([Path(sys.executable).name] + (sys.argv if argv is None else [__file__, *argv]))}")
    pipe = build_pipeline(args.size, args.max_frames)
    channels, latent = SIZES[args.size]
    print(f"model: UNet2D + motion adapter, block_out_channels {channels}, {args.max_frames} frame positions; "
          f"latents {latent}x{latent}, {args.steps} DDIM steps, classifier-free guidance (batch 2)")
    counter = UNetCounter(pipe.unet)
    chosen = setups(pipe) if setups is not None else default_setups(pipe, args.context_length, args.free_noise)
    rows = []
    for frames in args.frames:
        runs = {setup.name: runner(pipe, setup, frames, args) for setup in chosen}
        counts = {}
        for name, run in runs.items():  # passes and memory from one call each (after any warm-up)
            if run is None:
                continue
            for _ in range(args.warmup):
                run()
            counter.reset()
            peak = peak_rss_added(run)
            counts[name] = (counter.calls, counter.frames, peak)
        timed = {name: run for name, run in runs.items() if run is not None}
        timings = interleaved(timed, max(1, args.repeats), warmup=0, budget_s=args.budget or None)
        for name in runs:
            if name not in timed:
                rows.append((frames, name, *["n/a"] * (len(TABLE_HEADER) - 2)))
            else:
                calls, covered, peak = counts[name]
                wall, cpu = statistics.median(timings.wall[name]), statistics.median(timings.cpu[name])
                rows.append((frames, name, calls, covered, f"{wall:.3f}", f"{cpu:.3f}", f"{1000 * cpu / frames:.1f}",
                             "n/a" if peak is None else f"{peak:.1f}"))
            print("| " + " | ".join(str(c) for c in rows[-1]) + " |", flush=True)
    out = table(rows, TABLE_HEADER)
    print()
    print(out)
    print(f"\nload average after: {loadavg()}")
    return out


if __name__ == "__main__":
    main()
