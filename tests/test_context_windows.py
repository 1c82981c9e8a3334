"""Sliding context windows (vidcore.sampling.windows) in the ModelScope text-to-video and video-to-video,
I2VGen-XL and SVD pipelines, and 64-frame videos from ``vidcore generate`` for every family that has windows.

There is no diffusers reference for windows, so the checks are by construction: a video that fits one window
is the plain run bit for bit; on a static input (the same noise in every frame) the blended windows leave no
seam that jumps more than frames inside a window do, and stay closer to the whole-video run than disjoint
windows (a hard cut between windows) do."""

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
from vidcore.sampling.windows import blend_windows, context_windows, plan_windows


pytestmark = pytest.mark.usefixtures("one_thread", "offline")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("windows")
    tiny.build_tiny_t2v_pipeline(root / "t2v")
    tiny.build_tiny_i2vgen_pipeline(root / "i2vgen")
    tiny.build_tiny_svd_pipeline(root / "svd")
    return root


def load(cls, folder):
    pipe = cls.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def image():
    return PIL.Image.fromarray(np.random.RandomState(0).randint(0, 256, (16, 16, 3), dtype=np.uint8))


# -- the schedule ---------------------------------------------------------------------------------

def test_plan_windows_defaults_and_errors():
    assert plan_windows(40, None, None) == [(0, 40)]  # no limit: the whole video, no windows
    assert plan_windows(40, 16, None) == context_windows(40, 16, 4)
    assert plan_windows(40, None, 8, max_length=16) == context_windows(40, 16, 8)
    with pytest.raises(ValueError, match="context_length must be a positive integer .* got 0"):
        plan_windows(40, 0, None)
    with pytest.raises(ValueError, match="context_length must be a positive integer .* got 2.5"):
        plan_windows(40, 2.5, None)
    with pytest.raises(ValueError, match="context_length must be an integer between 1 and the limit=16, got 17"):
        plan_windows(40, 17, None, max_length=16, limit_name="the limit")
    with pytest.raises(ValueError, match="context_stride must be between 1 and context_length=8 .* got 9"):
        plan_windows(40, 8, 9)
    with pytest.raises(ValueError, match="context_stride must be an integer, got 2.0"):
        plan_windows(40, 8, 2.0)
    with pytest.raises(ValueError, match=r"context_weighting must be one of \('pyramid', 'flat'\), got 'gauss'"):
        plan_windows(40, 8, 2, "gauss")


def test_blend_windows():
    calls = []

    def fn(start, end):  # a prediction that depends on the frame only: blending must give it back
        calls.append((start, end))
        return torch.arange(start, end, dtype=torch.float16).view(1, -1, 1).expand(2, -1, 3)

    whole = blend_windows(fn, 10, [(0, 10)], frame_dim=1)
    assert calls == [(0, 10)] and whole.dtype == torch.float16
    for weighting in ("pyramid", "flat"):
        got = blend_windows(fn, 10, context_windows(10, 4, 3), weighting, frame_dim=1)
        assert torch.equal(got, whole)


# -- one window is the plain run ------------------------------------------------------------------

def _t2v(folders, frames=5, **kw):
    pipe = load(vidcore.TextToVideoPipeline, folders / "t2v")
    return pipe(prompt="a cat", num_frames=frames, height=8, width=8, num_inference_steps=2, output_type="latent",
                generator=torch.Generator().manual_seed(0), eta=0.5, **kw).frames


def _v2v(folders, frames=5, **kw):
    pipe = load(vidcore.VideoToVideoPipeline, folders / "t2v")
    video = torch.rand(frames, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return pipe(prompt="a cat", video=video, strength=0.8, num_inference_steps=3, output_type="latent",
                generator=torch.Generator().manual_seed(0), **kw).frames


def _i2vgen(folders, image, frames=5, **kw):
    pipe = load(vidcore.I2VGenXLPipeline, folders / "i2vgen")
    return pipe(prompt="a cat", image=image, num_frames=frames, height=8, width=8, num_inference_steps=2,
                output_type="latent", generator=torch.Generator().manual_seed(0), image_latents_from_generator=True,
                **kw).frames


def _svd(folders, image, frames=5, **kw):
    pipe = load(vidcore.StableVideoDiffusionPipeline, folders / "svd")
    return pipe(image=image, num_frames=frames, height=8, width=8, num_inference_steps=2, output_type="latent",
                generator=torch.Generator().manual_seed(0), **kw).frames


RUNS = {"text-to-video": _t2v, "video-to-video": _v2v, "i2vgen-xl": _i2vgen, "svd": _svd}


@pytest.mark.parametrize("family", sorted(RUNS))
def test_one_window_is_the_plain_run_bit_for_bit(folders, image, family):
    run = RUNS[family]
    args = (folders,) if family in ("text-to-video", "video-to-video") else (folders, image)
    plain = run(*args)
    for extra in ({"context_length": 5}, {"context_length": 9, "context_stride": 2, "context_weighting": "flat"}):
        assert torch.equal(run(*args, **extra), plain), extra
    windowed = run(*args, context_length=3, context_stride=1)  # 3 windows over 5 frames: another valid video
    assert windowed.shape == plain.shape and torch.isfinite(windowed).all() and not torch.equal(windowed, plain)


def test_bad_context_arguments_name_the_argument(folders):
    with pytest.raises(ValueError, match=r"context_length must be an integer between 1 and the frames the model sees at once .*got 0"):
        _t2v(folders, context_length=0)
    with pytest.raises(ValueError, match="context_weighting must be one of"):
        _v2v(folders, context_length=2, context_weighting="gaussian")
    pipe = load(vidcore.TextToVideoPipeline, folders / "t2v")
    pipe.enable_free_noise(context_length=4, context_stride=2)
    with pytest.raises(ValueError, match="context_windows and free_noise do not combine"):
        pipe(prompt="a", num_frames=6, height=8, width=8, num_inference_steps=1, context_length=3)
    with pytest.raises(ValueError, match="context_windows and keyframes do not combine"):
        _svd(folders, PIL.Image.new("RGB", (16, 16)), context_length=3, last_image=PIL.Image.new("RGB", (16, 16)))


# -- seams on a static input ----------------------------------------------------------------------

def _jumps(latents, windows, frame_dim):
    """Mean |frame k+1 - frame k| where the set of covering windows changes (seams) and inside windows."""
    n = latents.shape[frame_dim]
    d = (latents.narrow(frame_dim, 1, n - 1) - latents.narrow(frame_dim, 0, n - 1)).abs()
    d = d.mean(dim=[i for i in range(d.ndim) if i != frame_dim])
    member = [frozenset(i for i, (s, e) in enumerate(windows) if s <= k < e) for k in range(n)]
    seams = [k for k in range(n - 1) if member[k] != member[k + 1]]
    inner = [k for k in range(n - 1) if member[k] == member[k + 1]]
    return d[seams], d[inner]


@pytest.mark.parametrize("family", ["text-to-video", "i2vgen-xl", "svd"])
def test_long_static_video_has_no_seams(folders, image, family):
    """Static noise: inside one window frames differ only through the model's frame-dependent parts (temporal
    padding at the window's edges, I2VGen's position mask, SVD's frame index and per-frame guidance). The
    default overlapping pyramid-weighted windows jump no more at a seam than inside a window, and are closer
    to the whole video in one pass than disjoint flat windows (a hard cut) are."""
    frames, length = 20, 8
    svd = family == "svd"
    shape = (1, 1, 4, 4, 4) if svd else (1, 4, 1, 4, 4)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    noise = noise.repeat(1, frames, 1, 1, 1) if svd else noise.repeat(1, 1, frames, 1, 1)
    if family == "text-to-video":
        pipe = load(vidcore.TextToVideoPipeline, folders / "t2v")
        kw = {"prompt": "a cat"}
    elif family == "i2vgen-xl":
        pipe = load(vidcore.I2VGenXLPipeline, folders / "i2vgen")
        kw = {"prompt": "a cat", "image": image, "image_latents_from_generator": True}
    else:
        pipe = load(vidcore.StableVideoDiffusionPipeline, folders / "svd")
        kw = {"image": image, "noise_aug_strength": 0.0}

    def run(**extra):
        return pipe(num_frames=frames, height=8, width=8, num_inference_steps=4, output_type="latent",
                    latents=noise.clone(), generator=torch.Generator().manual_seed(0), **kw, **extra).frames

    frame_dim = 1 if svd else 2
    blended = run(context_length=length)  # stride length // 4 = 2, pyramid weights
    seams, inner = _jumps(blended, context_windows(frames, length, 2), frame_dim)
    assert len(seams) > 3 and len(inner) > 3
    assert seams.max() <= inner.max(), (seams, inner)
    whole = run()
    cut = run(context_length=length, context_stride=length, context_weighting="flat")
    assert (blended - whole).abs().mean() < (cut - whole).abs().mean()


def test_window_image_latents_keep_the_image_in_frame_0():
    from vidcore.pipelines.i2vgen_xl import window_image_latents

    cond = torch.arange(6.0).view(1, 1, 6, 1, 1)  # frame 0: the image latent, then the position mask
    assert window_image_latents(cond, 0, 4).flatten().tolist() == [0, 1, 2, 3]
    assert window_image_latents(cond, 3, 6).flatten().tolist() == [0, 4, 5]


# -- 64 frames from the CLI, every family ----------------------------------------------------------

def _cli(monkeypatch, tmp_path, *argv):
    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video",
                        lambda frames, path, fps: written.append(frames) or str(path))
    code = main([str(a) for a in [*argv, "--steps", "1", "--device", "cpu", "--no-progress", "-o",
                                  tmp_path / "v.mp4"]])
    assert code == 0
    assert len(written) == 1
    return written[0]


FRAMES = 64


def test_cli_text_to_video_64_frames(folders, tmp_path, monkeypatch):
    video = _cli(monkeypatch, tmp_path, "generate", "text-to-video", "--model", folders / "t2v", "--prompt", "a cat",
                 "--frames", FRAMES, "--height", 8, "--width", 8, "--context-length", 16, "--context-stride", 8)
    assert video.shape == (FRAMES, 8, 8, 3) and np.isfinite(video).all()
    pipe = load(vidcore.TextToVideoPipeline, folders / "t2v")
    direct = pipe(prompt="a cat", num_frames=FRAMES, height=8, width=8, num_inference_steps=1, output_type="np",
                  generator=torch.Generator().manual_seed(0), context_length=16, context_stride=8).frames[0]
    np.testing.assert_allclose(video, direct, rtol=0, atol=1e-6)


def test_cli_video_to_video_64_frames(folders, tmp_path, monkeypatch):
    rng = np.random.RandomState(0)
    frames = [PIL.Image.fromarray(rng.randint(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(FRAMES)]
    frames[0].save(tmp_path / "in.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    video = _cli(monkeypatch, tmp_path, "generate", "video-to-video", "--model", folders / "t2v", "--prompt", "a cat",
                 "--video", tmp_path / "in.gif", "--strength", 1.0, "--context-length", 16,
                 "--context-stride", 8)
    assert video.shape == (FRAMES, 8, 8, 3) and np.isfinite(video).all()


def test_cli_i2vgen_64_frames(folders, tmp_path, monkeypatch, image):
    image.save(tmp_path / "in.png")
    video = _cli(monkeypatch, tmp_path, "generate", "i2vgen-xl", "--model", folders / "i2vgen", "--prompt", "a cat",
                 "--image", tmp_path / "in.png", "--frames", FRAMES, "--height", 8, "--width", 8,
                 "--decode-chunk-size", 16, "--context-length", 16, "--context-stride", 8)
    assert video.shape == (FRAMES, 8, 8, 3) and np.isfinite(video).all()


def test_cli_svd_64_frames(folders, tmp_path, monkeypatch, image):
    image.save(tmp_path / "in.png")
    video = _cli(monkeypatch, tmp_path, "generate", "image-to-video", "--model", folders / "svd", "--image",
                 tmp_path / "in.png", "--frames", FRAMES, "--height", 8, "--width", 8, "--decode-chunk-size", 16,
                 "--context-length", 14, "--context-stride", 7, "--context-weighting", "flat")
    assert video.shape == (FRAMES, 8, 8, 3) and np.isfinite(video).all()


def test_cli_animatediff_64_frames_with_motion_scale(tmp_path, monkeypatch):
    setup = ta.build_tiny_animatediff(tmp_path / "animatediff")
    scales = ",".join(["0.5"] * 32 + ["1.5"] * 32)
    video = _cli(monkeypatch, tmp_path, "generate", "animatediff", "--model", setup.sd, "--motion-adapter",
                 setup.adapter, "--prompt", "a cat", "--frames", FRAMES, "--height", 8, "--width", 8,
                 "--context-length", 16, "--context-stride", 8, "--motion-scale", scales)
    assert video.shape == (FRAMES, 8, 8, 3) and np.isfinite(video).all()
    code = main([str(a) for a in ["generate", "animatediff", "--model", setup.sd, "--motion-adapter", setup.adapter,
                                  "--prompt", "a", "--frames", 4, "--height", 8, "--width", 8, "--steps", 1,
                                  "--motion-scale", "1,2", "--device", "cpu", "-o", tmp_path / "bad.mp4"]])
    assert code == 2 and not (tmp_path / "bad.mp4").exists()
