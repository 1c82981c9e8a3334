"""Shared helpers for the CPU benchmarks: machine description, interleaved timing, tables.

Timing method: every variant is run once per round, in a rotating order, so that background load
on a shared machine hits all variants alike; per-variant medians are reported.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def add_repo_paths() -> None:
    """Make the test harness ``tiny`` (tests/) importable. vidcore itself comes from the install
    (``pip install -e .``): the repository root is not put on sys.path, where its kernels/ folder would
    shadow PyPI's ``kernels`` package (it ships as ``vidcore.kernels``)."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> str:
    """The AVX-512/AMX flags that decide which bf16 kernels oneDNN can use."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                keep = [f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")]
                return " ".join(keep)
    except OSError:
        pass
    return ""


def git_revision() -> str:
    """Short commit of the checkout, with "+dirty" when vidcore/, conversion/ or kernels/ differ from it."""
    import subprocess
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "vidcore", "conversion", "kernels"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict:
    try:
        import diffusers
        dv = diffusers.__version__
    except ImportError:
        dv = "not installed"
    return {
        "cpu": cpu_model(),
        "cpu flags": cpu_flags(),
        "logical cores (os.cpu_count)": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": dv,
        "vidcore checkout": git_revision(),
        "load average (1/5/15 min)": loadavg(),
    }


def print_machine() -> None:
    for k, v in machine_info().items():
        print(f"- {k}: {v}")


class Timings:
    """Per-variant wall and CPU (process) seconds, one entry per round."""

    def __init__(self, names):
        self.wall: dict[str, list[float]] = {n: [] for n in names}
        self.cpu: dict[str, list[float]] = {n: [] for n in names}

    def paired_ratio(self, name: str, base: str) -> float:
        """Median over rounds of wall(name) / wall(base) measured in the same round."""
        return statistics.median(a / b for a, b in zip(self.wall[name], self.wall[base]))


def add_timing_args(ap, repeats: int, budget: float, unit: str = "rounds") -> None:
    """--repeats, --warmup, --budget and --threads, as every CPU timing script takes them."""
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--budget", type=float, default=budget, help=f"stop timing {unit} after this many seconds")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads; 0 = torch's default")


def apply_threads(args) -> None:
    """``--threads N``: torch.set_num_threads(N) unless N is 0 (torch's default)."""
    if args.threads:
        torch.set_num_threads(args.threads)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                budget_s: float | None = None) -> Timings:
    """Time each callable ``repeats`` times, one call of each per round, rotating the order each round.

    Records wall time (``perf_counter``) and process CPU time (``process_time``; with one torch
    thread this excludes time the process spent descheduled by other load). Stops early (after at
    least 3 rounds) once ``budget_s`` seconds of timing have been spent.
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    t = Timings(names)
    start = time.perf_counter()
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            c0, w0 = time.process_time(), time.perf_counter()
            fns[n]()
            t.wall[n].append(time.perf_counter() - w0)
            t.cpu[n].append(time.process_time() - c0)
        if budget_s is not None and r >= 2 and time.perf_counter() - start > budget_s:
            print(f"(time budget {budget_s:.0f} s spent after {r + 1} rounds)")
            break
    return t


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def median_ms(ts: list[float]) -> float:
    return 1000.0 * statistics.median(ts)


def rel_err(a, b) -> float:
    """max |a - b| / max |a| in float64."""
    a = np.asarray(a.float().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    b = np.asarray(b.float().cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def table(rows: list[tuple], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- whole pipelines

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def add_pipeline_args(ap, frames: int = 8, height: int = 64, width: int = 64, steps: int = 10,
                      repeats: int = 7, budget: float = 120.0) -> None:
    """The arguments every whole-pipeline script takes: --frames --height --width --steps --dtype and the
    timing ones (--repeats --warmup --budget --threads)."""
    ap.add_argument("--frames", type=int, default=frames)
    ap.add_argument("--height", type=int, default=height)
    ap.add_argument("--width", type=int, default=width)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                    help="both pipelines are cast to this dtype (pipe.to) after loading; float32 requires frames "
                         "within 1e-3 relative error, bfloat16 only loosely (mean |difference| < 0.02, no NaN)")
    add_timing_args(ap, repeats=repeats, budget=budget, unit="rounds")
    ap.add_argument("--count-parity", action="store_true",
                    help="time the parity calls (vidcore first, then diffusers) and count them as the first round "
                         "(wall time only): for runs whose calls take minutes (bf16 on CPUs without native bf16)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="instead of timing: profile one call of each pipeline (torch.profiler, after the parity "
                         "call) and print the N most expensive ops of each side by side (self CPU ms, calls)")


def profile_pipelines(run_ref: Callable[[], object], run_ours: Callable[[], object], top: int) -> None:
    """One profiled call of each pipeline; the ``top`` ops by self CPU time of either, side by side."""
    from torch.profiler import ProfilerActivity, profile

    stats = {}
    for name, fn in (("diffusers", run_ref), ("vidcore", run_ours)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        stats[name] = {e.key: (e.self_cpu_time_total / 1000, e.count) for e in prof.key_averages()}
    keys = sorted(set(stats["diffusers"]) | set(stats["vidcore"]),
                  key=lambda k: -max(stats["diffusers"].get(k, (0, 0))[0], stats["vidcore"].get(k, (0, 0))[0]))
    rows = []
    for k in keys[:top]:
        d, v = stats["diffusers"].get(k, (0.0, 0)), stats["vidcore"].get(k, (0.0, 0))
        rows.append((k, f"{d[0]:.0f}", d[1], f"{v[0]:.0f}", v[1], f"{v[0] - d[0]:+.0f}"))
    total = {n: sum(ms for ms, _ in st.values()) for n, st in stats.items()}
    rows.append(("(all ops)", f"{total['diffusers']:.0f}", "", f"{total['vidcore']:.0f}", "",
                 f"{total['vidcore'] - total['diffusers']:+.0f}"))
    print(table(rows, ("op", "diffusers self ms", "calls", "vidcore self ms", "calls", "vidcore - diffusers ms")))


def frames_array(out) -> np.ndarray:
    """``output_type="np"`` frames of either library as float64 numpy."""
    if isinstance(out, torch.Tensor):
        out = out.float().cpu().numpy()
    return np.asarray(out, dtype=np.float64)


def time_pipelines(title: str, run_ref: Callable[[], object], run_ours: Callable[[], object], args) -> dict:
    """Check that the two pipeline calls agree, then time them alternately; print and return the results.

    ``run_ref`` / ``run_ours`` make one full call each (same seed) and return the ``output_type="np"`` frames.
    Speed = diffusers time / vidcore time (> 1: vidcore faster); the paired speed is the median over rounds of
    the per-round ratio.
    """
    import diffusers

    count_parity = getattr(args, "count_parity", False)
    with torch.inference_mode():
        if count_parity:  # vidcore first: any one-time cost shared by both falls on vidcore
            w0, c0 = time.perf_counter(), time.process_time()
            b = frames_array(run_ours())
            w1, c1 = time.perf_counter(), time.process_time()
            a = frames_array(run_ref())
            parity_round = (time.perf_counter() - w1, w1 - w0)  # diffusers, vidcore
            parity_cpu = (time.process_time() - c1, c1 - c0)
        else:
            a, b = frames_array(run_ref()), frames_array(run_ours())
        err, mean_diff = rel_err(a, b), float(np.abs(a - b).mean())
        nan = bool(np.isnan(a).any() or np.isnan(b).any())
        print(f"frames {a.shape}: vidcore vs diffusers relative error (max) {err:.2e}, mean |difference| "
              f"{mean_diff:.2e}, NaN: {nan}")
        if nan or (args.dtype == "bfloat16" and mean_diff > 0.02) or (args.dtype == "float32" and err > 1e-3):
            raise SystemExit(f"outputs disagree (relative error {err:.2e}, mean |difference| {mean_diff:.2e}, NaN {nan})")
        if getattr(args, "profile", 0):
            return profile_pipelines(run_ref, run_ours, args.profile)
        la_before = loadavg()
        print(f"\ntiming 2 pipelines x {args.repeats} rounds (interleaved, {args.warmup} warmup), "
              f"load average before: {la_before} ...", flush=True)
        times = interleaved({"diffusers": run_ref, "vidcore": run_ours}, args.repeats, args.warmup, args.budget)
        la_after = loadavg()
        print(f"load average after: {la_after}")
    if count_parity:
        print(f"parity round counted: diffusers {parity_round[0]:.1f} s, vidcore {parity_round[1]:.1f} s (wall)")
        times.wall["diffusers"].insert(0, parity_round[0])
        times.wall["vidcore"].insert(0, parity_round[1])
        times.cpu["diffusers"].insert(0, parity_cpu[0])
        times.cpu["vidcore"].insert(0, parity_cpu[1])
    # CPU-time speed: process time (one torch thread: excludes time descheduled by other load), paired per round
    speeds = [d / v for d, v in zip(times.wall["diffusers"], times.wall["vidcore"])]
    paired = statistics.median(speeds)
    cpu_paired = statistics.median(d / v for d, v in zip(times.cpu["diffusers"], times.cpu["vidcore"]))
    rows = []
    for name in ("diffusers", "vidcore"):
        m, ts = median_ms(times.wall[name]), sorted(1000 * x for x in times.wall[name])
        rows.append((name, f"{m:.0f}", f"{ts[0]:.0f}-{ts[-1]:.0f}", f"{median_ms(times.cpu[name]):.0f}", len(ts),
                     f"{median_ms(times.wall['diffusers']) / m:.2f}",
                     f"{paired if name == 'vidcore' else 1.0:.2f}",
                     f"{median_ms(times.cpu['diffusers']) / median_ms(times.cpu[name]):.2f}"))
    print(f"\n## {title}, {args.frames} frames {args.height}x{args.width}, {args.steps} steps, {args.dtype}, "
          f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, diffusers {diffusers.__version__}\n")
    print(table(rows, ("pipeline", "median ms", "min-max ms", "median CPU ms", "n", "speed (ratio of medians)",
                       "speed (median paired)", "speed (CPU time)")))
    print("\nspeed = diffusers time / vidcore time (> 1: vidcore faster); paired: per round, median over rounds; "
          f"per-round speeds {' '.join(f'{s:.2f}' for s in speeds)}")
    print(f"RESULT {title} | {args.frames}x{args.height}x{args.width} | {args.steps} | {args.dtype} | "
          f"{paired:.2f} | {len(speeds)} | {la_before} / {la_after} | {err:.1e} / {mean_diff:.1e} | {cpu_paired:.2f}")
    return dict(paired=paired, cpu_paired=cpu_paired, n=len(speeds), err=err, mean_diff=mean_diff,
                load=(la_before, la_after))
