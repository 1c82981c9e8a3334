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
    """Make ``vidcore``/``conversion`` (repo root) and the test harness ``tiny`` (tests/) importable."""
    for p in (REPO, REPO / "tests"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))


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
    }


def print_machine() -> None:
    for k, v in machine_info().items():
        print(f"- {k}: {v}")


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                budget_s: float | None = None) -> dict[str, list[float]]:
    """Time each callable ``repeats`` times, one call of each per round, rotating the order each round.

    Returns name -> list of wall seconds. Stops early (after at least 3 rounds) if ``budget_s`` is spent.
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
        if budget_s is not None and r >= 2 and time.perf_counter() - start > budget_s:
            print(f"(time budget {budget_s:.0f} s spent after {r + 1} rounds)")
            break
    return times


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
