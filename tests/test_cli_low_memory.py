"""``vidcore generate ... --low-memory`` on the built-in demo model: one printed line names the settings the preset
chose, and on the CPU the video is the one the plain command writes (the preset there changes no math)."""

from __future__ import annotations

import numpy as np
import pytest

import vidcore.cli.generate
from vidcore.cli import main

pytestmark = pytest.mark.usefixtures("offline")


def test_low_memory_flag_prints_its_choice_and_keeps_the_video(capsys, tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video",
                        lambda frames, path, fps: written.append(frames) or str(path))
    base = ["generate", "text-to-video", "--prompt", "a red circle moving right", "--steps", "2", "--device", "cpu",
            "--no-progress", "-o", str(tmp_path / "v.mp4")]
    assert main(base) == 0
    capsys.readouterr()
    assert main(base + ["--low-memory"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("low memory: ")]
    assert len(lines) == 1 and "forward chunking" in lines[0], lines
    plain, low = written
    np.testing.assert_allclose(low, plain, rtol=0, atol=2e-5)


def test_decode_chunk_size_auto_and_max_memory(capsys, tmp_path, monkeypatch):
    """``--decode-chunk-size auto --max-memory SIZE`` reach the pipeline; with a budget too small for two decoded
    frames, auto decodes one frame per call (the same video up to float rounding); bad values are usage errors."""
    written, calls = [], []
    monkeypatch.setattr(vidcore.cli.generate, "write_video",
                        lambda frames, path, fps: written.append(frames) or str(path))
    base = ["generate", "text-to-video", "--prompt", "a red circle moving right", "--steps", "2", "--device", "cpu",
            "--no-progress", "-o", str(tmp_path / "v.mp4")]
    assert main(base) == 0
    real = vidcore.TextToVideoPipeline.__call__

    def spy(pipe, *args, **kwargs):
        calls.append((kwargs.get("decode_chunk_size"), pipe.max_memory))
        return real(pipe, *args, **kwargs)

    monkeypatch.setattr(vidcore.TextToVideoPipeline, "__call__", spy)
    assert main(base + ["--decode-chunk-size", "auto", "--max-memory", "1KB"]) == 0
    assert calls == [("auto", 1000)]
    np.testing.assert_allclose(written[1], written[0], rtol=0, atol=2e-5)  # batch-size-dependent kernels
    capsys.readouterr()
    for bad, message in ((["--decode-chunk-size", "0"], "expected a positive integer or auto, got 0"),
                         (["--decode-chunk-size", "big"], "expected a positive integer or auto, got 'big'"),
                         (["--max-memory", "2XB"], "max_memory '2XB': expected a number with a unit")):
        with pytest.raises(SystemExit) as exit_:
            main(base + bad)
        assert exit_.value.code == 2 and message in capsys.readouterr().err, bad
