"""VideoInstructPix2PixPipeline against diffusers' StableDiffusionInstructPix2PixPipeline with
CrossFrameAttnProcessor(batch_size=3) on the frames as a batch (Text2Video-Zero's video editing recipe):
same tiny random 8-channel model, same generator -> same frames."""

import numpy as np
import pytest
import torch

import tiny_zero
import vidcore

TOL = 1e-4
SMALL = dict(num_inference_steps=3)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pix2pix")
    return tiny_zero.build_tiny_pix2pix(folder), folder


@pytest.fixture(scope="module")
def frames():
    return tiny_zero.random_frames(3, 16, 24)


def load(folder, **kwargs):
    pipe = vidcore.VideoInstructPix2PixPipeline.from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check(ref, ours, frames, prompt="make it snowy", seed=0, batch_size=3, **kwargs):
    expected = tiny_zero.pix2pix_reference(ref, frames, prompt, batch_size=batch_size,
                                           generator=torch.Generator().manual_seed(seed), **kwargs)
    got = ours(prompt=prompt, video=frames, output_type="np", generator=torch.Generator().manual_seed(seed),
               **kwargs).frames
    assert got.shape == (1, *expected.shape)
    err = np.abs(got[0] - expected).max()
    assert err < TOL, f"max abs error {err}"
    return got


def test_default_scheduler_and_parity(setup, frames):
    from diffusers import EulerAncestralDiscreteScheduler

    ref, folder = setup
    ours = load(folder)
    # the stored Euler ancestral sampler, as diffusers: one noise draw per step from the generator
    assert type(ours.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    ref.scheduler = EulerAncestralDiscreteScheduler.from_config(tiny_zero.PIX2PIX_SCHEDULER_CONFIG)
    got = check(ref, ours, frames, **SMALL)
    assert got.shape == (1, 3, 16, 24, 3)
    # cross-frame attention matters: independent per-frame edits differ
    alone = ours(prompt="make it snowy", video=frames, output_type="np", cross_frame_attention=False,
                 generator=torch.Generator().manual_seed(0), **SMALL).frames
    assert np.abs(alone - got).max() > 1e-3


def test_euler_override_parity(setup, frames):
    from diffusers import EulerDiscreteScheduler

    ref, folder = setup
    ref.scheduler = EulerDiscreteScheduler.from_config(tiny_zero.PIX2PIX_SCHEDULER_CONFIG)
    euler = vidcore.schedulers.EulerDiscreteScheduler.from_config(tiny_zero.PIX2PIX_SCHEDULER_CONFIG)
    ours = load(folder, scheduler=euler)
    assert ours.scheduler is euler
    check(ref, ours, frames, seed=6, **SMALL)


def test_independent_frames_equal_plain_pix2pix(setup, frames):
    from diffusers import EulerAncestralDiscreteScheduler

    ref, folder = setup
    ref.scheduler = EulerAncestralDiscreteScheduler.from_config(tiny_zero.PIX2PIX_SCHEDULER_CONFIG)
    ours = load(folder)
    expected = ref(prompt=["x"] * 3, image=frames, output_type="np", generator=torch.Generator().manual_seed(2),
                   **SMALL).images
    got = ours(prompt="x", video=frames, output_type="np", cross_frame_attention=False,
               generator=torch.Generator().manual_seed(2), **SMALL).frames
    assert np.abs(got[0] - expected).max() < TOL


def test_ddim_eta_negative_prompt_and_scales(setup, frames):
    from diffusers import DDIMScheduler

    ref, folder = setup
    ref.scheduler = DDIMScheduler.from_config(tiny_zero.PIX2PIX_SCHEDULER_CONFIG)
    ours = load(folder, scheduler=vidcore.schedulers.DDIMScheduler.from_config(tiny_zero.PIX2PIX_SCHEDULER_CONFIG))
    check(ref, ours, frames, seed=4, negative_prompt="blurry", eta=0.5, guidance_scale=5.0,
          image_guidance_scale=2.0, num_inference_steps=4)


def test_without_guidance(setup, frames):
    from diffusers import DDIMScheduler

    ref, folder = setup
    ref.scheduler = DDIMScheduler.from_config(tiny_zero.PIX2PIX_SCHEDULER_CONFIG)
    ours = load(folder, scheduler=vidcore.schedulers.DDIMScheduler.from_config(tiny_zero.PIX2PIX_SCHEDULER_CONFIG))
    # image_guidance_scale < 1 turns guidance off: one branch, so the recipe's processor groups are 1
    check(ref, ours, frames, seed=1, batch_size=1, image_guidance_scale=0.5, **SMALL)


def test_video_file_and_latent_output(setup, frames, tmp_path):
    _, folder = setup
    ours = load(folder)
    path = vidcore.export_to_gif(frames, str(tmp_path / "in.gif"))
    decoded = vidcore.load_video(path)
    a = ours(prompt="x", video=path, output_type="latent", generator=torch.Generator().manual_seed(0), **SMALL)
    b = ours(prompt="x", video=decoded, output_type="latent", generator=torch.Generator().manual_seed(0), **SMALL)
    assert a.frames.shape == (1, 4, 3, 8, 12) and torch.equal(a.frames, b.frames)


def test_prompt_embeds_and_several_videos(setup, frames):
    _, folder = setup
    # a deterministic sampler: Euler ancestral's per-step noise for two videos is not two single runs' noise
    euler = vidcore.schedulers.EulerDiscreteScheduler.from_config(tiny_zero.PIX2PIX_SCHEDULER_CONFIG)
    ours = load(folder, scheduler=euler)
    pe = vidcore.pipelines.text.clip_embed(ours.tokenizer, ours.text_encoder, ["x"], "cpu")
    one = ours(prompt="x", video=frames, output_type="np", generator=torch.Generator().manual_seed(0), **SMALL)
    emb = ours(prompt_embeds=pe, video=frames, output_type="np", generator=torch.Generator().manual_seed(0), **SMALL)
    assert np.abs(one.frames - emb.frames).max() < 1e-6
    two = ours(prompt="x", video=frames, output_type="pt", num_videos_per_prompt=2,
               generator=torch.Generator().manual_seed(0), **SMALL).frames
    assert two.shape == (2, 3, 3, 16, 24)
    # the first video draws the same noise rows as a single run
    assert torch.allclose(two[0], torch.as_tensor(one.frames[0]).permute(0, 3, 1, 2), atol=1e-5)


def test_errors(setup, frames, tmp_path):
    _, folder = setup
    ours = load(folder)
    with pytest.raises(ValueError, match="video is required"):
        ours(prompt="x", **SMALL)
    with pytest.raises(ValueError, match="latents must have shape"):
        ours(prompt="x", video=frames, latents=torch.zeros(1, 4, 2, 8, 12), **SMALL)
    tiny_zero.build_tiny_sd(tmp_path / "sd")
    with pytest.raises(ValueError, match="8-channel"):
        load(tmp_path / "sd")(prompt="x", video=frames, **SMALL)
