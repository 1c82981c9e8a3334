"""FreeInit: the filters against diffusers' reference and an FFT written out here, AnimateDiff against diffusers'
``enable_free_init`` seed for seed, and on the other families the math checks (one round is the plain run bit
for bit; more rounds change the video, stay finite and cost one UNet pass per step per round)."""

import numpy as np
import PIL.Image
import pytest
import torch

import tiny
import tiny_animatediff as ta
import vidcore
from vidcore.sampling.free_init import FreeInitConfig, low_pass_filter, mix_frequencies

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


# -- filters ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,order,d_s,d_t", [("butterworth", 4, 0.25, 0.25), ("gaussian", 4, 0.3, 0.5),
                                                  ("ideal", 4, 0.25, 0.25), ("butterworth", 2, 0.4, 0.1),
                                                  ("gaussian", 4, 0.0, 0.25)])
def test_low_pass_filter_equals_diffusers(method, order, d_s, d_t):
    from diffusers.pipelines.free_init_utils import FreeInitMixin

    shape = (1, 3, 5, 6, 7)
    expected = FreeInitMixin()._get_free_init_freq_filter(shape, "cpu", method, order, d_s, d_t)
    got = low_pass_filter(5, 6, 7, method, order, d_s, d_t)
    assert torch.equal(got.expand(shape), expected)


def test_mix_frequencies_equals_a_numpy_fft_reference():
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(2, 3, 5, 6, 8, generator=g), torch.randn(2, 3, 5, 6, 8, generator=g)
    mask = low_pass_filter(5, 6, 8, "butterworth", 4, 0.25, 0.25)
    axes = (-3, -2, -1)
    spec = np.fft.fftshift(np.fft.fftn(x.double().numpy(), axes=axes), axes=axes)
    noise_spec = np.fft.fftshift(np.fft.fftn(noise.double().numpy(), axes=axes), axes=axes)
    m = mask.double().numpy()
    expected = np.fft.ifftn(np.fft.ifftshift(spec * m + noise_spec * (1 - m), axes=axes), axes=axes).real
    got = mix_frequencies(x, noise, mask)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    # all-pass keeps x, all-stop gives the noise
    torch.testing.assert_close(mix_frequencies(x, noise, torch.ones_like(mask)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(mix_frequencies(x, noise, torch.zeros_like(mask)), noise, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs,message", [({"num_iters": 0}, "num_iters"), ({"method": "box"}, "method"),
                                            ({"spatial_stop_frequency": 1.5}, "spatial_stop_frequency"),
                                            ({"order": 0}, "order")])
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FreeInitConfig(**kwargs)


def test_fast_sampling_step_counts():
    config = FreeInitConfig(num_iters=3, use_fast_sampling=True)
    assert [config.steps(10, k) for k in range(3)] == [3, 6, 10]
    assert [FreeInitConfig(num_iters=3).steps(10, k) for k in range(3)] == [10, 10, 10]


# -- AnimateDiff: seed for seed with diffusers --------------------------------------------------

@pytest.fixture(scope="module")
def animatediff(tmp_path_factory):
    from vidcore.pipelines.animatediff import animatediff_scheduler

    setup = ta.build_tiny_animatediff(tmp_path_factory.mktemp("animatediff"))
    scheduler = animatediff_scheduler(setup.sd / "scheduler" / "scheduler_config.json")
    ours = vidcore.AnimateDiffPipeline.from_pretrained(setup.sd, motion_adapter=setup.adapter, scheduler=scheduler)
    ours.set_progress_bar_config(disable=True)
    return setup, ours


@pytest.mark.parametrize("settings,call", [
    ({"num_iters": 2}, {"num_frames": 5, "height": 16, "width": 24}),
    ({"num_iters": 3, "use_fast_sampling": True, "method": "gaussian", "spatial_stop_frequency": 0.4},
     {"num_frames": 3, "height": 24, "width": 16, "eta": 0.5}),
    ({"num_iters": 2, "method": "ideal", "temporal_stop_frequency": 0.5}, {"num_frames": 4, "height": 16, "width": 16}),
])
def test_animatediff_free_init_equals_diffusers(animatediff, settings, call):
    setup, ours = animatediff
    ref = setup.pipe
    ref.enable_free_init(**settings)
    ours.enable_free_init(**settings)
    try:
        kwargs = dict(prompt="a cat walking", negative_prompt="blurry", num_inference_steps=3, output_type="np", **call)
        expected = np.asarray(ref(generator=torch.Generator().manual_seed(1), **kwargs).frames)
        got = np.asarray(ours(generator=torch.Generator().manual_seed(1), **kwargs).frames)
        plain_kwargs = dict(kwargs)
        ours.disable_free_init()
        plain = np.asarray(ours(generator=torch.Generator().manual_seed(1), **plain_kwargs).frames)
    finally:
        ref.disable_free_init()
        ours.disable_free_init()
    assert np.abs(expected - got).max() < TOL
    assert np.abs(got - plain).max() > 1e-3  # the re-initialisation changed the video


def test_animatediff_callback_runs_every_round(animatediff):
    _, ours = animatediff
    steps = []
    ours.enable_free_init(num_iters=3, use_fast_sampling=True)
    try:
        ours("a dog", num_frames=3, height=16, width=16, num_inference_steps=6, output_type="latent",
             callback_on_step_end=lambda pipe, i, t, kw: steps.append(i) or {})
    finally:
        ours.disable_free_init()
    assert steps == [0, 1] + [0, 1, 2, 3] + [0, 1, 2, 3, 4, 5]  # 2, 4 then 6 steps (coarse-to-fine)


# -- the other families: one round is the plain run; more rounds run and change it --------------

def _image(seed=0):
    return PIL.Image.fromarray(np.random.RandomState(seed).randint(0, 256, (40, 52, 3), dtype=np.uint8))


def _video(frames=4, seed=0):
    rng = np.random.RandomState(seed)
    return [PIL.Image.fromarray(rng.randint(0, 256, (16, 24, 3), dtype=np.uint8)) for _ in range(frames)]


def _family_runs(tmp_path):
    """(name, pipeline, call kwargs) for ModelScope T2V, V2V, I2VGen-XL and SVD on tiny random models."""
    runs = []
    tiny.build_tiny_t2v_pipeline(tmp_path / "t2v")
    t2v = vidcore.TextToVideoPipeline.from_pretrained(tmp_path / "t2v")
    runs.append(("t2v", t2v, dict(prompt="a cat", num_frames=4, height=16, width=24, num_inference_steps=3)))
    v2v = vidcore.VideoToVideoPipeline(**{name: getattr(t2v, name) for name in t2v.component_names})
    runs.append(("v2v", v2v, dict(prompt="a cat", video=_video(), strength=0.7, num_inference_steps=4)))
    tiny.build_tiny_i2vgen_pipeline(tmp_path / "i2vgen")
    i2v = vidcore.I2VGenXLPipeline.from_pretrained(tmp_path / "i2vgen")
    runs.append(("i2vgen", i2v, dict(prompt="a cat", image=_image(), num_frames=3, height=16, width=24,
                                     num_inference_steps=3)))
    tiny.build_tiny_svd_pipeline(tmp_path / "svd")
    svd = vidcore.StableVideoDiffusionPipeline.from_pretrained(tmp_path / "svd")
    runs.append(("svd", svd, dict(image=_image(), num_frames=3, height=16, width=24, num_inference_steps=3)))
    for _, pipe, _ in runs:
        pipe.set_progress_bar_config(disable=True)
    return runs


def _run(pipe, kwargs, seed=0):
    torch.manual_seed(seed)  # I2VGen-XL's image latents come from the global generator
    return pipe(generator=torch.Generator().manual_seed(seed), output_type="latent", **kwargs).frames


def test_other_families_one_round_is_the_plain_run_and_more_rounds_differ(tmp_path):
    for name, pipe, kwargs in _family_runs(tmp_path):
        plain = _run(pipe, kwargs)
        pipe.enable_free_init(num_iters=1)
        one = _run(pipe, kwargs)
        assert torch.equal(one, plain), name
        pipe.enable_free_init(num_iters=2, method="gaussian")
        calls = []
        hook = pipe.unet.register_forward_hook(lambda *a: calls.append(1))
        try:
            two = _run(pipe, kwargs)
        finally:
            hook.remove()
            pipe.disable_free_init()
        assert torch.isfinite(two).all(), name
        assert (two - plain).abs().max() > 1e-4, name
        steps = len(pipe.scheduler.timesteps) if name != "v2v" else int(kwargs["num_inference_steps"] * 0.7)
        assert len(calls) == 2 * steps, name  # one UNet pass (guidance batched) per step per round
        assert torch.equal(_run(pipe, kwargs), plain), name  # disable_free_init restores the plain run


def test_text2video_zero_refuses_free_init():
    from vidcore.pipelines.text2video_zero import TextToVideoZeroPipeline

    pipe = TextToVideoZeroPipeline.__new__(TextToVideoZeroPipeline)
    with pytest.raises(ValueError, match="TextToVideoZeroPipeline has no FreeInit"):
        pipe.enable_free_init()


# -- CLI ----------------------------------------------------------------------------------------

def test_cli_free_init_forwards_to_the_pipeline(tmp_path, capsys, monkeypatch):
    import vidcore.cli.generate
    from vidcore.cli import main

    tiny.build_tiny_t2v_pipeline(tmp_path / "t2v")
    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video",
                        lambda frames, path, fps: written.append(frames) or str(path))
    argv = ["generate", "text-to-video", "--model", str(tmp_path / "t2v"), "--prompt", "a cat", "--height", "16",
            "--width", "24", "--frames", "3", "--steps", "2", "--device", "cpu", "--no-progress", "--seed", "2",
            "-o", str(tmp_path / "v.mp4"), "--free-init", "2", "--free-init-method", "gaussian", "--free-init-fast"]
    assert main(argv) == 0, capsys.readouterr().err
    pipe = vidcore.TextToVideoPipeline.from_pretrained(tmp_path / "t2v")
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_free_init(num_iters=2, method="gaussian", use_fast_sampling=True)
    expected = pipe("a cat", height=16, width=24, num_frames=3, num_inference_steps=2, guidance_scale=9.0,
                    generator=torch.Generator().manual_seed(2), output_type="np").frames[0]
    assert np.abs(np.asarray(written[0], dtype=np.float64) - expected).max() < 1e-5

    assert main(argv[:-5] + ["--free-init-fast"]) == 2
    assert "apply to --free-init" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # not an option of the Text2Video-Zero tasks
        main(["generate", "text2video-zero", "--model", "x", "--prompt", "a", "--free-init", "2"])
    assert "--free-init" in capsys.readouterr().err
