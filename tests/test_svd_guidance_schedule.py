"""SVD per-frame guidance schedules: "linear" is diffusers' (the default, bit for bit), "triangle" and
"constant" follow their formulas, a list is used as given (checked by running the pipeline with the
equivalent list), and bad schedules are one clear error."""

import numpy as np
import PIL.Image
import pytest
import torch

import tiny
import vidcore
from vidcore.sampling.frame_guidance import frame_guidance_scales

SMALL = dict(height=16, width=24, num_frames=5, num_inference_steps=2, output_type="latent")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("svd-guidance") / "svd"
    tiny.build_tiny_svd_pipeline(folder)
    pipe = vidcore.StableVideoDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image():
    return PIL.Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 52, 3), dtype=np.uint8))


def run(pipe, **kwargs):
    return pipe(image(), generator=torch.Generator().manual_seed(0), **SMALL, **kwargs).frames


def test_schedule_values():
    assert torch.equal(frame_guidance_scales("linear", 1.0, 3.0, 5), torch.linspace(1.0, 3.0, 5))
    assert frame_guidance_scales("triangle", 1.0, 3.0, 5).tolist() == [1.0, 2.0, 3.0, 2.0, 1.0]
    assert frame_guidance_scales("triangle", 1.0, 3.0, 4).tolist() == pytest.approx([1.0, 1 + 4 / 3, 1 + 4 / 3, 1.0])
    assert frame_guidance_scales("constant", 1.0, 2.5, 3).tolist() == [2.5, 2.5, 2.5]
    assert frame_guidance_scales([1.0, 4.0], 0.0, 0.0, 2).tolist() == [1.0, 4.0]


def test_linear_default_and_lists_equal_the_named_schedules(pipe):
    default = run(pipe, min_guidance_scale=1.5, max_guidance_scale=3.0)
    assert torch.equal(run(pipe, min_guidance_scale=1.5, max_guidance_scale=3.0, guidance_schedule="linear"), default)
    triangle = run(pipe, min_guidance_scale=1.5, max_guidance_scale=3.0, guidance_schedule="triangle")
    assert not torch.equal(triangle, default)
    as_list = frame_guidance_scales("triangle", 1.5, 3.0, 5).tolist()
    assert torch.equal(run(pipe, guidance_schedule=as_list), triangle)
    constant = run(pipe, max_guidance_scale=2.0, guidance_schedule="constant")
    assert torch.equal(run(pipe, guidance_schedule=[2.0] * 5), constant)
    # a list of scales <= 1 runs without guidance, like max_guidance_scale <= 1
    assert torch.equal(run(pipe, guidance_schedule=[1.0] * 5), run(pipe, max_guidance_scale=1.0))


@pytest.mark.parametrize("schedule,message", [([1.0, 2.0], "2 scales for num_frames=5"), ("cosine", "triangle")])
def test_bad_schedules(pipe, schedule, message):
    with pytest.raises(ValueError, match=message):
        run(pipe, guidance_schedule=schedule)


def test_cli_guidance_schedule(pipe, tmp_path, capsys, monkeypatch):
    import vidcore.cli.generate
    from vidcore.cli import main

    folder = tmp_path / "svd"
    tiny.build_tiny_svd_pipeline(folder)
    image().save(tmp_path / "in.png")
    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video", lambda frames, path, fps: written.append(frames)
                        or str(path))
    base = ["generate", "image-to-video", "--model", str(folder), "--image", str(tmp_path / "in.png"), "--height", "16",
            "--width", "24", "--frames", "3", "--steps", "2", "--device", "cpu", "--no-progress", "-o",
            str(tmp_path / "o.mp4")]
    assert main([*base, "--guidance-schedule", "triangle", "--max-guidance", "2.5"]) == 0
    assert main([*base, "--guidance-schedule", "1.0,2.5,1.0"]) == 0
    np.testing.assert_array_equal(written[0], written[1])  # the same per-frame scales
    assert main([*base, "--guidance-schedule", "1,2"]) == 2
    assert "2 scales for num_frames=3" in capsys.readouterr().err
