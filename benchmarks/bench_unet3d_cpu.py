"""Time vidcore's UNet3D against diffusers' UNet3DConditionModel (ModelScope / Zeroscope) on CPU.

Builds a diffusers UNet3DConditionModel from a reduced config with random weights (every parameter
randomized, including the layers diffusers zero-initialises), saves it with ``save_pretrained``, loads
it with ``vidcore.load_model``, checks the outputs agree, then times forward passes with all
variants interleaved in one process (one call of each variant per round, rotating order).

    /work/venv/bin/python benchmarks/bench_unet3d_cpu.py                 # small config, 16x16x16, fp32 + bf16
    /work/venv/bin/python benchmarks/bench_unet3d_cpu.py --dtype fp32 --repeats 10
    /work/venv/bin/python benchmarks/bench_unet3d_cpu.py --config tiny --frames 8 --size 16

Note: in this model diffusers' ``attention_head_dim`` is the per-head *width*; the spatial
transformers get ``channels // attention_head_dim`` heads and ``transformer_in`` always 8 heads.
"""

from __future__ import annotations

import argparse
import copy
import tempfile

import torch

from common import add_repo_paths, interleaved, loadavg, median_ms, print_machine, rel_err, table

add_repo_paths()

CONFIGS = {
    # ModelScope-like layout at a fraction of the width (real model: 320/640/1280/1280, head width 64,
    # cross_attention_dim 1024). 58 M parameters; on the 2-core machine of RESULTS.md one CFG forward
    # at the default 16 frames x 16x16 latent takes ~3 s fp32 / ~1.2 s bf16 with one thread.
    "small": dict(
        block_out_channels=(64, 128, 256, 256),
        down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
        layers_per_block=2,
        attention_head_dim=32,
        norm_num_groups=32,
        cross_attention_dim=256,
    ),
    # the test-suite tiny config: for a quick smoke run
    "tiny": dict(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        layers_per_block=2,
        attention_head_dim=8,
        norm_num_groups=8,
        cross_attention_dim=32,
    ),
}


def channels_last_2d(model: torch.nn.Module) -> torch.nn.Module:
    """Channels-last for the 4-D (Conv2d) weights only.

    ``model.to(memory_format=torch.channels_last)`` raises "required rank 4 tensor to use
    channels_last format" on this model (diffusers' and vidcore's alike) because the temporal
    convolutions are Conv3d with 5-D weights, so the conversion is done per Conv2d here.
    """
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="small")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=16, help="latent height = width")
    ap.add_argument("--batch", type=int, default=2, help="UNet batch (2 = one video with CFG)")
    ap.add_argument("--tokens", type=int, default=77)
    ap.add_argument("--dtype", choices=("all", "fp32", "bf16"), default="all")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-channels-last", action="store_true", help="skip the channels_last variants")
    ap.add_argument("--budget", type=float, default=130.0, help="stop timing rounds after this many seconds")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch.set_num_threads; 0 = torch's default. Default 1: on a shared 2-core machine "
                         "two OpenMP threads are several times slower and far noisier (see RESULTS.md)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import diffusers
    from diffusers import UNet3DConditionModel

    import tiny
    import vidcore

    print("## Machine")
    print_machine()
    cfg = dict(CONFIGS[args.config], in_channels=4, out_channels=4, sample_size=args.size)
    print(f"\nconfig {args.config}: {cfg}")
    print(f"input: batch {args.batch}, 4 x {args.frames} frames x {args.size}x{args.size} latent, "
          f"context {args.batch} x {args.tokens} x {cfg['cross_attention_dim']}")

    ref = tiny.randomize_(UNet3DConditionModel(**cfg), seed=0).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        ours = vidcore.load_model(tmp).eval()
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"parameters: {n_params / 1e6:.2f} M (diffusers {sum(p.numel() for p in ref.parameters()) / 1e6:.2f} M)")

    g = torch.Generator().manual_seed(0)
    sample = torch.randn(args.batch, 4, args.frames, args.size, args.size, generator=g)
    context = torch.randn(args.batch, args.tokens, cfg["cross_attention_dim"], generator=g)
    t = torch.tensor(501)

    def run_ref(model, x, c):
        return model(x, t, encoder_hidden_states=c, return_dict=False)[0]

    def run_ours(model, x, c):
        return model(x, t, c)

    variants = {}  # name -> (callable, dtype label, is_diffusers)
    with torch.inference_mode():
        if args.dtype in ("all", "fp32"):
            err = rel_err(run_ref(ref, sample, context), run_ours(ours, sample, context))
            print(f"fp32 parity: relative error {err:.2e}")
            variants["diffusers fp32"] = (lambda: run_ref(ref, sample, context), "fp32", True)
            variants["vidcore fp32"] = (lambda: run_ours(ours, sample, context), "fp32", False)
            if not args.no_channels_last:
                ours_cl32 = channels_last_2d(copy.deepcopy(ours))
                err = rel_err(run_ours(ours, sample, context), run_ours(ours_cl32, sample, context))
                print(f"fp32 channels_last vs contiguous: relative error {err:.2e}")
                variants["vidcore fp32 + channels_last"] = (lambda: run_ours(ours_cl32, sample, context), "fp32", False)
        if args.dtype in ("all", "bf16"):
            ref16 = copy.deepcopy(ref).to(torch.bfloat16)
            ours16 = copy.deepcopy(ours).to(torch.bfloat16)
            s16, c16 = sample.bfloat16(), context.bfloat16()
            out32 = run_ref(ref, sample, context)
            a, b = run_ref(ref16, s16, c16), run_ours(ours16, s16, c16)
            print(f"bf16 parity: vidcore vs diffusers relative error {rel_err(a, b):.2e} "
                  f"(each vs diffusers fp32: diffusers {rel_err(out32, a):.2e}, vidcore {rel_err(out32, b):.2e})")
            variants["diffusers bf16"] = (lambda: run_ref(ref16, s16, c16), "bf16", True)
            variants["vidcore bf16"] = (lambda: run_ours(ours16, s16, c16), "bf16", False)
            if not args.no_channels_last:
                ours16_cl = channels_last_2d(copy.deepcopy(ours16))
                err = rel_err(b, run_ours(ours16_cl, s16, c16))
                print(f"bf16 channels_last vs contiguous: relative error {err:.2e}")
                variants["vidcore bf16 + channels_last"] = (lambda: run_ours(ours16_cl, s16, c16), "bf16", False)

        print(f"\ntiming {len(variants)} variants x {args.repeats} rounds (interleaved, {args.warmup} warmup), "
              f"load average before: {loadavg()} ...", flush=True)
        times = interleaved({k: v[0] for k, v in variants.items()}, args.repeats, args.warmup, args.budget)
        print(f"load average after: {loadavg()}")

    base = {v[1]: k for k, v in variants.items() if v[2]}  # dtype -> diffusers variant name
    rows = []
    for name, (_, dt, _) in variants.items():
        b = base[dt]
        m, ts = median_ms(times.wall[name]), sorted(1000 * x for x in times.wall[name])
        rows.append((name, f"{m:.0f}", f"{ts[0]:.0f}-{ts[-1]:.0f}", f"{median_ms(times.cpu[name]):.0f}", len(ts),
                     f"{m / median_ms(times.wall[b]):.2f}", f"{times.paired_ratio(name, b):.2f}",
                     f"{median_ms(times.cpu[name]) / median_ms(times.cpu[b]):.2f}"))
    print(f"\n## UNet3D forward, config {args.config}, latent {args.batch}x4x{args.frames}x{args.size}x{args.size}, "
          f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, diffusers {diffusers.__version__}\n")
    print(table(rows, ("variant", "median ms", "min-max ms", "median CPU ms", "n",
                       "ratio of medians vs diffusers same dtype", "median paired ratio", "CPU-time ratio")))
    print("\nratio < 1: faster than diffusers. Paired ratio: per-round vidcore/diffusers wall time, median over rounds.")


if __name__ == "__main__":
    main()
