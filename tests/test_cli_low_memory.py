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
