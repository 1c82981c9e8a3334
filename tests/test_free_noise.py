"""FreeNoise and prompt travel on AnimateDiffPipeline against diffusers' enable_free_noise (same tiny random
SD1.5 model + motion adapter, same seed -> same frames), and the pieces of vidcore.sampling.free_noise."""

import numpy as np
import PIL.Image
import pytest
import tiny_animatediff as ta
import torch

import vidcore
from vidcore.sampling.free_noise import (
    FreeNoiseSettings,
    attention_windows,
    frame_weights,
    reschedule_noise,
    schedule_embeddings,
)

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return ta.build_tiny_animatediff(tmp_path_factory.mktemp("free_noise"))


@pytest.fixture(scope="module")
def ours(setup):
    from vidcore.pipelines.animatediff import animatediff_scheduler

    pipe = vidcore.AnimateDiffPipeline.from_pretrained(
        setup.sd, motion_adapter=setup.adapter,
        scheduler=animatediff_scheduler(setup.sd / "scheduler" / "scheduler_config.json"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def pair(setup, ours):
    """(diffusers pipe, vidcore pipe); FreeNoise switched off again afterwards."""
    yield setup.pipe, ours
    disable_reference(setup.pipe)
    ours.disable_free_noise()


def disable_reference(ref):
    # diffusers' disable_free_noise also walks a mid block without motion modules (and fails there)
    for block in [*ref.unet.down_blocks, *ref.unet.up_blocks]:
        ref._disable_free_noise_in_block(block)
    ref._free_noise_context_length = None


def run(pipe, seed=0, **kwargs):
    kwargs = {"output_type": "np", "height": 16, "width": 16, "num_inference_steps": 2, **kwargs}
    return np.asarray(pipe(generator=torch.Generator().manual_seed(seed), **kwargs).frames)


def compare(ref, ours, tol=TOL, **kwargs):
    expected, got = run(ref, **kwargs), run(ours, **kwargs)
    assert expected.shape == got.shape
    err = np.abs(expected - got).max()
    assert err < tol, f"max abs error {err}"
    return got


# -- parity with diffusers ------------------------------------------------------------------------

@pytest.mark.parametrize("scheme, noise, frames, length, stride", [
    ("pyramid", "shuffle_context", 11, 4, 4),  # odd count; an end-aligned last window adding 3 frames
    ("flat", "random", 9, 5, 3),
    ("delayed_reverse_sawtooth", "repeat_context", 13, 6, 4),
])
def test_free_noise_matches_diffusers(pair, scheme, noise, frames, length, stride):
    ref, ours = pair
    for pipe in pair:
        pipe.enable_free_noise(context_length=length, context_stride=stride, weighting_scheme=scheme, noise_type=noise)
    compare(ref, ours, prompt="a cat walking", negative_prompt="blurry", num_frames=frames)


def test_free_noise_beyond_the_position_table(pair):
    ref, ours = pair
    for pipe in pair:
        pipe.enable_free_noise(context_length=8, context_stride=4)
    # 26 frames > the adapter's 24 positions; no guidance
    compare(ref, ours, prompt="a dog", num_frames=26, guidance_scale=1.0, height=8, width=8)


def test_prompt_travel_matches_diffusers(pair):
    ref, ours = pair
    for pipe in pair:
        pipe.enable_free_noise(context_length=4, context_stride=2)
    compare(ref, ours, prompt={5: "a dog running", 0: "a cat walking"}, negative_prompt={0: "blurry", 3: "dark"},
            num_frames=9)


def test_prompt_interpolation_callback_matches_diffusers(pair):
    ref, ours = pair
    calls = []

    def hold_then_jump(start, end, start_embeds, end_embeds):  # the start prompt until the key frame
        calls.append((start, end))
        return torch.cat([start_embeds] * (end - start) + [end_embeds])

    for pipe in pair:
        pipe.enable_free_noise(context_length=4, context_stride=2, prompt_interpolation_callback=hold_then_jump)
    compare(ref, ours, prompt={0: "a cat", 3: "a dog", 6: "a bird"}, num_frames=8, guidance_scale=1.0)
    assert calls[-3:] == [(0, 3), (3, 6), (6, 7)]


def test_free_noise_with_free_init_matches_diffusers(pair):
    ref, ours = pair
    try:
        for pipe in pair:
            pipe.enable_free_noise(context_length=4, context_stride=2)
            pipe.enable_free_init(num_iters=2)
        compare(ref, ours, prompt={0: "a cat", 4: "a dog"}, num_frames=7)
    finally:
        for pipe in pair:
            pipe.disable_free_init()


def test_match_diffusers_false_repairs_the_tail_weights(pair):
    ref, ours = pair
    ref.enable_free_noise(context_length=4, context_stride=4)
    ours.enable_free_noise(context_length=4, context_stride=4, match_diffusers=False)
    expected, got = run(ref, prompt="a cat", num_frames=7), run(ours, prompt="a cat", num_frames=7)
    assert np.abs(expected - got).max() > 1e-3  # the last 3 frames' weights differ


def test_a_video_in_one_window_is_the_plain_run(ours):
    plain = run(ours, prompt="a cat", negative_prompt="blurry", num_frames=5)
    try:
        for noise in ("shuffle_context", "repeat_context", "random"):
            ours.enable_free_noise(context_length=6, context_stride=2, noise_type=noise)
            assert np.array_equal(run(ours, prompt="a cat", negative_prompt="blurry", num_frames=5), plain)
    finally:
        ours.disable_free_noise()
    windowed = run(ours, prompt="a cat", num_frames=9)
    ours.enable_free_noise(context_length=4, context_stride=2)
    try:
        assert np.abs(run(ours, prompt="a cat", num_frames=9) - windowed).max() > 1e-3  # FreeNoise does something
    finally:
        ours.disable_free_noise()


def test_video_to_video_free_noise_matches_diffusers(setup):
    """AnimateDiff video-to-video: windows and prompt travel, the video's noise not rescheduled (as diffusers)."""
    from diffusers import AnimateDiffVideoToVideoPipeline

    from vidcore.pipelines.animatediff import animatediff_scheduler

    ref = AnimateDiffVideoToVideoPipeline(**setup.pipe.components)
    ref.set_progress_bar_config(disable=True)
    ours = vidcore.AnimateDiffVideoToVideoPipeline.from_pretrained(
        setup.sd, motion_adapter=setup.adapter,
        scheduler=animatediff_scheduler(setup.sd / "scheduler" / "scheduler_config.json"))
    ours.set_progress_bar_config(disable=True)
    rng = np.random.RandomState(0)
    video = [PIL.Image.fromarray(rng.randint(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(9)]
    try:
        for pipe in (ref, ours):
            pipe.enable_free_noise(context_length=4, context_stride=2)
        compare(ref, ours, video=video, prompt={0: "a cat", 5: "a dog"}, negative_prompt="blurry", strength=0.7,
                num_inference_steps=3)
    finally:
        disable_reference(ref)


def test_controlnet_free_noise_matches_diffusers(setup, tmp_path):
    import tiny
    import tiny_controlnet as tc
    from diffusers import AnimateDiffControlNetPipeline, ControlNetModel

    from vidcore.pipelines.animatediff import animatediff_scheduler

    net = tiny.randomize_(ControlNetModel(**tc.tiny_controlnet_config()), 10).eval()
    net.save_pretrained(tmp_path / "controlnet")
    ref = AnimateDiffControlNetPipeline(**setup.pipe.components, controlnet=net)
    ref.set_progress_bar_config(disable=True)
    ours = vidcore.AnimateDiffControlNetPipeline.from_pretrained(
        setup.sd, motion_adapter=setup.adapter, controlnet=tmp_path / "controlnet",
        scheduler=animatediff_scheduler(setup.sd / "scheduler" / "scheduler_config.json"))
    ours.set_progress_bar_config(disable=True)
    try:
        for pipe in (ref, ours):
            pipe.enable_free_noise(context_length=4, context_stride=2)
        # guess mode without guidance (diffusers' AnimateDiff ControlNet fails on guess mode with guidance)
        for guess, guidance in ((False, 7.5), (True, 1.0)):
            compare(ref, ours, prompt={0: "a cat", 5: "a dog"}, num_frames=9, guess_mode=guess, guidance_scale=guidance,
                    conditioning_frames=tc.random_control_frames(9, 16, 16), controlnet_conditioning_scale=0.8)
    finally:
        disable_reference(ref)


# -- the pieces -----------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["flat", "pyramid", "delayed_reverse_sawtooth"])
def test_frame_weights_match_diffusers(scheme):
    from diffusers.models.attention import FreeNoiseTransformerBlock

    block = FreeNoiseTransformerBlock.__new__(FreeNoiseTransformerBlock)
    for n in (4, 6, 16) + ((5, 7) if scheme != "delayed_reverse_sawtooth" else ()):
        assert frame_weights(n, scheme) == block._get_frame_weights(n, scheme)
    assert frame_weights(5, "delayed_reverse_sawtooth") == [0.01, 0.01, 3, 2, 1]  # diffusers builds 6 weights


@pytest.mark.parametrize("frames, length, stride", [(11, 4, 4), (25, 16, 4), (10, 4, 3), (16, 5, 1), (4, 4, 2)])
def test_noise_rescheduling_matches_diffusers(frames, length, stride):
    from diffusers.pipelines.free_noise_utils import AnimateDiffFreeNoiseMixin

    ref = AnimateDiffFreeNoiseMixin()
    ref.vae_scale_factor = 1
    ref._free_noise_context_length, ref._free_noise_context_stride = length, stride
    for noise in ("shuffle_context", "repeat_context", "random"):
        ref._free_noise_noise_type = noise
        expected = ref._prepare_latents_free_noise(2, 3, frames, 2, 2, torch.float32, "cpu",
                                                   torch.Generator().manual_seed(1))
        settings = FreeNoiseSettings(length, stride, noise_type=noise)
        gen = torch.Generator().manual_seed(1)
        got = reschedule_noise(torch.randn(2, 3, frames, 2, 2, generator=gen), frames, settings, gen)
        assert torch.equal(expected, got)
        # SVD's layout (frames second) gives the same noise
        gen = torch.Generator().manual_seed(1)
        svd = reschedule_noise(torch.randn(2, 3, frames, 2, 2, generator=gen).transpose(1, 2), frames, settings,
                               gen, frame_dim=1)
        assert torch.equal(svd.transpose(1, 2), expected)


def test_repeat_context_repaired_and_context_latents():
    settings = FreeNoiseSettings(4, 2, noise_type="repeat_context", match_diffusers=False)
    noise = torch.randn(1, 2, 10, 1, 1)
    out = reschedule_noise(noise, 10, settings)
    assert torch.equal(out[:, :, 4:8], noise[:, :, :4]) and torch.equal(out[:, :, 8:], noise[:, :, :2])
    # latents= with context_length frames: extended (shuffled), the first window kept
    short = noise[:, :, :4]
    shuffled = reschedule_noise(short, 10, FreeNoiseSettings(4, 2), torch.Generator().manual_seed(0))
    assert shuffled.shape[2] == 10 and torch.equal(shuffled[:, :, :4], short)
    assert sorted(shuffled[0, 0, 4:6, 0, 0].tolist()) == sorted(short[0, 0, :2, 0, 0].tolist())
    with pytest.raises(ValueError, match="must have 10 frames"):
        reschedule_noise(short, 10, FreeNoiseSettings(4, 2, noise_type="random"))


def test_windows_and_schedule_helpers():
    assert attention_windows(25, 16, 4) == [(0, 16), (4, 20), (8, 24), (9, 25)]
    assert attention_windows(24, 16, 4) == [(0, 16), (4, 20), (8, 24)]
    assert attention_windows(5, 16, 4) == [(0, 5)]
    keys = torch.tensor([0.0, 1, 2, 2])[:, None, None]
    rows = schedule_embeddings({0: "a", 2: "b", 4: "c"}, 6, lambda prompts: keys[: len(prompts)] if
                               prompts == ["a", "b", "c", "c"] else None)
    assert rows.flatten().tolist() == [0, 0.5, 1, 1.5, 2, 2]


def test_bad_arguments(ours):
    with pytest.raises(ValueError, match="weighting_scheme must be one of"):
        ours.enable_free_noise(weighting_scheme="gauss")
    with pytest.raises(ValueError, match="noise_type must be one of"):
        ours.enable_free_noise(noise_type="fresh")
    with pytest.raises(ValueError, match="context_stride must be an integer between 1 and context_length=4"):
        ours.enable_free_noise(context_length=4, context_stride=5)
    with pytest.raises(ValueError, match="more than the 24 frame positions"):
        ours.enable_free_noise(context_length=32)
    assert not ours.free_noise_enabled
    with pytest.raises(ValueError, match="needs pipe.enable_free_noise"):
        run(ours, prompt={0: "a cat"}, num_frames=3)
    ours.enable_free_noise(context_length=None)
    try:
        assert ours.free_noise.context_length == 24  # motion_max_seq_length
        for prompt, match in [({1: "a"}, "must start at frame 0"), ({0: "a", 3: "b"}, "out of range for num_frames=3"),
                              ({0: 5}, "values must be strings"), ({"0": "a"}, "keys must be integer")]:
            with pytest.raises(ValueError, match=match):
                run(ours, prompt=prompt, num_frames=3)
        with pytest.raises(ValueError, match="context_windows and free_noise do not combine"):
            run(ours, prompt="a", num_frames=3, context_length=2)
    finally:
        ours.disable_free_noise()


def test_split_inference_changes_nothing(pair):
    ref, ours = pair
    for pipe in pair:
        pipe.enable_free_noise(context_length=4, context_stride=2)
    kwargs = {"prompt": {0: "a cat", 4: "a dog"}, "num_frames": 7, "width": 24}
    plain = run(ours, **kwargs)
    plain_short = run(ours, prompt="a cat", num_frames=3)
    # diffusers' split inference cannot run this UNet (its mid block calls the wrapped res blocks positionally,
    # which SplitInferenceModule does not split): compare with its unsplit result
    ours.enable_free_noise_split_inference(spatial_split_size=5, temporal_split_size=3)
    try:
        split = compare(ref, ours, **kwargs)
        assert np.abs(split - plain).max() < 1e-5
        ours.disable_free_noise()  # split inference stays on alone
        assert np.abs(run(ours, prompt="a cat", num_frames=3) - plain_short).max() < 1e-5
    finally:
        ours.disable_free_noise_split_inference()
    assert not any("forward" in vars(m) for m in ours.unet.modules())
    ours.enable_free_noise(context_length=4, context_stride=2)
    assert np.array_equal(run(ours, **kwargs), plain)
    with pytest.raises(ValueError, match="temporal_split_size must be a positive integer"):
        ours.enable_free_noise_split_inference(temporal_split_size=0)
