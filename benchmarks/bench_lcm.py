"""Few-step sampling on CPU: one AnimateDiff video with LCMScheduler (4 steps, the AnimateLCM recipe) against the
same video with AnimateDiff's recommended DDIM (25 steps), same vidcore pipeline otherwise.

    /work/wt-lcm/.venv/bin/python benchmarks/bench_lcm.py --repeats 3 --budget 300

Builds a small random SD1.5-layout model + motion adapter (tests/tiny_animatediff.py, four levels 32-128 wide,
v2-style adapter with a mid-block module and 32 positions), loads it with vidcore, and times whole pipeline
calls (prompt encoding, the denoising loop, VAE decode; ``output_type="np"``), interleaved round by round.
Both samplers use the same ``guidance_scale`` (default 1.5, inside the LCM recipe's 1-2; any value > 1 runs
classifier-free guidance, i.e. a batch of 2 per UNet call, so DDIM's usual 7.5 costs the same). Weights are
random, so this measures time only, not quality. On a shared machine the CPU-time ratio is the steadiest. ``--tiny`` is the smallest setting (the test runs it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when imported by a test
from common import (
    add_repo_paths,
    add_timing_args,
    apply_threads,
    interleaved,
    loadavg,
    print_machine,
    table,
)

add_repo_paths()

UNET = {"block_out_channels": (32, 64, 128, 128), "layers_per_block": 2, "attention_head_dim": 4,
        "norm_num_groups": 16, "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3}
ADAPTER = {"block_out_channels": (32, 64, 128, 128), "motion_norm_num_groups": 16, "motion_max_seq_length": 32,
           "use_motion_mid_block": True}


def build(root: Path, tiny_model: bool):
    """The vidcore AnimateDiffPipeline on a random model saved under ``root``, and AnimateDiff's recommended
    DDIM config (dict) to build the samplers from."""
    import tiny_animatediff

    import vidcore
    from vidcore.pipelines.animatediff import animatediff_scheduler

    overrides = ({}, {}) if tiny_model else (UNET, ADAPTER)
    ad = tiny_animatediff.build_tiny_animatediff(root, unet_overrides=overrides[0], adapter_overrides=overrides[1])
    pipe = vidcore.AnimateDiffPipeline.from_pretrained(ad.sd, motion_adapter=ad.adapter)
    pipe.set_progress_bar_config(disable=True)
    ddim = animatediff_scheduler(ad.sd / "scheduler" / "scheduler_config.json")
    return pipe, ddim.to_diffusers_config()


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=64, help="video height = width in pixels (latent: size / 8)")
    ap.add_argument("--guidance", type=float, default=1.5)
    ap.add_argument("--ddim-steps", type=int, default=25)
    ap.add_argument("--lcm-steps", type=int, nargs="+", default=[4, 8], help="one row per value")
    ap.add_argument("--tiny", action="store_true", help="the test harness's 2-level model, 8x8 video, 2 frames")
    add_timing_args(ap, repeats=3, budget=300.0, unit="rounds")
    args = ap.parse_args(argv)
    if args.tiny:
        args.frames, args.size = 2, 8
    apply_threads(args)
    print("## Machine")
    print_machine()
    print(f"- command: {' '.join([Path(sys.executable).name, 'benchmarks/bench_lcm.py'] + (argv or sys.argv[1:]))}")

    from vidcore.schedulers import DDIMScheduler, LCMScheduler

    with tempfile.TemporaryDirectory() as tmp:
        pipe, ddim_config = build(Path(tmp), args.tiny)
    samplers = {f"DDIM {args.ddim_steps} steps": (DDIMScheduler.from_config(ddim_config), args.ddim_steps)}
    for n in args.lcm_steps:  # the AnimateLCM recipe: LCM on linear betas (the DDIM config's)
        samplers[f"LCM {n} steps"] = (LCMScheduler.from_config(ddim_config, beta_schedule="linear"), n)
    call = {"prompt": "a rocket launching", "negative_prompt": "blurry", "num_frames": args.frames,
            "height": args.size, "width": args.size, "guidance_scale": args.guidance, "output_type": "np"}
    print(f"UNet levels {pipe.unet.unet.config.block_out_channels}, video {args.frames} frames x {args.size}x"
          f"{args.size}, guidance_scale {args.guidance}, {torch.get_num_threads()} torch thread(s)")

    def run(scheduler, steps):
        def fn():
            pipe.scheduler = scheduler
            return pipe(num_inference_steps=steps, generator=torch.Generator().manual_seed(0), **call).frames
        return fn

    fns = {name: run(*s) for name, s in samplers.items()}
    print(f"timing {len(fns)} variants x {args.repeats} rounds (interleaved, {args.warmup} warmup), "
          f"load average before: {loadavg()} ...", flush=True)
    times = interleaved(fns, args.repeats, args.warmup, args.budget)
    print(f"load average after: {loadavg()}")
    base = next(iter(samplers))
    rows = []
    for name, (_, steps) in samplers.items():
        wall = sorted(times.wall[name])
        med = statistics.median(wall)
        rows.append((name, steps, f"{med:.2f}", f"{wall[0]:.2f}-{wall[-1]:.2f}",
                     f"{statistics.median(times.cpu[name]):.2f}", len(wall),
                     f"{1000 * med / steps:.0f}", f"{statistics.median(times.wall[base]) / med:.2f}x",
                     f"{1 / times.paired_ratio(name, base):.2f}x",
                     f"{statistics.median(times.cpu[base]) / statistics.median(times.cpu[name]):.2f}x"))
    header = ("sampler", "steps", "median s", "min-max s", "median CPU s", "n", "ms per step (incl. fixed cost)",
              f"speed vs {base} (ratio of medians)", "speed (median paired ratio)", "speed (CPU time)")
    out = table(rows, header)
    print(f"\n## AnimateDiff video, {args.frames} frames {args.size}x{args.size}, vidcore, CPU\n")
    print(out)
    return out


if __name__ == "__main__":
    main()
