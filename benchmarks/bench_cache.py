"""Step caches (issue #17): speed and FLOPs per family, and drift on the trained demo model (CPU).

Part ``speed``: for each family a medium random pipeline (the test harness's components, wider: 4 levels for
the UNet3D / UNet2D families), one call uncached against DeepCache (``cache_interval`` 3, branch 0) and the
block cache, timed interleaved in one process (median wall time over ``--repeats`` rounds). UNet FLOPs per call
come from ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions), so "FLOPs saved" is measured,
not estimated.

Part ``drift``: the shipped demo model (``vidcore/demo/model``) over the demo evaluation's 48 prompts x
``--seeds``: PSNR of each cached video against the uncached one (same seed; frames in [0, 1]) and the
evaluation's color / direction accuracy, for DeepCache intervals 2-5 and several block-cache thresholds.

    python benchmarks/bench_cache.py                 # both parts, ~10 min on 2 cores
    python benchmarks/bench_cache.py --part drift --seeds 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import PIL.Image
import torch
from torch.utils.flop_counter import FlopCounterMode

from common import add_repo_paths, add_timing_args, apply_threads, interleaved, print_machine, table

add_repo_paths()

import tiny  # noqa: E402
import tiny_animatediff  # noqa: E402
import tiny_zero  # noqa: E402

import vidcore  # noqa: E402

FOUR_3D = dict(block_out_channels=(32, 64, 128, 128), layers_per_block=2, attention_head_dim=16, norm_num_groups=16,
               cross_attention_dim=32, down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
               up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3)
FOUR_2D = dict(block_out_channels=(32, 64, 128, 128), layers_per_block=2, attention_head_dim=4, norm_num_groups=16,
               down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SVD_3 = dict(block_out_channels=(32, 64, 128), num_attention_heads=(2, 4, 8),
             down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 2 + ("DownBlockSpatioTemporal",),
             up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 2)
VAE = dict(block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_num_groups=8)


def _image(size=64):
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8))


def families(root):
    """name -> (vidcore pipeline, call arguments) at medium sizes."""
    tiny.build_tiny_t2v_pipeline(root / "t2v", unet_overrides=FOUR_3D, vae_overrides=VAE)
    tiny.build_tiny_i2vgen_pipeline(root / "i2v", unet_overrides=dict(FOUR_3D, layers_per_block=1))
    tiny.build_tiny_svd_pipeline(root / "svd", unet_overrides=SVD_3)
    ad = tiny_animatediff.build_tiny_animatediff(root / "ad", unet_overrides=FOUR_2D, adapter_overrides=dict(
        block_out_channels=(32, 64, 128, 128), motion_norm_num_groups=16))
    tiny_zero.build_tiny_sd(root / "zero", unet_overrides=FOUR_2D)
    return {
        "text-to-video (UNet3D)": (vidcore.TextToVideoPipeline.from_pretrained(root / "t2v"),
                                   dict(prompt="a cat", num_frames=8, height=64, width=64)),
        "i2vgen-xl": (vidcore.I2VGenXLPipeline.from_pretrained(root / "i2v"),
                      dict(prompt="a cat", image=_image(), num_frames=8, height=32, width=32)),
        "svd": (vidcore.StableVideoDiffusionPipeline.from_pretrained(root / "svd"),
                dict(image=_image(), num_frames=8, height=32, width=32)),
        "animatediff (UNetMotion)": (vidcore.AnimateDiffPipeline.from_pretrained(ad.sd, motion_adapter=ad.adapter),
                                     dict(prompt="waves", num_frames=8, height=32, width=32)),
        "text2video-zero (UNet2D)": (vidcore.TextToVideoZeroPipeline.from_pretrained(root / "zero"),
                                     dict(prompt="a horse", video_length=4, height=32, width=32, t0=6, t1=8)),
    }


SETTINGS = {"uncached": None, "DeepCache 3 / branch 0": ("deep", 3), "block cache 0.1": ("block", 0.1)}


def configure(pipe, setting) -> None:
    pipe.disable_deep_cache()
    pipe.disable_block_cache()
    if setting is None:
        return
    method, value = setting
    if method == "deep":
        pipe.enable_deep_cache(cache_interval=value, cache_branch_id=0)
    else:
        pipe.enable_block_cache(threshold=value)


def unet_flops(pipe, call) -> int:
    """Matmul + convolution FLOPs of the UNet forwards of one call."""
    total = 0
    unet = pipe.unet
    forward = unet.forward

    def counted(*args, **kwargs):
        nonlocal total
        counter = FlopCounterMode(display=False)  # a fresh one per forward: entering one resets its counts
        with counter:
            out = forward(*args, **kwargs)
        total += counter.get_total_flops()
        return out

    unet.forward = counted
    try:
        call()
    finally:
        del unet.forward
    return total


def speed(args) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        from pathlib import Path

        built = families(Path(tmp))
    for name, (pipe, kwargs) in built.items():
        pipe.set_progress_bar_config(disable=True)

        def call(pipe=pipe, kwargs=kwargs):
            torch.manual_seed(0)
            return pipe(**kwargs, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0),
                        output_type="np").frames

        fns, flops, stats, outs = {}, {}, {}, {}
        for label, setting in SETTINGS.items():
            def run(setting=setting):
                configure(pipe, setting)
                return call()
            fns[label] = run
            configure(pipe, setting)
            flops[label] = unet_flops(pipe, call)
            outs[label] = call()
            stats[label] = pipe.cache_stats()
        times = interleaved(fns, args.repeats, args.warmup, args.budget)
        base = statistics.median(times.wall["uncached"])
        for label in SETTINGS:
            med = statistics.median(times.wall[label])
            diff = np.abs(outs[label] - outs["uncached"]).max()
            s = stats[label]
            rows.append((name, label, f"{med:.2f}", f"{base / med:.2f}x", f"{flops[label] / 1e9:.2f}",
                         f"{1 - flops[label] / flops['uncached']:.0%}",
                         "-" if s is None else f"{s['cached']}/{s['cached'] + s['full']}", f"{diff:.3f}"))
            print(rows[-1], flush=True)
        configure(pipe, None)
    print(table(rows, ("family", "setting", "call (s, median)", "speed-up", "UNet GFLOPs / call", "FLOPs saved",
                       "UNet calls cached", "max |diff| vs uncached")))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def drift(args) -> None:
    from vidcore.demo import DEFAULTS, demo_model_path
    from vidcore.demo.data import all_combinations
    from vidcore.demo.evaluate import generate, score_videos, summarize

    pipe = vidcore.TextToVideoPipeline.from_pretrained(demo_model_path())
    pipe.set_progress_bar_config(disable=True)
    settings = {"uncached": None, **{f"DeepCache {k} / branch 0": ("deep", k) for k in (2, 3, 4, 5)},
                **{f"block cache {t}": ("block", t) for t in (0.02, 0.05, 0.1, 0.2)}}
    rows, reference = [], None
    for label, setting in settings.items():
        configure(pipe, setting)
        start = time.perf_counter()
        videos, combos = generate(pipe, all_combinations(), args.seeds, DEFAULTS["num_frames"],
                                  DEFAULTS["num_inference_steps"], DEFAULTS["guidance_scale"],
                                  height=DEFAULTS["height"], width=DEFAULTS["width"])
        seconds = time.perf_counter() - start
        summary = summarize(score_videos(videos, combos))
        stats = pipe.cache_stats()
        if reference is None:
            reference, base = videos, seconds
        values = [psnr(v, r) for v, r in zip(videos, reference)]
        finite = [v for v in values if np.isfinite(v)]
        rows.append((label, f"{seconds:.1f}", f"{base / seconds:.2f}x",
                     "exact" if not finite else f"{statistics.median(finite):.1f} / {min(finite):.1f}",
                     f"{summary['color_accuracy']:.1%}", f"{summary['direction_accuracy']:.1%}",
                     "-" if stats is None else f"{stats['cached']}/{stats['cached'] + stats['full']} (one call of {min(48, len(videos))} videos)"))
        print(rows[-1], flush=True)
    print(f"\n{len(reference)} videos ({args.seeds} seed(s) x 48 prompts), {DEFAULTS['num_inference_steps']} DDIM steps")
    print(table(rows, ("setting", "time (s)", "speed-up", "PSNR vs uncached, dB (median / min)", "color acc",
                       "direction acc", "UNet calls cached")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("speed", "drift", "both"), default="both")
    ap.add_argument("--steps", type=int, default=12, help="denoising steps of the speed part")
    ap.add_argument("--seeds", type=int, default=1, help="seeds per demo prompt in the drift part")
    add_timing_args(ap, repeats=5, budget=60.0)
    args = ap.parse_args()
    apply_threads(args)
    print("## Machine")
    print_machine()
    if args.part in ("speed", "both"):
        print(f"\n## Speed ({args.steps} steps)")
        speed(args)
    if args.part in ("drift", "both"):
        print("\n## Drift on the demo model")
        drift(args)


if __name__ == "__main__":
    main()
