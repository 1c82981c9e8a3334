"""``vidcore generate controlled`` (Text2Video-Zero + ControlNet) end to end on tiny random saved models: the
CLI's frames equal a direct ControlledVideoPipeline call on the same control frames."""

from __future__ import annotations

import shutil

import numpy as np
import PIL.Image
import pytest
import torch

import tiny
import tiny_controlnet as tc
import vidcore.cli
from vidcore.cli import main
from vidcore.controls import canny
from vidcore.io import export_to_video, load_video
from vidcore.pipelines.controlled_video import ControlledVideoPipeline


pytestmark = pytest.mark.usefixtures("one_thread", "offline")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-controlled")
    built = tc.build_tiny_controlled(root)
    rng = np.random.default_rng(0)
    frames = np.zeros((5, 16, 24, 3), dtype=np.uint8)
    for i, f in enumerate(frames):  # a bright box moving right over a noisy background
        f[:] = rng.integers(0, 40, size=f.shape, dtype=np.uint8)
        f[4:12, 2 + 3 * i: 10 + 3 * i] = 230
    video = export_to_video(frames, root / "in.mp4", fps=10)
    return built, video


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def capture(monkeypatch):
    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video", lambda frames, path, fps: written.append((frames, fps)) or str(path))
    return written


def direct(built, controlnet, **kwargs):
    pipe = ControlledVideoPipeline.from_pretrained(built.sd, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe(output_type="np", **kwargs).frames


@pytest.mark.parametrize("spelling", ["vidcore", "diffusers"])
def test_canny_equals_a_direct_call(capsys, setup, tmp_path, monkeypatch, spelling):
    built, video = setup
    written = capture(monkeypatch)
    code, out, err = run_cli(capsys, *tiny.cli_spelling(spelling, [
        "generate", "controlled", "--control", "canny", "--video", video, "--model", built.sd, "--controlnet",
        built.controlnet, "--prompt", "a red car", "--negative-prompt", "blurry", "--frames", "3", "--steps", "2",
        "--guidance", "5.0", "--seed", "3", "--controlnet-scale", "0.7", "--canny-low", "60", "--canny-high", "120",
        "--device", "cpu", "--no-progress", "-o", tmp_path / "out.mp4"]))
    assert code == 0, err
    assert out.strip() == str(tmp_path / "out.mp4")
    frames = load_video(video)[:3]
    edges = canny(frames, 60, 120)
    assert any(np.asarray(e).any() for e in edges)
    expected = direct(built, built.controlnet, prompt="a red car", conditioning_frames=edges, negative_prompt="blurry",
                      num_inference_steps=2, guidance_scale=5.0, controlnet_conditioning_scale=0.7,
                      generator=torch.Generator("cpu").manual_seed(3))
    assert len(written) == 1 and written[0][1] == pytest.approx(10.0)  # the input's rate
    np.testing.assert_allclose(written[0][0], expected[0], rtol=0, atol=1e-6)
    # the edges (not the raw frames) were the control images
    raw = direct(built, built.controlnet, prompt="a red car", conditioning_frames=frames, negative_prompt="blurry",
                 num_inference_steps=2, guidance_scale=5.0, controlnet_conditioning_scale=0.7,
                 generator=torch.Generator("cpu").manual_seed(3))
    assert np.abs(raw[0] - written[0][0]).max() > 1e-4


def test_pose_frames_stride_resize_and_guess_mode(capsys, setup, tmp_path, monkeypatch):
    built, video = setup
    written = capture(monkeypatch)
    # no --controlnet: the model folder's own controlnet/ (a saved StableDiffusionControlNetPipeline)
    code, out, err = run_cli(capsys, "generate", "controlled", "--control", "pose", "--video", video, "--model",
                             built.sd, "--prompt", "a dancer", "--frame-stride", "2", "--height", "16", "--width",
                             "16", "--steps", "2", "--seed", "1", "--guess-mode", "--num-videos", "2", "--fps", "4",
                             "--device", "cpu", "--no-progress", "-o", tmp_path / "pose.gif")
    assert code == 0, err
    assert out.split() == [str(tmp_path / "pose_0.gif"), str(tmp_path / "pose_1.gif")]
    frames = [f.resize((16, 16), PIL.Image.Resampling.LANCZOS) for f in load_video(video)[::2]]
    expected = direct(built, None, prompt="a dancer", conditioning_frames=frames, num_inference_steps=2,
                      guess_mode=True, num_videos_per_prompt=2, generator=torch.Generator("cpu").manual_seed(1))
    assert expected.shape == (2, 3, 16, 16, 3)
    assert [fps for _, fps in written] == [4.0, 4.0]
    for (got, _), want in zip(written, expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_errors_are_one_line(capsys, setup, tmp_path):
    built, video = setup
    plain = tmp_path / "sd-plain"
    shutil.copytree(built.sd, plain)
    shutil.rmtree(plain / "controlnet")
    cases = [
        (["--control", "pose", "--video", video, "--model", plain], "pass controlnet= (CLI: --controlnet)"),
        (["--control", "pose", "--video", video, "--model", built.sd, "--frames", "9"],
         "--frames 9: the input video has only 5 frames"),
        (["--control", "canny", "--video", video, "--model", built.sd, "--height", "12"], "multiples of 8"),
    ]
    for argv, message in cases:
        code, out, err = run_cli(capsys, "generate", "controlled", *argv, "--prompt", "a", "--steps", "1",
                                 "--device", "cpu", "--no-progress", "-o", tmp_path / "x.mp4")
        assert code == 2, err
        assert "Traceback" not in out + err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
        assert not (tmp_path / "x.mp4").exists()
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage error
        main(["generate", "controlled", "--control", "depth", "--video", str(video), "--model", str(built.sd),
              "--prompt", "a"])
    assert exit_info.value.code == 2 and "invalid choice: 'depth'" in capsys.readouterr().err
