"""benchmarks/bench_lcm.py at its smallest setting (``--tiny``): both samplers run on the same pipeline and the
table reports each with its step count and a speed ratio against DDIM."""

import importlib.util
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_lcm.py"


def test_tiny_run_reports_both_samplers(capsys):
    spec = importlib.util.spec_from_file_location("bench_lcm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    threads = torch.get_num_threads()
    try:
        spec.loader.exec_module(module)
        out = module.main(["--tiny", "--repeats", "1", "--warmup", "0", "--ddim-steps", "3", "--lcm-steps", "2"])
    finally:
        torch.set_num_threads(threads)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()[2:]]
    assert [(r[0], r[1]) for r in rows] == [("DDIM 3 steps", "3"), ("LCM 2 steps", "2")]
    assert rows[0][7] == "1.00x" and float(rows[1][7][:-1]) > 0
    assert "## AnimateDiff video" in capsys.readouterr().out
