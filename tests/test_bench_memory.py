"""benchmarks/bench_memory.py at its smallest size on one family: the table has a measured row per setting that
runs (diffusers default as the 1.00x reference, the preset below vidcore's default denoise peak) and names a
setting this checkout lacks instead of measuring it."""

import subprocess
import sys
from pathlib import Path

import vidcore

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_memory.py"


def test_quick_run_on_modelscope(tmp_path):
    settings = "diffusers-default,default,low-memory,split-guidance"
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--families", "t2v", "--settings", settings],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {cells[0]: cells for line in res.stdout.splitlines() if line.startswith("| ")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    base, ours, low = rows["diffusers-default"], rows["default"], rows["low-memory"]
    assert base[6] == "1.00x" and base[11] == ours[11] == "exact"
    assert 0 < float(low[4]) < float(ours[4]) and low[1].startswith("apply_low_memory") and "forward chunking" in low[1]
    has_split = hasattr(vidcore.TextToVideoPipeline, "set_guidance_batching")
    assert ("not in this checkout" in rows["split-guidance"][2]) != has_split
    assert "low-memory denoise peak" in res.stdout and "## ModelScope text-to-video: 4 frames 64x64" in res.stdout
