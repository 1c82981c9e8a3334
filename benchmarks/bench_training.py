"""Training step (issue #30): vidcore's modules against diffusers' at equal settings, speed and peak memory.

    .venv/bin/python benchmarks/bench_training.py                        # UNet3D, AnimateDiff, SVD UNet; CPU
    .venv/bin/python benchmarks/bench_training.py --quick                # tiny size, a smoke run
    .venv/bin/python benchmarks/bench_training.py --device cuda --size medium

One training step = zero_grad, forward (float32, or under ``torch.autocast(bfloat16)``), MSE loss to a fixed
random target, backward, ``torch.optim.AdamW`` step over every parameter. Both libraries get the same random
diffusers weights (vidcore's converted through the diffusers key map), the same inputs and the same optimizer; each
side is called as its pipelines call it (diffusers' UNetMotionModel takes the prompt repeated per frame, vidcore's
UNetMotion one per video). Rows: float32 and bf16 autocast, gradient checkpointing off and on
(``enable_gradient_checkpointing``; diffusers' UNet3DConditionModel does not support it: its rows are vidcore only).

Speed: the two libraries' steps alternate in the same process (``common.interleaved``: one step of each per round,
rotating order), after a warm-up; medians over the rounds, and the ratio is the median of the per-round
vidcore / diffusers ratios (a shared machine's load hits both alike).

Peak memory, measured as benchmarks/bench_memory.py measures its stages: each (library, dtype, checkpointing) runs in
a fresh process forked from this one after the imports and before any tensor work, with glibc's mmap threshold at
64 KiB (``mallopt``, what bench_memory's ``MALLOC_MMAP_THRESHOLD_=65536`` sets: large buffers mmapped, returned on
free). It builds the model, runs one warm-up step (the optimizer state exists afterwards), then resets the peak RSS
(``5 > /proc/self/clear_refs``) and reports VmHWM at the end of a second step minus VmRSS at its start: what the
step adds to the resident weights and optimizer state (activations, gradients, temporaries). On CUDA:
``torch.cuda.max_memory_allocated`` during the step minus ``memory_allocated`` before it, in the same process as
the timings. "before the step" is the process RSS (CPU: imports included) or the CUDA allocation then. Linux only on
CPU; at --size tiny a step adds a few MiB, near page-level noise (judge ratios at --size small or larger).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from common import add_repo_paths, interleaved, loadavg, print_machine, table

add_repo_paths()

from bench_memory import MOTION_ADAPTER, MOTION_UNET, SVD_UNET, T2V_UNET  # noqa: E402

SIZES = {  # batch, frames, latent height, latent width
    "tiny": (1, 2, 8, 8),
    "small": (1, 8, 16, 16),
    "medium": (2, 16, 32, 32),
}
FAMILIES = {"unet3d": "ModelScope UNet3D", "animatediff": "AnimateDiff UNetMotion (SD1.5)", "svd": "SVD UNet"}


@dataclass
class Pair:
    """One family's two modules and how each is called on latents ``x``; ``checkpointing`` says whether diffusers'
    module supports gradient checkpointing."""

    ref: torch.nn.Module
    ours: torch.nn.Module
    run_ref: Callable[[torch.Tensor], torch.Tensor]
    run_ours: Callable[[torch.Tensor], torch.Tensor]
    x: torch.Tensor
    ref_checkpointing: bool


# --size tiny: two narrow levels, so a smoke run takes seconds (each family's pattern kept: SVD's norms use 32 groups)
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
TINY = {
    "unet3d": dict(block_out_channels=(32, 64), norm_num_groups=8, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                   up_block_types=("UpBlock3D", "CrossAttnUpBlock3D")),
    "animatediff": dict(block_out_channels=(32, 64), norm_num_groups=8, attention_head_dim=(2, 4),
                        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
    "adapter": dict(block_out_channels=(32, 64), motion_norm_num_groups=8, motion_num_attention_heads=(2, 4)),
    "svd": dict(block_out_channels=(32, 64), num_attention_heads=(2, 4),
                down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal")),
}


def _config(base: dict, size: str, tiny_key: str) -> dict:
    """The family's bench_memory config (the same widths as the whole-pipeline memory rows), or its tiny form."""
    return dict(base, **TINY[tiny_key]) if size == "tiny" else dict(base)


def _native(ref: torch.nn.Module) -> torch.nn.Module:
    from vidcore.loading.architectures import BY_DIFFUSERS, build, fill

    arch = BY_DIFFUSERS[type(ref).__name__]
    ours = build(arch, dict(ref.config))
    fill(ours, {k: v.clone() for k, v in ref.state_dict().items()}, arch.keymap(dict(ref.config)), [])
    return ours


def build_pair(family: str, size: str, device: str) -> Pair:
    """Random diffusers weights (``tiny.randomize_``, seed 0) in both libraries, on ``device``, float32."""
    import diffusers
    import tiny

    from vidcore.models.motion import UNetMotion

    b, f, h, w = SIZES[size]
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([500] * b)
    if family == "unet3d":
        ref = tiny.randomize_(diffusers.UNet3DConditionModel(**_config(T2V_UNET, size, "unet3d")), 0)
        ours = _native(ref)
        ctx = torch.randn(b, 16, T2V_UNET["cross_attention_dim"], generator=g).to(device)
        x = torch.randn(b, 4, f, h, w, generator=g)
        pair = Pair(ref, ours, lambda x: ref(x, t, ctx).sample, lambda x: ours(x, t, ctx), x, False)
    elif family == "animatediff":
        unet = tiny.randomize_(diffusers.UNet2DConditionModel(**_config(MOTION_UNET, size, "animatediff")), 0)
        adapter = tiny.randomize_(diffusers.MotionAdapter(**_config(MOTION_ADAPTER, size, "adapter")), 1)
        ref = diffusers.UNetMotionModel.from_unet2d(unet, adapter)
        ours = UNetMotion(_native(unet), _native(adapter))
        ctx = torch.randn(b, 16, MOTION_UNET["cross_attention_dim"], generator=g).to(device)
        per_frame = ctx.repeat_interleave(f, dim=0)  # diffusers' AnimateDiff pipelines pass (b f) m d
        x = torch.randn(b, 4, f, h, w, generator=g)
        pair = Pair(ref, ours, lambda x: ref(x, t, per_frame).sample, lambda x: ours(x, t, ctx), x, True)
    elif family == "svd":
        cfg = _config(SVD_UNET, size, "svd")
        ref = tiny.randomize_(diffusers.UNetSpatioTemporalConditionModel(**cfg), 0)
        ours = _native(ref)
        ctx = torch.randn(b, 1, cfg["cross_attention_dim"], generator=g).to(device)
        ids = torch.tensor([[6.0, 127.0, 0.02]] * b, device=device)
        x = torch.randn(b, f, ref.config.in_channels, h, w, generator=g)
        pair = Pair(ref, ours, lambda x: ref(x, t, ctx, ids).sample, lambda x: ours(x, t, ctx, ids), x, True)
    else:
        raise SystemExit(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    t = t.to(device)
    pair.ref.to(device).train()
    pair.ours.to(device).train()
    pair.x = pair.x.to(device)
    return pair


def target_for(pair: Pair) -> torch.Tensor:
    """A fixed random target shaped as the output (SVD: fewer channels out than in)."""
    with torch.no_grad():
        shape = pair.run_ours(pair.x).shape
    return torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(pair.x.device)


def make_step(model: torch.nn.Module, run: Callable, x: torch.Tensor, target: torch.Tensor,
              bf16: bool) -> Callable[[], float]:
    """One training step of ``model`` (closure over its own AdamW)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = run(x)
        loss = F.mse_loss(out.float(), target)
        loss.backward()
        opt.step()
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        return loss.item()

    return step


def set_checkpointing(model: torch.nn.Module, on: bool) -> None:
    model.enable_gradient_checkpointing() if on else model.disable_gradient_checkpointing()


# ----------------------------------------------------------------------------- peak memory (forked children)


def status_kib(field: str) -> int:
    """A /proc/self/status value (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_peak(job: dict) -> dict:
    """One (family, lib, dtype, checkpointing) peak: build, warm-up step, measured step (see the module doc)."""
    torch.manual_seed(0)
    pair = build_pair(job["family"], job["size"], job["device"])
    lib = job["lib"]
    model, run = (pair.ref, pair.run_ref) if lib == "diffusers" else (pair.ours, pair.run_ours)
    set_checkpointing(model, job["checkpointing"])
    step = make_step(model, run, pair.x, target_for(pair), job["dtype"] == "bf16")
    step()
    cuda = pair.x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = status_kib("VmRSS") * 1024
    step()
    peak = torch.cuda.max_memory_allocated() if cuda else status_kib("VmHWM") * 1024
    return {"step_mib": (peak - before) / 2**20, "resident_mib": before / 2**20}


def preload() -> None:
    """Import what a measurement imports (no tensor work), so forked children start from equal imports."""
    import diffusers
    import tiny  # noqa: F401

    import vidcore.loading.architectures  # noqa: F401
    import vidcore.models.motion  # noqa: F401

    for name in ("UNet3DConditionModel", "UNet2DConditionModel", "MotionAdapter", "UNetMotionModel",
                 "UNetSpatioTemporalConditionModel"):
        getattr(diffusers, name)


def forked_peak(job: dict) -> dict:
    """:func:`measure_peak` in a forked child whose allocator mmaps buffers of 64 KiB and more (glibc ``mallopt``:
    what ``MALLOC_MMAP_THRESHOLD_=65536`` sets at start-up), so freed activations leave the RSS; the parent must
    not have done tensor work yet (a forked OpenMP pool can hang)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 65536)
            if job.get("threads"):
                torch.set_num_threads(job["threads"])
            result = measure_peak(job)
        except BaseException as err:  # noqa: BLE001 - reported in the table
            traceback.print_exc()
            result = {"error": f"{type(err).__name__}: {err}"}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        out = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(out) if out else {"error": "the measuring process died"}


def peaks(args) -> dict:
    """{(family, lib, dtype, checkpointing): result}: forked children on the CPU, this process on CUDA."""
    jobs = [dict(family=fam, lib=lib, dtype=dt, checkpointing=ck, size=args.size, device=args.device,
                 threads=args.threads)
            for fam in args.families for dt in args.memory_dtypes for ck in (False, True)
            for lib in ("diffusers", "vidcore")]
    jobs = [j for j in jobs if not (j["lib"] == "diffusers" and j["checkpointing"] and j["family"] == "unet3d")]
    measure = measure_peak if args.device.startswith("cuda") else forked_peak
    return {(j["family"], j["lib"], j["dtype"], j["checkpointing"]): measure(j) for j in jobs}


# ----------------------------------------------------------------------------- the run


def time_family(family: str, args) -> list[tuple]:
    """Rows (dtype, checkpointing, diffusers ms, vidcore ms, ratio, rounds) of alternating training steps."""
    torch.manual_seed(0)
    pair = build_pair(family, args.size, args.device)
    target = target_for(pair)
    rows = []
    for dtype in args.dtypes:
        for ck in (False, True):
            set_checkpointing(pair.ours, ck)
            fns = {"vidcore": make_step(pair.ours, pair.run_ours, pair.x, target, dtype == "bf16")}
            if not ck or pair.ref_checkpointing:
                if pair.ref_checkpointing:
                    set_checkpointing(pair.ref, ck)
                fns["diffusers"] = make_step(pair.ref, pair.run_ref, pair.x, target, dtype == "bf16")
            t = interleaved(fns, args.repeats, args.warmup, args.budget)
            ms = {n: 1000 * statistics.median(v) for n, v in t.wall.items()}
            ref_ms = f"{ms['diffusers']:.0f}" if "diffusers" in ms else "not supported"
            ratio = f"{t.paired_ratio('vidcore', 'diffusers'):.2f}x" if "diffusers" in ms else "n/a"
            rows.append((dtype, "on" if ck else "off", ref_ms, f"{ms['vidcore']:.0f}", ratio, len(t.wall["vidcore"])))
            print(f"  {family} {dtype} checkpointing {'on' if ck else 'off'}: {rows[-1][2:]}", file=sys.stderr,
                  flush=True)
    set_checkpointing(pair.ours, False)
    return rows


def memory_rows(family: str, results: dict, dtypes: list[str]) -> list[tuple]:
    rows = []
    for dtype in dtypes:
        base = results.get((family, "diffusers", dtype, False), {}).get("step_mib")
        for lib in ("diffusers", "vidcore"):
            for ck in (False, True):
                r = results.get((family, lib, dtype, ck))
                if r is None:
                    rows.append((lib, dtype, "on" if ck else "off", "not supported", "", ""))
                elif "error" in r:
                    rows.append((lib, dtype, "on" if ck else "off", f"failed: {r['error']}", "", ""))
                else:
                    ratio = f"{r['step_mib'] / base:.2f}x" if base else "n/a"
                    rows.append((lib, dtype, "on" if ck else "off", f"{r['step_mib']:.1f}", f"{r['resident_mib']:.0f}",
                                 ratio))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(FAMILIES), help=f"comma list of {', '.join(FAMILIES)}")
    ap.add_argument("--size", choices=tuple(SIZES), default="small",
                    help=", ".join(f"{k}: batch {b}, {f} frames, {h}x{w} latents" for k, (b, f, h, w) in SIZES.items()))
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32, bf16 (autocast) for the timings")
    ap.add_argument("--memory-dtypes", default="fp32,bf16", help="the same for the peaks; empty: no peaks")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed rounds (one step of each library per round); default 5, --quick 3")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--budget", type=float, default=60.0, help="stop a row's rounds after this many seconds (>= 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads; 0 = torch's default")
    ap.add_argument("--quick", action="store_true", help="--size tiny --repeats 3")
    args = ap.parse_args()
    if args.quick:
        args.size, args.repeats = "tiny", args.repeats or 3
    args.families = [f for f in args.families.split(",") if f]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    args.memory_dtypes = [d for d in args.memory_dtypes.split(",") if d]
    unknown = [f for f in args.families if f not in FAMILIES] + [
        d for d in args.dtypes + args.memory_dtypes if d not in ("fp32", "bf16")]
    if unknown:
        raise SystemExit(f"unknown families / dtypes: {unknown}")
    args.repeats = args.repeats or 5
    if args.threads:
        torch.set_num_threads(args.threads)
    preload()
    b, f, h, w = SIZES[args.size]
    print("## Machine")
    print_machine()
    if args.device.startswith("cuda"):
        print(f"- gpu: {torch.cuda.get_device_name(args.device)}")
    print(f"- command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print(f"- step: AdamW(lr=1e-5) over all parameters, MSE to a random target; batch {b}, {f} frames, "
          f"{h}x{w} latents; widths {TINY['svd']['block_out_channels'] if args.size == 'tiny' else T2V_UNET['block_out_channels']}")
    t0 = time.perf_counter()
    results = peaks(args) if args.memory_dtypes else {}  # first: the forks precede any tensor work here
    for fam in args.families:
        print(f"\n### {FAMILIES[fam]}: training step time (ms, median of rounds)\n")
        print(table(time_family(fam, args), ("dtype", "checkpointing", "diffusers ms", "vidcore ms",
                                             "vidcore / diffusers", "rounds")), flush=True)
        if args.memory_dtypes:
            print(f"\n### {FAMILIES[fam]}: peak memory of a training step (MiB over the resident weights and "
                  "optimizer state)\n")
            print(table(memory_rows(fam, results, args.memory_dtypes),
                        ("library", "dtype", "checkpointing", "step peak MiB", "before the step MiB",
                         "vs diffusers without checkpointing")), flush=True)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s, load average after: {loadavg()}")


if __name__ == "__main__":
    main()
