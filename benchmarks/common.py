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
