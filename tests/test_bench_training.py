"""benchmarks/bench_training.py at its smallest size on one family: a timing row per checkpointing setting with both
libraries, and a measured peak per (library, checkpointing), vidcore's checkpointed step below its plain one."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_training.py"


def rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| dtype") and not line.startswith("| library")]


def test_quick_run_on_svd(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--families", "svd", "--dtypes", "fp32",
                          "--memory-dtypes", "fp32", "--repeats", "1", "--warmup", "0"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "### SVD UNet: training step time" in res.stdout and "- cpu:" in res.stdout
    timing = [r for r in rows(res.stdout) if len(r) == 6 and r[0] == "fp32"]
    assert [r[1] for r in timing] == ["off", "on"]
    for r in timing:
        assert float(r[2]) > 0 and float(r[3]) > 0 and r[4].endswith("x")
    peaks = {(r[0], r[2]): float(r[3]) for r in rows(res.stdout) if r[0] in ("diffusers", "vidcore")}
    assert set(peaks) == {(lib, ck) for lib in ("diffusers", "vidcore") for ck in ("off", "on")}
    assert all(v > 0 for v in peaks.values())
    assert peaks["vidcore", "on"] < peaks["vidcore", "off"]
