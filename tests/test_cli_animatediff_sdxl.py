"""``vidcore generate animatediff`` picks AnimateDiffSDXLPipeline for an SDXL model (tiny random SDXL + adapter),
and SD1.5/SDXL adapter mix-ups fail with one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tiny_animatediff as ta
import tiny_sdxl
import vidcore.cli
from vidcore import AnimateDiffSDXLPipeline
from vidcore.cli import main
from vidcore.pipelines.animatediff_sdxl import is_sdxl_model


pytestmark = pytest.mark.usefixtures("one_thread", "offline")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-sdxl")
    return tiny_sdxl.build_tiny_animatediff_sdxl(root / "xl"), ta.build_tiny_animatediff(root / "sd15")


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_sdxl_model_uses_the_sdxl_pipeline(capsys, setup, tmp_path, monkeypatch):
    xl, sd15 = setup
    assert is_sdxl_model(xl.sdxl) and not is_sdxl_model(sd15.sd)
    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video", lambda frames, path, fps: written.append(frames) or str(path))
    code, out, err = run_cli(capsys, "generate", "animatediff", "--model", xl.sdxl, "--motion-adapter", xl.adapter,
                             "--prompt", "a cat", "--negative-prompt", "blurry", "--frames", "3", "--height", "16",
                             "--width", "24", "--steps", "2", "--seed", "4", "--device", "cpu", "--no-progress",
                             "-o", tmp_path / "a.gif")
    assert code == 0, err
    pipe = AnimateDiffSDXLPipeline.from_pretrained(xl.sdxl, motion_adapter=xl.adapter)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt="a cat", negative_prompt="blurry", num_frames=3, height=16, width=24, num_inference_steps=2,
                    guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(4), output_type="np").frames[0]
    assert np.abs(np.asarray(written[0]) - expected).max() < 1e-5


def test_adapter_mixups_are_one_line_errors(capsys, setup, tmp_path):
    xl, sd15 = setup
    for model, adapter, message in ((xl.sdxl, sd15.adapter, "an SD1.5 motion adapter cannot animate an SDXL UNet"),
                                    (sd15.sd, xl.adapter, "an SDXL motion adapter cannot animate an SD1.5 UNet")):
        code, out, err = run_cli(capsys, "generate", "animatediff", "--model", model, "--motion-adapter", adapter,
                                 "--prompt", "x", "--frames", "2", "--height", "16", "--width", "16", "--steps", "1",
                                 "--device", "cpu", "--no-progress", "-o", tmp_path / "b.gif")
        assert code != 0 and message in err
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "b.gif").exists()


def test_sdxl_model_is_text_to_video_only(capsys, setup, tmp_path):
    import PIL.Image

    xl, _ = setup
    frames = [PIL.Image.new("RGB", (16, 16), (i * 60, 0, 0)) for i in range(2)]
    frames[0].save(tmp_path / "in.gif", save_all=True, append_images=frames[1:], duration=100)
    code, out, err = run_cli(capsys, "generate", "animatediff", "--model", xl.sdxl, "--motion-adapter", xl.adapter,
                             "--prompt", "x", "--video", tmp_path / "in.gif", "--device", "cpu", "--no-progress",
                             "-o", tmp_path / "c.gif")
    assert code != 0 and "an SDXL --model runs text-to-video only" in err
