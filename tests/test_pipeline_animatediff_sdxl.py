"""AnimateDiffSDXLPipeline against diffusers' AnimateDiffSDXLPipeline (same tiny random SDXL model + motion
adapter, same seed -> same frames): two text encoders, pooled embeddings, micro-conditioning sizes,
guidance_rescale, clip_skip, force_zeros_for_empty_prompt; loading an SDXL folder and a saved
AnimateDiffSDXLPipeline folder; clear errors."""

import numpy as np
import pytest
import torch

import tiny
import tiny_sdxl
import vidcore

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_sdxl.build_tiny_animatediff_sdxl(tmp_path_factory.mktemp("animatediff_sdxl"))


@pytest.fixture(scope="module")
def ours(setup):
    pipe = vidcore.AnimateDiffSDXLPipeline.from_pretrained(setup.sdxl, motion_adapter=setup.adapter)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def compare(ref, ours, seed=0, **kwargs):
    kwargs.setdefault("output_type", "np")
    expected = np.asarray(ref(generator=torch.Generator().manual_seed(seed), **kwargs).frames)
    got = np.asarray(ours(generator=torch.Generator().manual_seed(seed), **kwargs).frames)
    assert expected.shape == got.shape
    err = np.abs(expected - got).max()
    assert err < TOL, f"max abs error {err}"
    return got


SMALL = dict(num_frames=5, height=16, width=24, num_inference_steps=3)  # odd frame count, non-square


def test_stored_euler_two_prompts_and_negatives(setup, ours):
    assert type(ours.scheduler).__name__ == "EulerDiscreteScheduler"
    assert ours.force_zeros_for_empty_prompt
    frames = compare(setup.pipe, ours, prompt="a cat walking", prompt_2="in the snow", negative_prompt="blurry",
                     negative_prompt_2="dark", **SMALL)
    assert frames.shape == (1, 5, 16, 24, 3)
    # two prompts with their own negatives (the time ids are the same for every row of the guidance batch)
    frames = compare(setup.pipe, ours, prompt=["a cat", "a dog"], negative_prompt=["blurry", "dark"], num_frames=2,
                     height=16, width=16, num_inference_steps=1, seed=4)
    assert frames.shape[0] == 2


def test_zero_negatives_sizes_rescale_clip_skip_ddim(setup, ours):
    from diffusers import DDIMScheduler

    from vidcore.pipelines.animatediff import animatediff_scheduler

    saved, saved_ours = setup.pipe.scheduler, ours.scheduler
    ours.scheduler = animatediff_scheduler(setup.sdxl / "scheduler" / "scheduler_config.json")
    setup.pipe.scheduler = DDIMScheduler.from_config(saved.config, clip_sample=False, timestep_spacing="linspace",
                                                     beta_schedule="linear", steps_offset=1)
    try:
        # no negative prompt: zeros (force_zeros_for_empty_prompt); micro-conditioning and guidance rescale
        compare(setup.pipe, ours, prompt="a dog", num_frames=3, height=24, width=16, num_inference_steps=3,
                guidance_rescale=0.7, original_size=(48, 64), crops_coords_top_left=(4, 8), target_size=(32, 40),
                negative_original_size=(16, 16), negative_target_size=(24, 24), clip_skip=1, eta=0.5,
                denoising_end=0.6, seed=3)
    finally:
        setup.pipe.scheduler, ours.scheduler = saved, saved_ours


def test_saved_pipeline_folder_and_embeds(setup, ours, tmp_path):
    """A saved diffusers AnimateDiffSDXLPipeline (unet/ a UNetMotionModel with text_time) loads alone."""
    setup.pipe.save_pretrained(tmp_path / "saved")
    again = vidcore.AnimateDiffSDXLPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(1)
    embeds = dict(prompt_embeds=torch.randn(1, 77, 40, generator=g), pooled_prompt_embeds=torch.randn(1, 20, generator=g),
                  negative_prompt_embeds=torch.randn(1, 77, 40, generator=g),
                  negative_pooled_prompt_embeds=torch.randn(1, 20, generator=g))
    compare(setup.pipe, again, num_frames=4, height=16, width=16, num_inference_steps=2, seed=5, **embeds)
    latents = again(prompt="x", num_frames=2, height=16, width=16, num_inference_steps=1, guidance_scale=1.0,
                    output_type="latent").frames
    assert latents.shape == (1, 4, 2, 8, 8)


def test_errors(setup, ours):
    with pytest.raises(ValueError, match="AnimateDiffSDXLPipeline has no FreeNoise"):
        ours.enable_free_noise()
    with pytest.raises(ValueError, match="pooled_prompt_embeds"):
        ours(prompt_embeds=torch.zeros(1, 77, 40), num_frames=2, height=16, width=16, num_inference_steps=1)
    from vidcore.errors import ConfigError

    with pytest.raises(ValueError, match="an SD1.5 motion adapter cannot animate an SDXL UNet"):
        vidcore.AnimateDiffSDXLPipeline(ours.tokenizer, ours.tokenizer_2, ours.text_encoder, ours.text_encoder_2,
                                        ours.unet.unet, ours.vae, ours.scheduler, motion_adapter=_sd15_adapter())
    with pytest.raises(ConfigError, match="needs an SDXL UNet"):
        vidcore.AnimateDiffSDXLPipeline(ours.tokenizer, ours.tokenizer_2, ours.text_encoder, ours.text_encoder_2,
                                        _sd15_unet(), ours.vae, ours.scheduler, motion_adapter=_sd15_adapter())


def _sd15_adapter():
    from vidcore.models.motion import MotionAdapter, MotionAdapterConfig

    return MotionAdapter(MotionAdapterConfig.from_diffusers_config(tiny.tiny_motion_adapter_config()))


def _sd15_unet():
    from vidcore.models.unet2d import UNet2D, UNet2DConfig

    return UNet2D(UNet2DConfig.from_diffusers_config(tiny.tiny_unet2d_config()))


def test_original_ckpt_adapter_and_readme_recipe(setup, ours, tmp_path):
    """The adapter as an original AnimateDiff file (mm_sdxl_v10_beta.ckpt layout) and the sampler swap of docs/families/animatediff.md."""
    from vidcore.loading import save_original
    from vidcore.pipelines.animatediff import animatediff_scheduler

    save_original(ours.motion_adapter, tmp_path / "mm_sdxl.ckpt")
    # the toy adapter's head count and norm groups are not the released ones (8, 32), so its config is passed
    adapter = vidcore.load_model(tmp_path / "mm_sdxl.ckpt", config_from=setup.adapter)
    pipe = vidcore.AnimateDiffSDXLPipeline.from_pretrained(setup.sdxl, motion_adapter=adapter)
    for (name, a), b in zip(ours.motion_adapter.state_dict().items(), pipe.motion_adapter.state_dict().values()):
        assert torch.equal(a, b), name
    pipe.scheduler = animatediff_scheduler(pipe.scheduler.to_diffusers_config())
    assert type(pipe.scheduler).__name__ == "DDIMScheduler" and pipe.scheduler.config.beta_schedule == "linear"
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a panda", negative_prompt="low quality", num_frames=2, height=16, width=16,
                  num_inference_steps=1, generator=torch.manual_seed(42)).frames[0]
    vidcore.export_to_gif(frames, tmp_path / "panda.gif")
    assert (tmp_path / "panda.gif").stat().st_size > 0


def test_free_init_equals_diffusers_and_context_windows_run(setup, ours):
    from diffusers import DDIMScheduler

    from vidcore.pipelines.animatediff import animatediff_scheduler

    # with DDIM (diffusers' FreeInit re-noising fails on its Euler scheduler: an index error)
    settings = dict(num_iters=2, use_fast_sampling=False)
    saved, saved_ours = setup.pipe.scheduler, ours.scheduler
    setup.pipe.scheduler = DDIMScheduler.from_config(saved.config, clip_sample=False, timestep_spacing="linspace",
                                                     beta_schedule="linear", steps_offset=1)
    ours.scheduler = animatediff_scheduler(setup.sdxl / "scheduler" / "scheduler_config.json")
    setup.pipe.enable_free_init(**settings)
    ours.enable_free_init(**settings)
    try:
        compare(setup.pipe, ours, prompt="a cat", negative_prompt="blurry", num_frames=3, height=16, width=16,
                num_inference_steps=2, seed=1)
    finally:
        setup.pipe.disable_free_init()
        ours.disable_free_init()
        setup.pipe.scheduler, ours.scheduler = saved, saved_ours
    # sliding windows over the frames (the micro-conditioning is per video, shared by every window)
    kw = dict(prompt="waves", num_frames=5, height=16, width=16, num_inference_steps=1, output_type="np")
    whole = ours(generator=torch.Generator().manual_seed(2), **kw).frames
    one_window = ours(generator=torch.Generator().manual_seed(2), context_length=5, **kw).frames
    windows = ours(generator=torch.Generator().manual_seed(2), context_length=3, context_stride=2, **kw).frames
    assert np.array_equal(whole, one_window) and windows.shape == whole.shape
    assert np.abs(windows - whole).max() > 1e-4
