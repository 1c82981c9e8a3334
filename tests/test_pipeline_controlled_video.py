"""ControlledVideoPipeline (Text2Video-Zero + ControlNet) against diffusers' StableDiffusionControlNetPipeline
running Text2Video-Zero's recipe (CrossFrameAttnProcessor on UNet and ControlNet, prompt repeated per frame,
noise shared over frames) on tiny random models: same frames. Plus loading paths and input errors."""

import numpy as np
import pytest
import torch

import tiny_controlnet as tc
from vidcore.errors import ModelNotFoundError
from vidcore.nn.attention import Attention
from vidcore.pipelines.controlled_video import ControlledVideoPipeline

TOL = 1e-4  # max abs difference of np frames in [0, 1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tc.build_tiny_controlled(tmp_path_factory.mktemp("controlled"))


@pytest.fixture(scope="module")
def ours(setup):
    pipe = ControlledVideoPipeline.from_pretrained(setup.sd, controlnet=setup.controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, frames, prompt, seed=0, **kwargs):
    kwargs.setdefault("output_type", "np")
    return pipe(prompt, frames, generator=torch.Generator().manual_seed(seed), **kwargs).frames


def check(expected, got, tol=TOL):
    expected, got = np.asarray(expected), np.asarray(got)
    assert expected.shape == got.shape
    err = np.abs(expected - got).max()
    assert err < tol, f"max abs error {err}"


def test_guided_with_negative_prompt_matches_the_recipe(setup, ours):
    frames = tc.random_control_frames(3, 16, 24, seed=1)
    kw = dict(num_inference_steps=3, controlnet_conditioning_scale=0.8)
    expected = tc.reference_frames(setup.pipe, frames, "a dancer", "blurry", seed=4, **kw)
    got = run(ours, frames, "a dancer", negative_prompt="blurry", seed=4, **kw)
    assert got.shape == (1, 3, 16, 24, 3)
    check(expected, got[0])
    # frames share their start but follow their control images
    assert np.abs(got[0, 0] - got[0, 1]).max() > 1e-3


def test_guess_mode(setup, ours):
    frames = tc.random_control_frames(4, 16, 16, seed=2)
    kw = dict(num_inference_steps=2, guess_mode=True, guidance_scale=4.0)
    got = run(ours, frames, "a robot", seed=1, **kw)
    # diffusers runs the ControlNet on the 4 conditional frames only: the processor must group them as one video
    expected = tc.reference_frames(setup.pipe, frames, "a robot", seed=1, controlnet_batch_size=1, **kw)
    check(expected, got[0])
    # the recipe's batch_size=2 would split those frames into two "videos" (see the module docstring)
    split = tc.reference_frames(setup.pipe, frames, "a robot", seed=1, **kw)
    assert np.abs(split - got[0]).max() > 1e-4


def test_scale_guidance_window_eta_and_resizing(setup, ours):
    # 20 x 28 control images resized to 16 x 24 (Lanczos, as diffusers), eta > 0 draws noise every step
    frames = tc.random_control_frames(2, 20, 28, seed=3)
    kw = dict(num_inference_steps=4, controlnet_conditioning_scale=0.5, control_guidance_start=0.2,
              control_guidance_end=0.7, eta=0.6, height=16, width=24)
    expected = tc.reference_frames(setup.pipe, frames, "rain", seed=7, **kw)
    check(expected, run(ours, frames, "rain", seed=7, **kw)[0])


def test_no_guidance_per_frame_latents_and_latent_output(setup, ours):
    frames = tc.random_control_frames(3, 16, 16, seed=5)
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    kw = dict(num_inference_steps=2, guidance_scale=1.0)
    expected = tc.reference_frames(setup.pipe, frames, "x", latents=latents, **kw)
    check(expected, run(ours, frames, "x", latents=latents, **kw)[0])
    lat = ours("x", frames, latents=latents[:1], output_type="latent", **kw).frames
    assert lat.shape == (1, 4, 3, 8, 8)
    ref_lat = tc.reference_frames(setup.pipe, frames, "x", latents=latents[:1].repeat(3, 1, 1, 1),
                                  output_type="latent", **kw)
    assert (ref_lat.permute(1, 0, 2, 3)[None] - lat).abs().max() < 1e-4


def test_num_videos_per_prompt(setup, ours):
    """Each video is its own group for cross-frame attention: two videos at once equal two separate calls."""
    frames = tc.random_control_frames(3, 16, 16, seed=8)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    kw = dict(num_inference_steps=2, guidance_scale=3.0, output_type="np")
    both = ours("a bird", frames, num_videos_per_prompt=2, latents=latents, **kw).frames
    assert both.shape == (2, 3, 16, 16, 3)
    for i in range(2):
        one = ours("a bird", frames, latents=latents[i:i + 1], **kw).frames
        check(one[0], both[i], tol=1e-5)
    assert np.abs(both[0] - both[1]).max() > 1e-3
    drawn = ours("a bird", frames, num_videos_per_prompt=2, generator=torch.Generator().manual_seed(0), **kw).frames
    assert drawn.shape == (2, 3, 16, 16, 3) and np.abs(drawn[0] - drawn[1]).max() > 1e-3
    kw.pop("output_type")
    pt = ours("a bird", frames, num_videos_per_prompt=2, latents=latents, output_type="pt", **kw).frames
    assert pt.shape == (2, 3, 3, 16, 16) and torch.allclose(pt.permute(0, 1, 3, 4, 2), torch.from_numpy(both))
    pil = ours("a bird", frames, latents=latents[:1], **kw).frames  # diffusers' default output: PIL
    assert len(pil) == 1 and len(pil[0]) == 3 and pil[0][0].size == (16, 16)


def test_cross_frame_attention_is_on_during_the_call_and_restored(setup, ours):
    frames = tc.random_control_frames(3, 16, 16, seed=6)
    seen = []

    def probe(pipe, i, t, tensors):
        seen.append({m.cross_frame for model in (pipe.unet, pipe.controlnet) for m in model.modules()
                     if isinstance(m, Attention)})
        return {"latents": tensors["latents"]}

    on = run(ours, frames, "a cat", num_inference_steps=2, callback_on_step_end=probe)
    assert seen == [{(3, 0)}, {(3, 0)}]
    assert all(m.cross_frame is None for m in ours.unet.modules() if isinstance(m, Attention))
    off = run(ours, frames, "a cat", num_inference_steps=2, cross_frame_attention=False)
    assert np.abs(on - off).max() > 1e-3


def test_from_a_saved_controlnet_pipeline_folder_and_module(setup, ours):
    from_folder = ControlledVideoPipeline.from_pretrained(setup.sd)  # its own controlnet/
    module = ControlledVideoPipeline.from_pretrained(setup.sd, controlnet=ours.controlnet)
    assert module.controlnet is ours.controlnet
    for key, value in ours.controlnet.state_dict().items():
        assert torch.equal(value, from_folder.controlnet.state_dict()[key])


def test_bad_inputs_are_clear_errors(setup, ours):
    frames = tc.random_control_frames(3, 16, 16)
    with pytest.raises(ValueError, match="video_length=4 but conditioning_frames holds 3 control images"):
        ours("a", frames, video_length=4, num_inference_steps=1)
    with pytest.raises(ValueError, match="differ in size"):
        ours("a", frames[:2] + tc.random_control_frames(1, 16, 24), num_inference_steps=1)
    with pytest.raises(ValueError, match="multiples of 8, got height=12"):
        ours("a", frames, height=12, width=16, num_inference_steps=1)
    with pytest.raises(ValueError, match="multiples of 8, got height=20, width=16 .*conditioning frames"):
        ours("a", tc.random_control_frames(2, 20, 16), num_inference_steps=1, output_type="latent")
    with pytest.raises(ValueError, match=r"latents must have shape \(1, 4, 8, 8\)"):
        ours("a", frames, latents=torch.zeros(2, 4, 8, 8), num_inference_steps=1)
    with pytest.raises(ValueError, match="conditioning_frames is required"):
        ours("a", None)
    with pytest.raises(ValueError, match="one image per frame"):
        ours("a", frames[0])
    with pytest.raises(TypeError, match="prompt must be one string"):
        ours(["a", "b"], frames)
    with pytest.raises(ValueError, match="conditioning_frames have 3 channels; the ControlNet takes 1"):
        bad = ControlledVideoPipeline.from_pretrained(setup.sd)
        bad.controlnet.config = type(bad.controlnet.config)(**{**bad.controlnet.config.__dict__,
                                                                "conditioning_channels": 1})
        bad("a", frames, num_inference_steps=1)


def test_mismatched_controlnet_and_missing_controlnet(setup, tmp_path):
    from diffusers import ControlNetModel

    import tiny

    wide = tiny.randomize_(ControlNetModel(**tc.tiny_controlnet_config(block_out_channels=(32, 96))), 0)
    wide.save_pretrained(tmp_path / "wide")
    with pytest.raises(ValueError, match="controlnet does not fit the unet"):
        ControlledVideoPipeline.from_pretrained(setup.sd, controlnet=tmp_path / "wide")
    plain = tmp_path / "plain"
    import shutil

    shutil.copytree(setup.sd, plain)
    shutil.rmtree(plain / "controlnet")
    with pytest.raises(ModelNotFoundError, match="pass controlnet="):
        ControlledVideoPipeline.from_pretrained(plain)
    with pytest.raises(ModelNotFoundError, match="not a ControlNet"):
        ControlledVideoPipeline.from_pretrained(setup.sd, controlnet=plain / "unet")


def test_stored_pndm_scheduler_matches_diffusers_with_pndm(setup, tmp_path):
    """An SD1.5 folder's stored scheduler is PNDM (runwayml/stable-diffusion-v1-5): used as diffusers does."""
    import json
    import shutil

    import diffusers
    from tiny_animatediff import SD15_SCHEDULER_CONFIG

    folder = tmp_path / "sd"
    shutil.copytree(setup.sd, folder)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER_CONFIG))
    pipe = ControlledVideoPipeline.from_pretrained(folder, controlnet=setup.controlnet)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    frames = tc.random_control_frames(3, 16, 24, seed=2)
    saved = setup.pipe.scheduler
    setup.pipe.scheduler = diffusers.PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    try:
        expected = tc.reference_frames(setup.pipe, frames, "a dancer", "blurry", seed=5, num_inference_steps=4)
    finally:
        setup.pipe.scheduler = saved
    check(expected, run(pipe, frames, "a dancer", negative_prompt="blurry", seed=5, num_inference_steps=4)[0])
