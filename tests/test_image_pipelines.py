"""diffusers' Stable Diffusion image pipelines in vidcore (StableDiffusionPipeline, StableDiffusionControlNetPipeline,
StableDiffusionInstructPix2PixPipeline) against diffusers' own, loaded from the same tiny random folders, in float32:
the Text2Video-Zero recipes of the guide (one prompt per frame, latents shared over frames, CrossFrameAttnProcessor
on the UNet and the ControlNet, guess mode included) give the same images; AttnProcessor() restores the default
outputs bit for bit. Plus the processors on the models (names, dicts, errors, the video UNets) and loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tiny
import tiny_controlnet as tc
import tiny_zero
import vidcore
from vidcore.nn.attention import Attention, cross_frame_attention

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-4  # max abs difference of np images in [0, 1]
FRAMES = 3
H, W = 16, 24
PROMPTS = ["a cat dancing", "a cat jumping", "a cat sleeping"]


def diffusers_cross_frame(batch_size):
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
        CrossFrameAttnProcessor)

    return CrossFrameAttnProcessor(batch_size=batch_size)


def set_processors(ref_models, our_models, batch_size):
    """CrossFrameAttnProcessor(batch_size) on both sides (None: diffusers' default processors back, vidcore's
    AttnProcessor())."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    for m in ref_models:
        m.set_attn_processor(AttnProcessor2_0() if batch_size is None else diffusers_cross_frame(batch_size))
    for m in our_models:
        m.set_attn_processor(vidcore.AttnProcessor() if batch_size is None
                             else vidcore.CrossFrameAttnProcessor(batch_size=batch_size))


def shared_latents(seed=0, channels=4, scale=2):
    """The guide's latents: one draw repeated for every frame."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((1, channels, H // scale, W // scale), generator=g).repeat(FRAMES, 1, 1, 1)


def check(expected, got, tol=TOL):
    expected, got = np.asarray(expected), np.asarray(got)
    assert expected.shape == got.shape, (expected.shape, got.shape)
    err = np.abs(expected - got).max()
    assert err < tol, f"max abs error {err}"


def both(ref, ours, seed=0, **kwargs):
    """(diffusers' images, vidcore's images) for the same call and seed."""
    out = []
    for pipe in (ref, ours):
        out.append(pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images)
    return out


# -- fixtures ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd")
    ref = tiny_zero.build_tiny_sd(folder)  # PNDM, as SD1.5 ships
    ours = vidcore.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    ours.set_progress_bar_config(disable=True)
    return ref, ours, folder


@pytest.fixture(scope="module")
def controlled(tmp_path_factory):
    setup = tc.build_tiny_controlled(tmp_path_factory.mktemp("controlnet"))  # DDIM
    controlnet = vidcore.ControlNetModel.from_pretrained(setup.controlnet, torch_dtype=torch.float32)
    ours = vidcore.StableDiffusionControlNetPipeline.from_pretrained(setup.sd, controlnet=controlnet,
                                                                     torch_dtype=torch.float32)
    ours.set_progress_bar_config(disable=True)
    return setup.pipe, ours, setup


@pytest.fixture(scope="module")
def pix2pix(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pix2pix")
    ref = tiny_zero.build_tiny_pix2pix(folder)  # Euler ancestral: a noise draw per step
    ours = vidcore.StableDiffusionInstructPix2PixPipeline.from_pretrained(folder)
    ours.set_progress_bar_config(disable=True)
    return ref, ours, folder


# -- StableDiffusionPipeline -------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [None, 2])
def test_sd_frames_with_shared_latents(sd, batch_size):
    ref, ours, _ = sd
    set_processors([ref.unet], [ours.unet], batch_size)
    try:
        expected, got = both(ref, ours, prompt=PROMPTS, latents=shared_latents(), height=H, width=W,
                             num_inference_steps=3, output_type="np")
    finally:
        set_processors([ref.unet], [ours.unet], None)
    assert got.shape == (FRAMES, H, W, 3)
    check(expected, got)


def test_sd_generator_negative_prompt_images_per_prompt_and_output_types(sd):
    ref, ours, _ = sd
    kwargs = dict(prompt=["a red car", "a blue boat"], negative_prompt=["blurry", "dark"], num_images_per_prompt=2,
                  height=H, width=W, num_inference_steps=2, eta=0.5, guidance_scale=5.0, guidance_rescale=0.3)
    expected, got = both(ref, ours, seed=3, output_type="np", **kwargs)
    assert got.shape == (4, H, W, 3)
    check(expected, got)
    pil = ours(generator=torch.Generator().manual_seed(3), **kwargs).images  # default "pil"
    assert isinstance(pil, list) and len(pil) == 4 and pil[0].size == (W, H)
    check(np.stack([np.asarray(p) for p in pil]), (got * 255).round().astype(np.uint8), tol=1)
    pt = ours(generator=torch.Generator().manual_seed(3), output_type="pt", **kwargs).images
    check(pt.permute(0, 2, 3, 1).numpy(), got, tol=1e-6)
    expected_latents, latents = both(ref, ours, seed=3, output_type="latent", **kwargs)
    check(expected_latents, latents, tol=1e-4)
    assert ours(generator=torch.Generator().manual_seed(3), output_type="np", return_dict=False, **kwargs)[1] is None


def test_sd_without_guidance_and_prompt_embeds(sd):
    ref, ours, _ = sd
    embeds = torch.randn(FRAMES, 77, 24, generator=torch.Generator().manual_seed(5))
    expected, got = both(ref, ours, prompt_embeds=embeds, guidance_scale=1.0, latents=shared_latents(1), height=H,
                         width=W, num_inference_steps=2, output_type="np")
    check(expected, got)


def test_sd_callback_on_step_end_sees_and_replaces_diffusers_tensors(sd):
    """``prompt_embeds`` in the callback is the guidance batch the UNet reads, as in diffusers; replacing it counts
    from the next step."""
    ref, ours, _ = sd
    seen = {}

    def callback(pipe, i, t, tensors):
        seen.setdefault(type(pipe).__module__.split(".")[0], []).append(tensors["latents"].clone())
        return {"prompt_embeds": tensors["prompt_embeds"] * 0.5} if i == 0 else {}

    expected, got = both(ref, ours, prompt=PROMPTS[:2], height=H, width=W, num_inference_steps=3, output_type="np",
                         callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    check(expected, got)
    assert len(seen["diffusers"]) == len(seen["vidcore"]) == len(ref.scheduler.timesteps)  # PNDM: 4 for 3 steps
    for a, b in zip(seen["diffusers"], seen["vidcore"]):
        check(a, b)
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        ours(prompt="x", callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["image"])


# -- StableDiffusionControlNetPipeline ---------------------------------------------------------------------------

@pytest.mark.parametrize("guess_mode", [False, True], ids=["plain", "guess_mode"])
@pytest.mark.parametrize("batch_size", [None, 2], ids=["default", "cross_frame"])
def test_controlnet_recipe(controlled, batch_size, guess_mode):
    """The guide's pose / edge recipe: CrossFrameAttnProcessor(batch_size=2) on the UNet and the ControlNet (in
    guess mode the ControlNet sees only the conditional frames and diffusers' split still makes two groups)."""
    ref, ours, _ = controlled
    images = tc.random_control_frames(FRAMES, H, W, seed=2)
    set_processors([ref.unet, ref.controlnet], [ours.unet, ours.controlnet], batch_size)
    try:
        expected, got = both(ref, ours, prompt=PROMPTS, image=images, latents=shared_latents(), guess_mode=guess_mode,
                             num_inference_steps=3, output_type="np", controlnet_conditioning_scale=0.8)
    finally:
        set_processors([ref.unet, ref.controlnet], [ours.unet, ours.controlnet], None)
    assert got.shape == (FRAMES, H, W, 3)
    check(expected, got)


def test_controlnet_guess_mode_splits_the_conditional_frames_in_two_groups(controlled):
    """4 frames in guess mode: the ControlNet's batch is the 4 conditional frames, which batch_size=2 splits into
    frames 0-1 and 2-3 (the second group attends to frame 2), exactly as diffusers."""
    ref, ours, _ = controlled
    n = 4
    latents = shared_latents(3)[:1].repeat(n, 1, 1, 1)
    kwargs = dict(prompt=["a robot"] * n, image=tc.random_control_frames(n, H, W, seed=5), latents=latents,
                  guess_mode=True, num_inference_steps=2, output_type="np")
    set_processors([ref.unet, ref.controlnet], [ours.unet, ours.controlnet], 2)
    try:
        expected, got = both(ref, ours, **kwargs)
        ours.controlnet.set_attn_processor(vidcore.CrossFrameAttnProcessor(batch_size=1))  # frame 0 for all
        frame0 = ours(generator=torch.Generator().manual_seed(0), **kwargs).images
    finally:
        set_processors([ref.unet, ref.controlnet], [ours.unet, ours.controlnet], None)
    check(expected, got)
    assert np.abs(frame0 - got)[2:].max() > 1e-4 and np.abs(frame0 - got)[:2].max() < 1e-6


def test_controlnet_one_image_guidance_window_and_images_per_prompt(controlled):
    ref, ours, _ = controlled
    image = tc.random_control_frames(1, H, W, seed=4)[0]
    kwargs = dict(prompt=["a dancer", "a robot"], image=image, num_images_per_prompt=2, negative_prompt=["x", "y"],
                  num_inference_steps=4, control_guidance_start=0.2, control_guidance_end=[0.7], eta=1.0,
                  output_type="np")
    expected, got = both(ref, ours, seed=7, **kwargs)
    assert got.shape == (4, H, W, 3)
    check(expected, got)


# -- StableDiffusionInstructPix2PixPipeline ----------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [None, 3])
def test_pix2pix_recipe(pix2pix, batch_size):
    """The guide's video edit: the frames as images, the instruction repeated, CrossFrameAttnProcessor(3)."""
    ref, ours, _ = pix2pix
    frames = tiny_zero.random_frames(FRAMES, H, W)
    set_processors([ref.unet], [ours.unet], batch_size)
    try:
        expected, got = both(ref, ours, prompt=["make it snowy"] * FRAMES, image=frames, num_inference_steps=3,
                             output_type="np")
        # the guide's shared latents too
        expected_shared, got_shared = both(ref, ours, prompt=["make it snowy"] * FRAMES, image=frames,
                                           latents=shared_latents(2), num_inference_steps=2, output_type="np")
    finally:
        set_processors([ref.unet], [ours.unet], None)
    assert got.shape == (FRAMES, H, W, 3)
    check(expected, got)
    check(expected_shared, got_shared)


def test_pix2pix_one_image_several_per_prompt_and_no_guidance(pix2pix):
    ref, ours, _ = pix2pix
    image = tiny_zero.random_frames(1, H, W, seed=3)[0]
    expected, got = both(ref, ours, seed=4, prompt="make it red", image=image, num_images_per_prompt=2,
                         image_guidance_scale=1.2, guidance_scale=3.0, num_inference_steps=2, output_type="np")
    assert got.shape == (2, H, W, 3)
    check(expected, got)
    expected, got = both(ref, ours, seed=4, prompt="make it red", image=image, image_guidance_scale=0.5,
                         num_inference_steps=2, output_type="np")
    check(expected, got)


# -- the processors ----------------------------------------------------------------------------------------------

def latents_out(pipe, **kwargs):
    return pipe(generator=torch.Generator().manual_seed(0), output_type="latent", num_inference_steps=2,
                **kwargs).images


def test_attn_processor_restores_the_default_bit_for_bit(controlled):
    _, ours, _ = controlled
    kwargs = dict(prompt=PROMPTS, image=tc.random_control_frames(FRAMES, H, W, seed=2), latents=shared_latents())
    plain = latents_out(ours, **kwargs)
    set_processors([], [ours.unet, ours.controlnet], 2)
    crossed = latents_out(ours, **kwargs)
    assert (crossed - plain).abs().max() > 1e-3  # the processor is in use
    ours.unet.set_attn_processor(vidcore.AttnProcessor())
    ours.controlnet.set_attn_processor(vidcore.AttnProcessor())
    assert torch.equal(latents_out(ours, **kwargs), plain)
    assert all(m.processor is None for m in ours.unet.modules() if isinstance(m, Attention))


def test_processor_names_match_diffusers_and_dicts_round_trip(controlled):
    ref, ours, _ = controlled
    for theirs, mine in ((ref.unet, ours.unet), (ref.controlnet, ours.controlnet)):
        assert set(mine.attn_processors) == set(theirs.attn_processors)
        assert all(type(p) is vidcore.AttnProcessor for p in mine.attn_processors.values())
    # the guide's IP-Adapter variant: cross-frame on self-attention (attn1) only, by name
    mixed = {name: vidcore.CrossFrameAttnProcessor(2) if name.endswith("attn1.processor") else p
             for name, p in ours.unet.attn_processors.items()}
    ours.unet.set_attn_processor(mixed)
    try:
        saved = ours.unet.attn_processors
        assert {n for n, p in saved.items() if isinstance(p, vidcore.CrossFrameAttnProcessor)} == {
            n for n in saved if n.endswith("attn1.processor")}
    finally:
        ours.unet.set_attn_processor(vidcore.AttnProcessor())
    first = next(iter(mixed))
    with pytest.raises(ValueError, match="one entry per attention"):
        ours.unet.set_attn_processor({first: vidcore.AttnProcessor()})
    with pytest.raises(TypeError, match="CrossFrameAttnProcessor"):
        ours.unet.set_attn_processor(object())
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            vidcore.CrossFrameAttnProcessor(batch_size=bad)


def test_a_batch_that_does_not_split_is_a_clear_error():
    proc = vidcore.CrossFrameAttnProcessor(batch_size=2)
    x = torch.randn(5, 3, 4)
    with pytest.raises(ValueError, match="batch of 5 rows"):
        proc.self_attention_source(x)
    source = proc.self_attention_source(torch.randn(6, 3, 4))
    assert torch.equal(source[1], source[0]) and torch.equal(source[4], source[3])


def test_pipeline_cross_frame_context_sets_the_user_processor_aside(controlled):
    _, ours, _ = controlled
    ours.unet.set_attn_processor(vidcore.CrossFrameAttnProcessor(2))
    try:
        with cross_frame_attention(ours.unet, 3):
            assert all(m.processor is None and m.cross_frame == (3, 0)
                       for m in ours.unet.modules() if isinstance(m, Attention))
        assert all(isinstance(m.processor, vidcore.CrossFrameAttnProcessor) and m.cross_frame is None
                   for m in ours.unet.modules() if isinstance(m, Attention))
    finally:
        ours.unet.set_attn_processor(vidcore.AttnProcessor())


def test_every_video_unet_has_set_attn_processor():
    """UNet3D (ModelScope), I2VGen-XL, SVD, UNetMotion: spatial self-attention takes the group's first frame;
    AttnProcessor() gives the default output back exactly."""
    from vidcore.models.motion import MotionAdapter, MotionAdapterConfig
    from vidcore.models.svd_unet import SVDUNet, SVDUNetConfig
    from vidcore.models.unet2d import UNet2D, UNet2DConfig
    from vidcore.models.unet3d import UNet3D, UNet3DConfig

    torch.manual_seed(0)
    b, f = 2, 3
    unet3d = UNet3D(UNet3DConfig.from_diffusers_config(tiny.tiny_unet3d_config())).eval()
    svd = SVDUNet(SVDUNetConfig.from_diffusers_config(tiny.tiny_svd_unet_config())).eval()
    unet2d = UNet2D(UNet2DConfig.from_diffusers_config(tiny.tiny_unet2d_config())).eval()
    motion = vidcore.UNetMotion(unet2d, MotionAdapter(MotionAdapterConfig.from_diffusers_config(
        tiny.tiny_motion_adapter_config()))).eval()
    for model in (unet3d, svd, motion):
        tiny.randomize_(model, 1)
    runs = {
        "UNet3D": (unet3d, lambda: unet3d(torch.randn(b, 4, f, 8, 8, generator=torch.Generator().manual_seed(0)), 5,
                                          torch.ones(b, 4, unet3d.config.cross_attention_dim))),
        "SVDUNet": (svd, lambda: svd(torch.randn(b, f, svd.config.in_channels, 8, 8,
                                                 generator=torch.Generator().manual_seed(0)), 5,
                                     torch.ones(b, 1, svd.config.cross_attention_dim), torch.zeros(b, 3))),
        "UNetMotion": (motion, lambda: motion(torch.randn(b, 4, f, 8, 8, generator=torch.Generator().manual_seed(0)),
                                              5, torch.ones(b, 4, 24))),
    }
    for name, (model, run) in runs.items():
        with torch.no_grad():
            plain = run()
            model.set_attn_processor(vidcore.CrossFrameAttnProcessor(batch_size=b))
            assert any(isinstance(p, vidcore.CrossFrameAttnProcessor) for p in model.attn_processors.values())
            crossed = run()
            model.set_attn_processor(vidcore.AttnProcessor())
            assert (crossed - plain).abs().max() > 1e-4, name
            assert torch.equal(run(), plain), name
    assert hasattr(vidcore.I2VGenXLUNet, "set_attn_processor") and issubclass(vidcore.I2VGenXLUNet, vidcore.UNet3D)


# -- loading -----------------------------------------------------------------------------------------------------

def test_diffusion_pipeline_picks_the_image_pipelines(sd, controlled, pix2pix):
    assert type(vidcore.DiffusionPipeline.from_pretrained(sd[2])) is vidcore.StableDiffusionPipeline
    assert type(vidcore.DiffusionPipeline.from_pretrained(pix2pix[2])) is vidcore.StableDiffusionInstructPix2PixPipeline
    pipe = vidcore.DiffusionPipeline.from_pretrained(controlled[2].sd)  # a saved ControlNet pipeline: its controlnet/
    assert type(pipe) is vidcore.StableDiffusionControlNetPipeline and isinstance(pipe.controlnet, vidcore.ControlNet)


def test_loading_errors(sd):
    from vidcore.errors import ModelNotFoundError

    _, _, folder = sd
    with pytest.raises(ModelNotFoundError, match="controlnet"):
        vidcore.StableDiffusionControlNetPipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match="safety checker"):
        vidcore.StableDiffusionPipeline.from_pretrained(folder, safety_checker=torch.nn.Identity())


@pytest.mark.parametrize("which", ["sd", "controlled", "pix2pix"])
def test_save_pretrained_round_trips_through_diffusers(which, sd, controlled, pix2pix, tmp_path):
    """The folder vidcore writes loads in diffusers' pipeline class of the same name (no safety checker, as a
    diffusers-saved folder without one) and gives vidcore's images."""
    import json

    import diffusers

    _, ours, _ = {"sd": sd, "controlled": controlled, "pix2pix": pix2pix}[which]
    ours.save_pretrained(tmp_path / "out")
    index = json.loads((tmp_path / "out" / "model_index.json").read_text())
    assert index["_class_name"] == type(ours).__name__
    ref = getattr(diffusers, type(ours).__name__).from_pretrained(tmp_path / "out", safety_checker=None,
                                                                  feature_extractor=None)
    ref.set_progress_bar_config(disable=True)
    kwargs = dict(prompt=PROMPTS[:2], num_inference_steps=2, output_type="np")
    if which == "sd":
        kwargs.update(height=H, width=W)
    elif which == "controlled":
        kwargs.update(image=tc.random_control_frames(2, H, W, seed=4))
    else:
        kwargs.update(image=tiny_zero.random_frames(2, H, W))
    expected, got = both(ref, ours, **kwargs)
    check(expected, got)
    assert type(vidcore.DiffusionPipeline.from_pretrained(tmp_path / "out")) is type(ours)
