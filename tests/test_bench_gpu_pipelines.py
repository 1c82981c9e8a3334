"""benchmarks/bench_gpu_pipelines.py runs its whole code path on the CPU with tiny configs (``--device cpu
--tiny``): both libraries build, load the same saved folder, sample and decode, and the table is complete."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_gpu_pipelines.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu_pipelines", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_run_reports_every_pipeline(bench, capsys):
    table = bench.main(["--device", "cpu", "--tiny", "--steps", "2", "--compile", "none"])
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    variants = ("diffusers", "vidcore sdpa", "vidcore sdpa + DeepCache 3")
    assert {(r[0], r[1]) for r in rows} == {(p, v) for p in bench.SPECS for v in variants}
    for pipeline, variant, calls, step_ms, call_s, decode_s, peak, speed in rows:
        assert int(calls) == 2, (pipeline, variant)  # one UNet call per step (the CFG halves are one batch)
        assert float(step_ms) > 0 and float(call_s) > float(decode_s) > 0 and peak == "-"
        assert speed.endswith("x") and float(speed[:-1]) > 0
    assert "| svd-xt | diffusers |" in capsys.readouterr().out  # rows are printed as they are measured
    # the benchmark leaves the repository root off sys.path (its kernels/ would shadow PyPI's kernels)
    assert all(Path(p or ".").resolve() != SCRIPT.parent.parent for p in sys.path)


def test_real_configs_are_the_released_ones(bench):
    """The real-size builders use the hub configs vidcore's conversion maps hold (checked on the meta device)."""
    import torch

    with torch.device("meta"):
        svd = bench.build_svd(False)
    assert svd.unet.config.num_frames == 25 and list(svd.unet.config.block_out_channels) == [320, 640, 1280, 1280]
    assert sum(p.numel() for p in svd.unet.parameters()) == pytest.approx(1524.62e6, rel=1e-3)
    assert svd.image_encoder.config.num_hidden_layers == 32
