"""``--free-noise [CONTEXT_LENGTH]`` and ``--prompt-schedule FILE`` of ``vidcore generate``: the CLI's frames equal a
direct FreeNoise call on tiny random models, and bad schedules are one-line errors before any model loads."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import tiny
import tiny_animatediff as ta
import torch

import vidcore
import vidcore.cli
from vidcore.cli import main


pytestmark = pytest.mark.usefixtures("one_thread", "offline")


@pytest.fixture
def written(monkeypatch):
    frames = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video", lambda f, path, fps: frames.append(f) or str(path))
    return frames


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


COMMON = ["--steps", "2", "--seed", "3", "--device", "cpu", "--dtype", "fp32", "--no-progress"]


def test_animatediff_free_noise_and_prompt_schedule(capsys, tmp_path, written):
    setup = ta.build_tiny_animatediff(tmp_path / "ad")
    schedule = tmp_path / "travel.txt"
    schedule.write_text("# frame: prompt\n0: a cat walking\n\n6: a dog running\n")
    code, _, err = run_cli(capsys, *tiny.cli_spelling("diffusers", [
        "generate", "animatediff", "--model", setup.sd, "--motion-adapter", setup.adapter, "--prompt-schedule",
        schedule, "--negative-prompt", "blurry", "--frames", "9", "--height", "8", "--width", "8", "--free-noise", "4",
        "--free-noise-stride", "3", "--free-noise-weighting", "flat", *COMMON, "-o", tmp_path / "v.mp4"]))
    assert code == 0, err
    pipe = vidcore.AnimateDiffPipeline.from_pretrained(setup.sd, motion_adapter=setup.adapter)
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_free_noise(context_length=4, context_stride=3, weighting_scheme="flat")
    expected = pipe({0: "a cat walking", 6: "a dog running"}, negative_prompt="blurry", num_frames=9, height=8,
                    width=8, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(3)).frames
    np.testing.assert_allclose(written[0], expected[0], rtol=0, atol=1e-6)
    # a bare --free-noise takes the adapter's motion_max_seq_length (24): 9 frames fit one window = the plain run
    code, _, err = run_cli(capsys, "generate", "animatediff", "--model", setup.sd, "--motion-adapter", setup.adapter,
                           "--prompt", "a cat", "--frames", "9", "--height", "8", "--width", "8", "--free-noise",
                           *COMMON, "-o", tmp_path / "w.mp4")
    assert code == 0, err
    code, _, err = run_cli(capsys, "generate", "animatediff", "--model", setup.sd, "--motion-adapter", setup.adapter,
                           "--prompt", "a cat", "--frames", "9", "--height", "8", "--width", "8", *COMMON,
                           "-o", tmp_path / "w.mp4")
    assert code == 0, err
    np.testing.assert_array_equal(written[1], written[2])


def test_image_to_video_free_noise(capsys, tmp_path, written):
    folder = tmp_path / "svd"
    tiny.build_tiny_svd_pipeline(folder)
    image = tmp_path / "in.png"
    PIL.Image.fromarray(np.random.RandomState(0).randint(0, 256, (16, 16, 3), dtype=np.uint8)).save(image)
    code, _, err = run_cli(capsys, "generate", "image-to-video", "--model", folder, "--image", image, "--frames", "7",
                           "--height", "16", "--width", "16", "--free-noise", "4", "--free-noise-stride", "2",
                           "--noise-type", "random", *COMMON, "-o", tmp_path / "v.mp4")
    assert code == 0, err
    pipe = vidcore.StableVideoDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_free_noise(context_length=4, context_stride=2, noise_type="random")
    expected = pipe(vidcore.load_image(str(image)), num_frames=7, height=16, width=16, num_inference_steps=2,
                    output_type="np", generator=torch.Generator().manual_seed(3)).frames
    np.testing.assert_allclose(written[0], expected[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("lines, message", [
    ("0: a cat\n9: a dog\n", "line 2: frame 9 is out of range for 9 frames (0..8)"),
    ("0: a cat\n5: a dog\n3: a bird\n", "line 3: unsorted frame 3"),
    ("0: a cat\n0: a dog\n", "line 2: duplicate frame 0"),
    ("0: a cat\n4:   \n", "line 2: frame 4 has an empty prompt"),
    ("zero: a cat\n", "line 1: expected 'FRAME: PROMPT'"),
    ("2: a cat\n", "the first entry must be frame 0"),
    ("# nothing\n", "no 'FRAME: PROMPT' lines"),
])
def test_bad_schedules_are_one_line_errors(capsys, tmp_path, lines, message):
    schedule = tmp_path / "s.txt"
    schedule.write_text(lines)
    # the model is never loaded: the schedule is checked first
    code, out, err = run_cli(capsys, "generate", "animatediff", "--model", tmp_path / "missing", "--prompt-schedule",
                             schedule, "--free-noise", "--frames", "9", *COMMON, "-o", tmp_path / "x.mp4")
    assert code == 2 and "Traceback" not in out + err
    assert len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("task, argv, message", [
    ("animatediff", ["--prompt-schedule", "s.txt"], "--prompt-schedule needs --free-noise"),
    ("animatediff", ["--free-noise", "--context-length", "8"], "--free-noise and --context-length"),
    ("text-to-video", ["--free-noise", "--prompt", "a", "--prompt-schedule", "s.txt"], "replaces --prompt"),
    ("i2vgen-xl", ["--image", "x.png", "--free-noise-stride", "2"], "--free-noise-stride needs --free-noise"),
    ("video-to-video", ["--video", "x.mp4", "--prompt", "a", "--noise-type", "random"], "--free-noise-noise needs"),
])
def test_bad_flag_combinations(capsys, tmp_path, task, argv, message):
    code, _, err = run_cli(capsys, "generate", task, "--model", tmp_path / "missing", *argv, *COMMON)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_help_lists_the_flags(capsys):
    for task, flags in [("animatediff", ("--free-noise", "--prompt-schedule", "--weighting-scheme")),
                        ("image-to-video", ("--free-noise", "--noise-type")), ("video-to-video", ("--prompt-schedule",)),
                        ("i2vgen-xl", ("--free-noise",)), ("text-to-video", ("--prompt-schedule",))]:
        with pytest.raises(SystemExit):
            main(["generate", task, "--help"])
        text = capsys.readouterr().out
        assert all(flag in text for flag in flags), task
    with pytest.raises(SystemExit):
        main(["generate", "image-to-video", "--help"])
    assert "--prompt-schedule" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["generate", "edit", "--help"])
    assert "--free-noise" not in capsys.readouterr().out
