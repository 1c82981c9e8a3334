"""``vidcore generate image-to-video`` (Stable Video Diffusion) end to end on a tiny random pipeline."""

from __future__ import annotations

from pathlib import Path

import av
import PIL.Image
import pytest

import tiny
from vidcore.cli import main


pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture(scope="module")
def svd_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli-svd") / "tiny-svd"
    tiny.build_tiny_svd_pipeline(folder)
    return folder


@pytest.fixture
def rocket(tmp_path) -> Path:
    path = tmp_path / "rocket.png"
    PIL.Image.new("RGB", (40, 24), (200, 80, 30)).save(path)
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_image_to_video_writes_mp4(capsys, svd_folder, rocket, tmp_path):
    out_path = tmp_path / "generated.mp4"
    code, out, err = run_cli(capsys, "generate", "image-to-video", "--model", svd_folder, "--image", rocket,
                             "--num-frames", "3", "--decode-chunk-size", "2", "--fps", "6", "--motion-bucket-id",
                             "100", "--noise-aug-strength", "0.05", "--min-guidance", "1.0", "--max-guidance", "2.5",
                             "--height", "16", "--width", "24", "--steps", "2", "--device", "cpu", "--no-progress",
                             "-o", out_path)
    assert code == 0, err
    assert out.strip() == str(out_path)
    with av.open(str(out_path)) as container:
        stream = container.streams.video[0]
        assert float(stream.average_rate) == pytest.approx(6.0)
        frames = list(container.decode(video=0))
    assert len(frames) == 3
    assert (frames[0].width, frames[0].height) == (24, 16)


def test_image_to_video_missing_image_is_one_line(capsys, svd_folder, tmp_path):
    missing = tmp_path / "no-such-rocket.png"
    code, out, err = run_cli(capsys, "generate", "image-to-video", "--model", svd_folder, "--image", missing,
                             "--device", "cpu", "-o", tmp_path / "x.mp4")
    assert code == 2
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no-such-rocket.png" in lines[0], err
    assert not (tmp_path / "x.mp4").exists()


def test_image_to_video_has_no_text_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "image-to-video", "--model", "m", "--image", "i.png", "--prompt", "x"])
    assert exc.value.code == 2
    assert "--prompt" in capsys.readouterr().err


@pytest.mark.parametrize("spelling", ["vidcore", "diffusers"])
def test_image_to_video_forwards_every_option(capsys, svd_folder, rocket, tmp_path, monkeypatch, spelling):
    """The CLI's frames equal a direct pipeline call with the same arguments (so no option is dropped),
    and ``--num-frames`` defaults to the UNet's ``num_frames``."""
    import numpy as np
    import torch

    import vidcore.cli
    from vidcore import StableVideoDiffusionPipeline
    from vidcore.io import load_image

    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video", lambda frames, path, fps: written.append((frames, fps)) or str(path))
    code, out, err = run_cli(capsys, *tiny.cli_spelling(spelling, [
        "generate", "image-to-video", "--model", svd_folder, "--image", rocket, "--fps", "5", "--motion-bucket-id",
        "90", "--noise-aug-strength", "0.1", "--min-guidance", "1.5", "--max-guidance", "2.0", "--height", "16",
        "--width", "16", "--steps", "2", "--seed", "3", "--num-videos", "2", "--device", "cpu", "--no-progress",
        "-o", tmp_path / "v.mp4"]))
    assert code == 0, err
    assert out.split() == [str(tmp_path / "v_0.mp4"), str(tmp_path / "v_1.mp4")]
    pipe = StableVideoDiffusionPipeline.from_pretrained(svd_folder)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(load_image(rocket), height=16, width=16, num_inference_steps=2, fps=5, motion_bucket_id=90,
                    noise_aug_strength=0.1, min_guidance_scale=1.5, max_guidance_scale=2.0, num_videos_per_prompt=2,
                    generator=torch.Generator("cpu").manual_seed(3), output_type="np").frames
    assert expected.shape[:2] == (2, pipe.unet.config.num_frames)
    assert [fps for _, fps in written] == [5, 5]
    for (frames, _), want in zip(written, expected):
        np.testing.assert_allclose(frames, want, rtol=0, atol=1e-6)
    # a different motion bucket changes the video: the option reaches the model
    written.clear()
    run_cli(capsys, "generate", "image-to-video", "--model", svd_folder, "--image", rocket, "--fps", "5",
            "--motion-bucket-id", "10", "--noise-aug-strength", "0.1", "--min-guidance", "1.5", "--max-guidance",
            "2.0", "--height", "16", "--width", "16", "--steps", "2", "--seed", "3", "--device", "cpu",
            "--no-progress", "-o", tmp_path / "w.mp4")
    assert np.abs(written[0][0] - expected[0]).max() > 1e-4


def test_image_to_video_bad_size_is_one_line(capsys, svd_folder, rocket, tmp_path):
    code, out, err = run_cli(capsys, "generate", "image-to-video", "--model", svd_folder, "--image", rocket,
                             "--height", "20", "--width", "24", "--steps", "1", "--device", "cpu", "--no-progress",
                             "-o", tmp_path / "x.mp4")
    assert code == 2
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "multiples of 8" in lines[0] and "height=20" in lines[0], err
    assert not (tmp_path / "x.mp4").exists()
