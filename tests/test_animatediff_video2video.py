"""AnimateDiffVideoToVideoPipeline against diffusers' AnimateDiffVideoToVideoPipeline (same tiny random SD1.5
model + motion adapter, same seed -> same frames), long inputs through context windows, and errors."""

import numpy as np
import PIL.Image
import pytest
import torch

import tiny_animatediff as ta
import vidcore

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from diffusers import AnimateDiffVideoToVideoPipeline

    from vidcore.pipelines.animatediff import animatediff_scheduler

    built = ta.build_tiny_animatediff(tmp_path_factory.mktemp("animatediff"))
    ref = AnimateDiffVideoToVideoPipeline(**built.pipe.components)
    ref.set_progress_bar_config(disable=True)
    scheduler = animatediff_scheduler(built.sd / "scheduler" / "scheduler_config.json")
    ours = vidcore.AnimateDiffVideoToVideoPipeline.from_pretrained(built.sd, motion_adapter=built.adapter,
                                                                  scheduler=scheduler)
    ours.set_progress_bar_config(disable=True)
    return ref, ours


def frames(n, size=(24, 16), seed=0):
    rng = np.random.RandomState(seed)
    return [PIL.Image.fromarray(rng.randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("output_type", "np")
    return np.asarray(pipe(generator=torch.Generator().manual_seed(seed), **kwargs).frames)


@pytest.mark.parametrize("kwargs", [
    dict(video=frames(5), prompt="a cat walking", negative_prompt="blurry", height=16, width=24, strength=0.6,
         num_inference_steps=5, decode_chunk_size=2),
    dict(video=frames(3, size=(20, 28)), prompt="a dog", height=24, width=16, strength=1.0, num_inference_steps=3,
         guidance_scale=1.0, eta=0.3),
])
def test_matches_diffusers(setup, kwargs):
    ref, ours = setup
    expected, got = run(ref, **kwargs), run(ours, **kwargs)
    assert expected.shape == got.shape == (1, len(kwargs["video"]), kwargs["height"], kwargs["width"], 3)
    assert np.abs(expected - got).max() < TOL


def test_batch_of_videos_and_one_video_for_several(setup):
    ref, ours = setup
    videos = [frames(3, seed=1), frames(3, seed=2)]
    common = dict(prompt=["a cat", "a dog"], height=16, width=16, strength=0.7, num_inference_steps=3)
    expected = run(ref, video=videos, **common)
    assert np.abs(expected - run(ours, video=videos, **common)).max() < TOL
    # one video for two prompts: as if it had been passed twice (diffusers raises here)
    same = run(ours, video=frames(3, seed=1), **common)
    twice = run(ours, video=[frames(3, seed=1)] * 2, **common)
    assert np.array_equal(same, twice)


def test_long_video_uses_context_windows(setup):
    _, ours = setup
    got = run(ours, video=frames(30, size=(16, 16)), prompt="a cat", height=16, width=16, strength=0.5,
              num_inference_steps=2, context_length=12, context_stride=4, output_type="latent")
    assert got.shape == (1, 4, 30, 8, 8) and np.isfinite(got).all()


def test_free_init_round_one_is_the_plain_run(setup):
    _, ours = setup
    kwargs = dict(video=frames(3), prompt="a cat", height=16, width=24, strength=0.6, num_inference_steps=4,
                  output_type="latent")
    plain = run(ours, **kwargs)
    ours.enable_free_init(num_iters=1)
    try:
        assert np.array_equal(run(ours, **kwargs), plain)
        ours.enable_free_init(num_iters=2)
        assert np.isfinite(run(ours, **kwargs)).all()
    finally:
        ours.disable_free_init()


@pytest.mark.parametrize("kwargs,message", [
    (dict(prompt="a"), "video is required"),
    (dict(prompt="a", video=frames(3), strength=0.0), "strength"),
    (dict(prompt="a", video=frames(3), strength=0.1, num_inference_steps=3), "leaves no steps"),
    (dict(prompt=["a", "b", "c"], video=[frames(3), frames(3)]), "2 videos for 3"),
])
def test_bad_inputs(setup, kwargs, message):
    _, ours = setup
    with pytest.raises(ValueError, match=message):
        ours(height=16, width=16, **{"num_inference_steps": 2, **kwargs})


def test_cli_video_to_video_equals_a_direct_call(setup, tmp_path, capsys, monkeypatch):
    import vidcore.cli.generate
    from vidcore.cli import main

    built = ta.build_tiny_animatediff(tmp_path / "m")
    source = vidcore.export_to_video(np.random.default_rng(0).random((4, 16, 24, 3), dtype=np.float32),
                                     tmp_path / "in.mp4", fps=6)
    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video", lambda frames, path, fps: written.append((frames, fps))
                        or str(path))
    code = main(["generate", "animatediff", "--model", str(built.sd), "--motion-adapter", str(built.adapter),
                 "--prompt", "a cat", "--video", str(source), "--strength", "0.7", "--frames", "3", "--height", "16",
                 "--width", "24", "--steps", "3", "--seed", "4", "--device", "cpu", "--no-progress",
                 "-o", str(tmp_path / "out.mp4")])
    assert code == 0, capsys.readouterr().err
    pipe = vidcore.AnimateDiffVideoToVideoPipeline.from_pretrained(built.sd, motion_adapter=built.adapter)
    pipe.set_progress_bar_config(disable=True)
    expected = run(pipe, seed=4, video=vidcore.load_video(source)[:3], prompt="a cat", strength=0.7, height=16,
                   width=24, num_inference_steps=3)
    frames, fps = written[0]
    assert fps == pytest.approx(6.0)  # the input's rate
    assert np.abs(np.asarray(frames) - expected[0]).max() < 1e-5
    assert main(["generate", "animatediff", "--model", str(built.sd), "--prompt", "a", "--strength", "0.5"]) == 2
    assert "--strength applies to --video" in capsys.readouterr().err
