"""Text2Video-Zero prompt travel: ``{frame: prompt}`` schedules. One key is the plain prompt; with several, frame
0 is exactly the run of its own prompt (it is made alone and every frame attends to it) while later frames follow
theirs; bad schedules are clear errors."""

import numpy as np
import pytest
import torch

import tiny_zero
import vidcore
import vidcore.schedulers

SMALL = dict(video_length=4, height=16, width=24, num_inference_steps=6, t0=2, t1=3, output_type="np")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd-travel")
    tiny_zero.build_tiny_sd(folder)
    pipe = vidcore.TextToVideoZeroPipeline.from_pretrained(
        folder, scheduler=vidcore.schedulers.DDIMScheduler.from_config(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, prompt, **kwargs):
    return pipe(prompt=prompt, generator=torch.Generator().manual_seed(0), **{**SMALL, **kwargs}).frames


def test_one_key_is_the_plain_prompt(pipe):
    plain = run(pipe, "a cat", negative_prompt="blurry")
    travel = run(pipe, {0: "a cat"}, negative_prompt={0: "blurry"})
    assert np.abs(plain - travel).max() < 1e-5  # the repeated rows are a lerp of one row with itself


def test_frame_zero_follows_its_prompt_and_later_frames_theirs(pipe):
    cat, dog = run(pipe, "a cat"), run(pipe, "a dog")
    travel = run(pipe, {0: "a cat", 3: "a dog"})
    assert np.abs(travel[:, 0] - cat[:, 0]).max() < 1e-5  # frame 0: the cat run's
    assert np.abs(travel[:, 3] - cat[:, 3]).max() > 1e-3  # the last frame moved toward the dog prompt
    assert np.abs(travel[:, 3] - dog[:, 3]).mean() < np.abs(cat[:, 3] - dog[:, 3]).mean()  # nearer the dog run


@pytest.mark.parametrize("prompt,message", [({1: "a"}, "start at frame 0"), ({0: "a", 4: "b"}, "out of range"),
                                            ({0: 3}, "values must be strings")])
def test_bad_schedules(pipe, prompt, message):
    with pytest.raises(ValueError, match=message):
        run(pipe, prompt)


def test_cli_prompt_schedule(pipe, tmp_path, capsys, monkeypatch):
    import vidcore.cli.generate
    from vidcore.cli import main

    folder = tmp_path / "sd"
    tiny_zero.build_tiny_sd(folder)
    (tmp_path / "travel.txt").write_text("0: a cat\n# comment\n3: a dog\n")
    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video", lambda frames, path, fps: written.append(frames)
                        or str(path))
    argv = ["generate", "text2video-zero", "--model", str(folder), "--scheduler", "ddim", "--frames", "4", "--height",
            "16", "--width", "24", "--steps", "6", "--t0", "2", "--t1", "3", "--device", "cpu", "--no-progress",
            "-o", str(tmp_path / "o.mp4")]
    assert main([*argv, "--prompt-schedule", str(tmp_path / "travel.txt")]) == 0, capsys.readouterr().err
    expected = run(pipe, {0: "a cat", 3: "a dog"}, guidance_scale=7.5)[0]
    assert np.abs(np.asarray(written[0]) - expected).max() < 1e-5
    (tmp_path / "bad.txt").write_text("0: a cat\n9: a dog\n")
    assert main([*argv, "--prompt-schedule", str(tmp_path / "bad.txt")]) == 2
    assert "frame 9" in capsys.readouterr().err  # beyond the 4 frames: one line naming it
