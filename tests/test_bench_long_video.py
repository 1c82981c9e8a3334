"""benchmarks/bench_long_video.py on its smallest setting: every row present, the UNet calls those of the
window schedule, the whole video refused beyond the position table, and a setup passed in (the way FreeNoise
joins) prepared and cleaned up."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_long_video.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPT.parent))  # its `from common import ...`
    try:
        spec = importlib.util.spec_from_file_location("bench_long_video", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(SCRIPT.parent))
        sys.modules.pop("bench_long_video", None)


def rows_of(table):
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]


SMALLEST = ["--size", "tiny", "--frames", "8", "20", "--steps", "1", "--repeats", "1", "--warmup", "0",
            "--context-length", "8", "--max-frames", "16"]


def test_smallest_run_counts_the_window_passes(bench):
    from vidcore.sampling.windows import context_windows

    rows = {(int(r[0]), r[1]): r[2:] for r in rows_of(bench.main(SMALLEST))}
    assert set(rows) == {(f, s) for f in (8, 20) for s in ("whole video", "windows 8/2", "windows 8/4")}
    assert rows[(20, "whole video")] == ["n/a"] * 6  # beyond the adapter's 16 positions
    for (frames, setup), (calls, covered, wall, cpu, per_frame, peak) in rows.items():
        if setup == "whole video":
            if frames == 8:
                assert (int(calls), int(covered)) == (1, 2 * 8)  # one call, the CFG batch of 2
            continue
        n = len(context_windows(frames, 8, int(setup.split("/")[1])))
        assert (int(calls), int(covered)) == (n, n * 2 * min(8, frames)), (frames, setup)
        assert float(wall) > 0 and float(cpu) > 0 and float(per_frame) > 0 and (peak == "n/a" or float(peak) >= 0)


def test_setups_can_be_passed_in(bench):
    """A method with its own setup (FreeNoise is added this way) is one Setup: prepared, measured, cleaned up."""
    prepared, cleaned = [], []
    custom = bench.Setup("one window each",
                         lambda pipe, frames: prepared.append(frames) or {"context_length": 4, "context_stride": 4},
                         cleanup=cleaned.append)
    rows = rows_of(bench.main(["--size", "tiny", "--frames", "8", "--steps", "1", "--repeats", "1", "--warmup", "0"],
                              setups=lambda pipe: [custom]))
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [("8", "one window each", "2", "16")]
    assert len(prepared) == len(cleaned) >= 2  # every prepare (the check, each run) is cleaned up
