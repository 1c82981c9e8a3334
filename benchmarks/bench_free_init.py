"""FreeInit's cost multiplier (issue #16): one AnimateDiff video plain and with FreeInit (2 and 3 rounds, and
3 rounds coarse-to-fine), vidcore beside diffusers' ``enable_free_init`` on the same small random model in one
process (CPU). Reports UNet passes counted by a forward hook, median wall time over interleaved rounds, the
multiplier against the plain run, and vidcore's time over diffusers' for the same setting.

    python benchmarks/bench_free_init.py                  # ~3 min on 2 cores
    python benchmarks/bench_free_init.py --frames 8 --steps 4 --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from common import add_repo_paths, add_timing_args, apply_threads, interleaved, print_machine, table

add_repo_paths()

import tiny_animatediff  # noqa: E402

import vidcore  # noqa: E402
from vidcore.pipelines.animatediff import animatediff_scheduler  # noqa: E402

SETTINGS = {  # label -> enable_free_init arguments (None: off)
    "plain": None,
    "FreeInit 2": {"num_iters": 2},
    "FreeInit 3": {"num_iters": 3},
    "FreeInit 3 fast": {"num_iters": 3, "use_fast_sampling": True},
}


def build(root: Path):
    setup = tiny_animatediff.build_tiny_animatediff(root)
    scheduler = animatediff_scheduler(setup.sd / "scheduler" / "scheduler_config.json")
    ours = vidcore.AnimateDiffPipeline.from_pretrained(setup.sd, motion_adapter=setup.adapter, scheduler=scheduler)
    ours.set_progress_bar_config(disable=True)
    setup.pipe.set_progress_bar_config(disable=True)
    return setup.pipe, ours


def runner(pipe, settings, call):
    def run():
        if settings is None:
            pipe.disable_free_init()
        else:
            pipe.enable_free_init(**settings)
        return pipe(generator=torch.Generator().manual_seed(0), **call)
    return run


def unet_passes(pipe, run) -> int:
    calls = []
    hook = pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        run()
    finally:
        hook.remove()
    return len(calls)


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=32, help="height and width in pixels")
    ap.add_argument("--steps", type=int, default=10)
    add_timing_args(ap, repeats=3, budget=240.0)
    args = ap.parse_args(argv)
    apply_threads(args)
    print("## Machine")
    print_machine()
    call = {"prompt": "a cat walking", "num_frames": args.frames, "height": args.size, "width": args.size,
            "num_inference_steps": args.steps, "output_type": "latent"}
    with tempfile.TemporaryDirectory() as tmp:
        ref, ours = build(Path(tmp))
        fns, passes = {}, {}
        for label, settings in SETTINGS.items():
            for lib, pipe in (("vidcore", ours), ("diffusers", ref)):
                fns[f"{lib} {label}"] = runner(pipe, settings, call)
                passes[f"{lib} {label}"] = unet_passes(pipe, fns[f"{lib} {label}"])
        times = interleaved(fns, args.repeats, args.warmup, args.budget)
    rows = []
    base = statistics.median(times.wall["vidcore plain"])
    for label in SETTINGS:
        wall = statistics.median(times.wall[f"vidcore {label}"])
        ref_wall = statistics.median(times.wall[f"diffusers {label}"])
        rows.append((label, passes[f"vidcore {label}"], passes[f"diffusers {label}"], f"{wall:.2f}",
                     f"{wall / base:.2f}x", f"{ref_wall:.2f}", f"{wall / ref_wall:.2f}"))
    print(f"\nAnimateDiff (tiny random model), {args.frames} frames, {args.size}x{args.size} px, {args.steps} steps, "
          f"medians of {len(times.wall['vidcore plain'])} interleaved rounds\n")
    out = table(rows, ("setting", "UNet passes (vidcore)", "UNet passes (diffusers)", "vidcore s", "cost vs plain",
                       "diffusers s", "vidcore / diffusers"))
    print(out)
    return out


if __name__ == "__main__":
    main()
