"""``vidcore generate text2video-zero`` and ``vidcore generate edit`` end to end on tiny random models: the
CLI's frames equal a direct pipeline call with the same arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tiny
import tiny_zero
import vidcore
import vidcore.cli
from vidcore.cli import main


pytestmark = pytest.mark.usefixtures("one_thread", "offline")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-zero")
    tiny_zero.build_tiny_sd(root / "sd")
    tiny_zero.build_tiny_pix2pix(root / "p2p")
    video = vidcore.export_to_gif(tiny_zero.random_frames(7, 16, 24), str(root / "in.gif"), fps=6)
    return root / "sd", root / "p2p", video


def run_cli(capsys, monkeypatch, *argv):
    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video",
                        lambda frames, path, fps: written.append((frames, fps, path)) or str(path))
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return written, out


def direct(cls, model, scheduler=None, **kwargs):
    pipe = cls.from_pretrained(model)
    if scheduler is not None:
        from vidcore.schedulers import scheduler_class

        pipe.scheduler = scheduler_class(scheduler).from_config(pipe.scheduler.to_diffusers_config())
    pipe.set_progress_bar_config(disable=True)
    return pipe(output_type="np", **kwargs).frames


@pytest.mark.parametrize("spelling", ["vidcore", "diffusers"])
def test_text2video_zero_equals_a_direct_call(capsys, monkeypatch, models, tmp_path, spelling):
    sd, _, _ = models
    written, out = run_cli(capsys, monkeypatch, *tiny.cli_spelling(spelling, [
        "generate", "text2video-zero", "--model", sd, "--prompt", "a horse", "--negative-prompt", "blurry",
        "--frames", "3", "--height", "16", "--width", "24", "--steps", "5", "--t0", "1", "--t1", "3",
        "--motion-field-strength-x", "-20", "--motion-field-strength-y", "6", "--guidance", "5", "--eta", "0.3",
        "--seed", "4", "--num-videos", "2", "--device", "cpu", "--no-progress", "-o", tmp_path / "h.mp4"]))
    expected = direct(vidcore.TextToVideoZeroPipeline, sd, prompt="a horse", negative_prompt="blurry", video_length=3,
                      height=16, width=24, num_inference_steps=5, t0=1, t1=3, motion_field_strength_x=-20,
                      motion_field_strength_y=6, guidance_scale=5, eta=0.3, num_videos_per_prompt=2,
                      generator=torch.Generator("cpu").manual_seed(4))
    assert [w[2].name for w in written] == ["h_0.mp4", "h_1.mp4"] and out.split() == [str(w[2]) for w in written]
    for k, (frames, fps, _) in enumerate(written):
        assert fps == 4.0 and frames.shape == (3, 16, 24, 3)
        assert np.array_equal(frames, expected[k])


def test_text2video_zero_bad_t1_is_one_error_line(capsys, models, tmp_path):
    sd, _, _ = models
    code = main(["generate", "text2video-zero", "--model", str(sd), "--prompt", "x", "--steps", "10", "--frames", "2",
                 "--height", "16", "--width", "16", "--device", "cpu", "--no-progress", "-o", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and "t0 and t1" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("scheduler,spelling", [(None, "vidcore"), ("ddim", "diffusers")])
def test_edit_equals_a_direct_call(capsys, monkeypatch, models, tmp_path, scheduler, spelling):
    _, p2p, video = models
    extra = [] if scheduler is None else ["--scheduler", scheduler]
    written, _ = run_cli(capsys, monkeypatch, *tiny.cli_spelling(spelling, [
        "generate", "edit", "--model", p2p, "--video", video, "--prompt", "make it Van Gogh style", "--frame-stride",
        "2", "--frames", "3", "--steps", "3", "--guidance", "6", "--image-guidance", "1.2", "--seed", "2", "--device",
        "cpu", "--no-progress", "-o", tmp_path / "e.gif", *extra]))
    frames = vidcore.load_video(video)[::2][:3]
    expected = direct(vidcore.VideoInstructPix2PixPipeline, p2p, scheduler=scheduler, prompt="make it Van Gogh style",
                      video=frames, num_inference_steps=3, guidance_scale=6, image_guidance_scale=1.2,
                      generator=torch.Generator("cpu").manual_seed(2))
    (got, fps, _), = written
    assert got.shape == (3, 16, 24, 3) and np.array_equal(got, expected[0])
    _, input_fps = vidcore.load_video(video, return_fps=True)
    assert fps == pytest.approx(input_fps / 2) and 2.5 < fps < 3.5  # the input's ~6 fps / stride 2


def test_edit_too_few_frames(capsys, models, tmp_path):
    _, p2p, video = models
    code = main(["generate", "edit", "--model", str(p2p), "--video", str(video), "--prompt", "x", "--frame-stride",
                 "3", "--frames", "4", "--device", "cpu", "-o", str(tmp_path / "e.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and "only 3 frames at --frame-stride 3" in err
