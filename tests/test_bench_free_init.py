"""benchmarks/bench_free_init.py on its smallest setting: every row present, the UNet pass counts those of
the settings (steps x rounds; coarse-to-fine 1/3 + 2/3 + 3/3 of the steps) in both libraries."""

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_free_init.py"


def test_smallest_run_counts_the_unet_passes(capsys):
    sys.path.insert(0, str(SCRIPT.parent))  # its `from common import ...`
    try:
        spec = importlib.util.spec_from_file_location("bench_free_init", SCRIPT)
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        out = bench.main(["--frames", "3", "--size", "16", "--steps", "3", "--repeats", "1", "--warmup", "0"])
    finally:
        sys.path.remove(str(SCRIPT.parent))
    rows = {r[0]: r[1:] for r in ([c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()[2:])}
    expected = {"plain": 3, "FreeInit 2": 6, "FreeInit 3": 9, "FreeInit 3 fast": 1 + 2 + 3}
    assert {k: (int(v[0]), int(v[1])) for k, v in rows.items()} == {k: (n, n) for k, n in expected.items()}
    assert float(rows["plain"][3][:-1]) == 1.0
