"""Activation memory settings: guidance batching (``set_guidance_batching``), the memory budget
(``set_max_memory``), ``decode_chunk_size="auto"`` and attention slicing. Each lowers a peak without changing the
result: the split guidance batch equals the joint one within float rounding (float32), "auto" decode chunks equal
the fixed chunk size they pick, sliced attention equals the whole."""

from __future__ import annotations

import PIL.Image
import numpy as np
import pytest
import torch

import vidcore
from vidcore.nn.attention import Attention, attend, sliced_attend
from vidcore.sampling.guidance import GuidanceBatching, guidance_batch
from vidcore.sampling.memory import VAE_COPIES, decoded_frame_bytes

import tiny
import tiny_animatediff as ta
import tiny_controlnet as tc
import tiny_zero

pytestmark = pytest.mark.usefixtures("one_thread")
# A UNet on half the batch rounds differently from the whole batch (CPU kernels block by batch size): one guided
# batch differs by under 1e-6 relative (7e-7 measured on the tiny UNet3D); a few sampling steps amplify it.
PREDICTION_RTOL = 1e-6
RTOL = 2e-5


def relative_error(a, b) -> float:
    """``|a - b| / |b|`` (Frobenius norms, float64)."""
    a, b = torch.as_tensor(np.asarray(a)).double(), torch.as_tensor(np.asarray(b)).double()
    return ((a - b).norm() / b.norm()).item()


def joint_and_split(pipe, run):
    """``run()``'s output with the joint guidance batch and with the split one (the pipeline back to joint); "auto"
    with a budget below any estimate must split too, and give the split output."""
    pipe.set_guidance_batching("joint")
    joint = run()
    pipe.set_guidance_batching("split")
    try:
        split = run()
        pipe.set_guidance_batching("auto")
        pipe.set_max_memory(1)
        assert torch.equal(torch.as_tensor(np.asarray(run())), torch.as_tensor(np.asarray(split)))
    finally:
        pipe.set_guidance_batching("joint")
        pipe.set_max_memory(None)
    return joint, split


def image(seed=0, size=(40, 52)):
    return PIL.Image.fromarray(np.random.RandomState(seed).randint(0, 256, (*size, 3), dtype=np.uint8))


# -- the mechanism ------------------------------------------------------------------------------------

def test_split_guidance_batch_runs_one_call_per_branch_with_its_conditions():
    seen = []

    def model(x, embeds, extra):
        seen.append((x.shape[0], embeds[:, 0].tolist(), [e[:, 0].tolist() for e in extra]))
        return x * embeds[:, :1] + extra[0][:, :1]

    latents = torch.randn(2, 3)
    embeds = torch.tensor([[1.0, 0], [2, 0], [3, 0], [4, 0]])  # [uncond; cond], 2 rows each
    extra = [torch.tensor([[10.0], [20], [30], [40]])]
    joint = guidance_batch(model, latents, 2, GuidanceBatching("joint"), embeds=embeds, extra=extra)
    split = guidance_batch(model, latents, 2, GuidanceBatching("split"), embeds=embeds, extra=extra)
    assert torch.equal(joint, split)
    assert seen[1:] == [(2, [1.0, 2.0], [[10.0, 20.0]]), (2, [3.0, 4.0], [[30.0, 40.0]])]


def test_auto_splits_only_when_the_estimate_exceeds_the_budget():
    latents = torch.zeros(1, 4, 2, 8, 8)
    per_branch = lambda x: 1000  # noqa: E731
    assert not GuidanceBatching("auto", None, per_branch).splits(latents, 2)  # unknown budget: joint
    assert not GuidanceBatching("auto", 2000, per_branch).splits(latents, 2)
    assert GuidanceBatching("auto", 1999, per_branch).splits(latents, 2)
    assert GuidanceBatching("auto", 2999, per_branch).splits(latents, 3)


def test_a_condition_that_does_not_split_is_named():
    with pytest.raises(ValueError, match="batch 3, not a multiple of the 2 guidance branches"):
        guidance_batch(lambda x, embeds: x, torch.zeros(1, 3), 2, GuidanceBatching("split"), embeds=torch.zeros(3, 2))


# -- the pipelines ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def modelscope(tmp_path_factory):
    folder = tmp_path_factory.mktemp("modelscope")
    tiny.build_tiny_t2v_pipeline(folder)
    pipe = vidcore.TextToVideoPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_modelscope_split_batch_equals_joint(modelscope):
    """The UNet's ``[uncond; cond]`` prediction, one call vs one per branch."""
    unet, latents = modelscope.unet, torch.randn(1, 4, 3, 8, 8, generator=torch.manual_seed(0))
    embeds = torch.randn(2, 5, unet.config.cross_attention_dim, generator=torch.manual_seed(1))

    def model(x, prompt_embeds):
        return unet(x, torch.tensor(500), prompt_embeds)

    with torch.no_grad():
        joint, split = (guidance_batch(model, latents, 2, GuidanceBatching(mode), prompt_embeds=embeds)
                        for mode in ("joint", "split"))
    assert relative_error(split, joint) < PREDICTION_RTOL


def test_modelscope_split_equals_joint(modelscope):
    def run():
        return modelscope("a cat", negative_prompt="blurry", num_frames=3, height=16, width=16, num_inference_steps=2,
                          generator=torch.manual_seed(0), output_type="latent").frames

    joint, split = joint_and_split(modelscope, run)
    assert relative_error(split, joint) < RTOL


def test_modelscope_auto_follows_the_budget(modelscope):
    """"auto" with a budget below the estimate splits, above it runs joint; both give the joint result."""
    def run():
        return modelscope("a cat", num_frames=2, height=16, width=16, num_inference_steps=1,
                          generator=torch.manual_seed(0), output_type="latent").frames

    joint = run()
    modelscope.set_guidance_batching("auto")
    try:
        for budget in ("1KiB", 10**12):
            modelscope.set_max_memory(budget)
            assert relative_error(run(), joint) < RTOL
        modelscope.set_max_memory(1024)
        assert modelscope.guidance_batches().splits(torch.zeros(1, 4, 2, 8, 8), 2)
        modelscope.set_max_memory("1TB")
        assert not modelscope.guidance_batches().splits(torch.zeros(1, 4, 2, 8, 8), 2)
    finally:
        modelscope.set_guidance_batching("joint")
        modelscope.set_max_memory(None)


@pytest.fixture(scope="module")
def animatediff(tmp_path_factory):
    return ta.build_tiny_animatediff(tmp_path_factory.mktemp("animatediff"))


def test_animatediff_split_equals_joint(animatediff):
    pipe = vidcore.AnimateDiffPipeline.from_pretrained(animatediff.sd, motion_adapter=animatediff.adapter)
    pipe.set_progress_bar_config(disable=True)

    def run():
        return pipe("a cat", negative_prompt="blurry", num_frames=3, height=16, width=16, num_inference_steps=2,
                    generator=torch.manual_seed(0), output_type="latent").frames

    joint, split = joint_and_split(pipe, run)
    assert relative_error(split, joint) < RTOL


@pytest.mark.parametrize("guess_mode", [False, True])
def test_animatediff_controlnet_split_equals_joint(animatediff, tmp_path_factory, guess_mode):
    """The ControlNet residuals of the whole guidance batch, split with it (guess mode: zeros for the
    unconditional branch)."""
    from diffusers import ControlNetModel

    folder = tmp_path_factory.mktemp("controlnet")
    tiny.randomize_(ControlNetModel(**tc.tiny_controlnet_config()), 10).save_pretrained(folder)
    pipe = vidcore.AnimateDiffControlNetPipeline.from_pretrained(animatediff.sd, motion_adapter=animatediff.adapter,
                                                                 controlnet=folder)
    pipe.set_progress_bar_config(disable=True)
    control = tc.random_control_frames(3, 16, 24)

    def run():
        return pipe("a cat", negative_prompt="blurry", num_frames=3, height=16, width=24, num_inference_steps=2,
                    conditioning_frames=control, guess_mode=guess_mode, generator=torch.manual_seed(0),
                    output_type="latent").frames

    joint, split = joint_and_split(pipe, run)
    assert relative_error(split, joint) < RTOL


def test_animatediff_sdxl_split_equals_joint_with_guidance_rescale(tmp_path_factory):
    """SDXL's pooled embeddings and time ids (``added_cond_kwargs``, a dict) split with the batch; the branches are
    combined (and rescaled) after the windows are blended, as in the joint run."""
    import tiny_sdxl

    setup = tiny_sdxl.build_tiny_animatediff_sdxl(tmp_path_factory.mktemp("animatediff_sdxl"))
    pipe = vidcore.AnimateDiffSDXLPipeline.from_pretrained(setup.sdxl, motion_adapter=setup.adapter)
    pipe.set_progress_bar_config(disable=True)

    def run():
        return pipe("a cat", negative_prompt="blurry", num_frames=3, height=16, width=24, num_inference_steps=2,
                    guidance_rescale=0.7, generator=torch.manual_seed(0), output_type="latent").frames

    joint, split = joint_and_split(pipe, run)
    assert relative_error(split, joint) < RTOL


def test_svd_split_equals_joint_with_per_frame_scales(tmp_path_factory):
    folder = tmp_path_factory.mktemp("svd") / "tiny-svd"
    tiny.build_tiny_svd_pipeline(folder)
    pipe = vidcore.StableVideoDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)

    def run():
        return pipe(image(), height=16, width=16, num_frames=3, num_inference_steps=2, min_guidance_scale=1.5,
                    max_guidance_scale=3.0, generator=torch.manual_seed(0), output_type="latent").frames

    joint, split = joint_and_split(pipe, run)
    assert relative_error(split, joint) < RTOL


def test_i2vgen_split_equals_joint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("i2vgen") / "tiny-i2vgen"
    tiny.build_tiny_i2vgen_pipeline(folder)
    pipe = vidcore.I2VGenXLPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)

    def run():
        return pipe("a cat", image(), negative_prompt="blurry", height=16, width=16, num_frames=3,
                    num_inference_steps=2, generator=torch.manual_seed(0), output_type="latent").frames

    joint, split = joint_and_split(pipe, run)
    assert relative_error(split, joint) < RTOL


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd")
    tiny_zero.build_tiny_sd(folder)
    return folder


def test_text2video_zero_split_equals_joint(sd_folder):
    pipe = vidcore.TextToVideoZeroPipeline.from_pretrained(sd_folder)
    pipe.set_progress_bar_config(disable=True)

    def run():
        return pipe("a cat", negative_prompt="blurry", video_length=3, height=16, width=16, num_inference_steps=3,
                    t0=1, t1=2, generator=torch.manual_seed(0), output_type="np").images

    joint, split = joint_and_split(pipe, run)
    assert relative_error(split, joint) < RTOL


def test_controlled_video_split_equals_joint(tmp_path_factory):
    setup = tc.build_tiny_controlled(tmp_path_factory.mktemp("controlled"))
    pipe = vidcore.ControlledVideoPipeline.from_pretrained(setup.sd, controlnet=setup.controlnet)
    pipe.set_progress_bar_config(disable=True)
    frames = tc.random_control_frames(3, 16, 24, seed=1)

    def run():
        return pipe("a cat", frames, negative_prompt="blurry", num_inference_steps=2,
                    generator=torch.Generator().manual_seed(0), output_type="np").frames

    joint, split = joint_and_split(pipe, run)
    assert relative_error(split, joint) < RTOL


def test_instruct_pix2pix_splits_its_three_branches(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pix2pix")
    tiny_zero.build_tiny_pix2pix(folder)
    pipe = vidcore.VideoInstructPix2PixPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    frames = tiny_zero.random_frames(2, 16, 24)

    def run():
        return pipe(prompt="make it snowy", video=frames, num_inference_steps=2, output_type="np",
                    generator=torch.Generator().manual_seed(0)).frames

    joint, split = joint_and_split(pipe, run)
    assert relative_error(split, joint) < RTOL


def test_a_grouping_cross_frame_processor_keeps_the_guidance_batch_joint(modelscope):
    """CrossFrameAttnProcessor(batch_size=2) groups the rows of the whole [uncond; cond] batch: split and auto run
    joint while it is set (batch_size=1 does not group, and split stays split)."""
    from vidcore.sampling.guidance import JOINT

    try:
        modelscope.set_guidance_batching("split")
        modelscope.unet.set_attn_processor(vidcore.CrossFrameAttnProcessor(batch_size=2))
        assert modelscope.guidance_batches() is JOINT
        modelscope.unet.set_attn_processor(vidcore.CrossFrameAttnProcessor(batch_size=1))
        assert modelscope.guidance_batches().mode == "split"
    finally:
        modelscope.unet.set_attn_processor(vidcore.AttnProcessor())
        modelscope.set_guidance_batching("joint")


def test_bad_mode_and_budget_are_refused(modelscope):
    with pytest.raises(ValueError, match="joint"):
        modelscope.set_guidance_batching("half")
    with pytest.raises(ValueError, match="GB"):
        modelscope.set_max_memory("lots")
    with pytest.raises(ValueError, match="positive"):
        modelscope.set_max_memory(0)
    modelscope.set_max_memory("1.5 GiB")
    assert modelscope.max_memory == int(1.5 * 2**30)
    modelscope.set_max_memory(None)


# -- decode_chunk_size="auto" ---------------------------------------------------------------------------

def budget_for(pipe, latent_size, k):
    """A budget between k and k + 1 frames of the decode estimate."""
    vae = pipe.vae
    per_frame = decoded_frame_bytes(*latent_size, pipe.vae_scale_factor, vae.config.block_out_channels,
                                    vae.dtype.itemsize)
    assert per_frame == VAE_COPIES * (latent_size[0] * pipe.vae_scale_factor) * (
        latent_size[1] * pipe.vae_scale_factor) * max(vae.config.block_out_channels[:2]) * 4
    return per_frame * k + per_frame // 2


def test_modelscope_auto_decode_chunk_equals_the_fixed_chunk_it_picks(modelscope, monkeypatch):
    sizes = []
    decode = modelscope.vae.decode
    monkeypatch.setattr(modelscope.vae, "decode", lambda z: sizes.append(z.shape[0]) or decode(z))
    latents = torch.randn(1, 4, 5, 8, 8, generator=torch.manual_seed(0))

    def run(chunk):
        sizes.clear()
        return modelscope("a cat", latents=latents, num_frames=5, height=16, width=16, num_inference_steps=1,
                          decode_chunk_size=chunk, output_type="pt").frames

    assert modelscope.auto_decode_chunk(8, 8, 5) == 5  # CPU, no budget: the pipeline's default (None: all frames)
    whole = run("auto")
    assert sizes == [5] and torch.equal(whole, run(None))
    modelscope.set_max_memory(budget_for(modelscope, (8, 8), 2))
    try:
        assert modelscope.auto_decode_chunk(8, 8, 5) == 2
        auto = run("auto")
        assert sizes == [2, 2, 1]
        assert torch.equal(auto, run(2))
        modelscope.set_max_memory(1)  # less than a frame: one at a time
        assert modelscope.auto_decode_chunk(8, 8, 5) == 1
    finally:
        modelscope.set_max_memory(None)


def test_auto_decode_chunk_without_a_budget_is_the_pipelines_default(animatediff):
    """No budget (CPU without set_max_memory): "auto" is the pipeline's own default, AnimateDiff's 16 frames per
    decoder call (I2VGen-XL's 1), never more frames than that default."""
    import inspect

    pipe = vidcore.AnimateDiffPipeline.from_pretrained(animatediff.sd, motion_adapter=animatediff.adapter)
    assert pipe.memory_budget() is None
    assert pipe.auto_decode_chunk(8, 8, 40) == 16 and pipe.auto_decode_chunk(8, 8, 5) == 5
    assert inspect.signature(vidcore.I2VGenXLPipeline.__call__).parameters["decode_chunk_size"].default == 1


def test_svd_auto_decode_chunk_equals_the_fixed_chunk_it_picks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("svd") / "tiny-svd"
    tiny.build_tiny_svd_pipeline(folder)
    pipe = vidcore.StableVideoDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)

    def run(chunk):
        return pipe(image(), height=16, width=16, num_frames=5, num_inference_steps=1, decode_chunk_size=chunk,
                    generator=torch.manual_seed(0), output_type="pt").frames

    s = pipe.vae_scale_factor
    pipe.set_max_memory(budget_for(pipe, (16 // s, 16 // s), 3))
    try:
        assert pipe.auto_decode_chunk(16 // s, 16 // s, 5) == 3
        auto = run("auto")
    finally:
        pipe.set_max_memory(None)
    assert torch.equal(auto, run(3))
    assert not torch.equal(auto, run(5))  # the temporal decoder sees the chunk: the choice shows
    # a chunk the overlap would not let advance grows past it (overlap 2: chunks of 3)
    pipe.set_max_memory(budget_for(pipe, (16 // s, 16 // s), 1))
    try:
        overlapped = pipe(image(), height=16, width=16, num_frames=5, num_inference_steps=1, decode_chunk_size="auto",
                          decode_overlap=2, generator=torch.manual_seed(0), output_type="pt").frames
    finally:
        pipe.set_max_memory(None)
    assert torch.equal(overlapped, pipe(image(), height=16, width=16, num_frames=5, num_inference_steps=1,
                                        decode_chunk_size=3, decode_overlap=2, generator=torch.manual_seed(0),
                                        output_type="pt").frames)


# -- attention slicing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows,n,m,slice_size", [(3, 10, 7, 4), (4, 5, 6, 12), (2, 9, 9, 9), (5, 3, 2, 1)])
@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_sliced_attend_equals_attend(rows, n, m, slice_size, backend, monkeypatch):
    import vidcore.nn.attention as module

    g = torch.Generator().manual_seed(rows * n)
    q, k, v = (torch.randn(rows, 2, length, 8, generator=g) for length in (n, m, m))
    whole = attend(q, k, v, backend)
    calls = []  # (rows, queries) of every backend call
    monkeypatch.setattr(module, "attend", lambda q, k, v, backend=None: calls.append((q.shape[0], q.shape[2]))
                        or attend(q, k, v, backend))
    sliced = sliced_attend(q, k, v, backend, slice_size)
    assert torch.allclose(sliced, whole, rtol=1e-5, atol=1e-6)
    assert len(calls) > 1 and max(r * n for r, n in calls) <= slice_size


def i2vgen_unet():
    from vidcore.models.i2vgen_unet import I2VGenXLConfig, I2VGenXLUNet

    return tiny.randomize_(I2VGenXLUNet(I2VGenXLConfig.from_diffusers_config(tiny.tiny_i2vgen_unet_config())), 0)


def unet3d():
    from vidcore.models.unet3d import UNet3D, UNet3DConfig

    return tiny.randomize_(UNet3D(UNet3DConfig.from_diffusers_config(tiny.tiny_unet3d_config())), 0)


def forward_i2vgen(unet, g):
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return unet(r(2, 4, 3, 8, 12), 10, r(2), r(2, 4, 3, 8, 12), r(2, 32), r(2, 7, 32))


def forward_unet3d(unet, g):
    ctx = unet.config.cross_attention_dim
    return unet(torch.randn(2, 4, 3, 8, 12, generator=g), 10, torch.randn(2, 7, ctx, generator=g))


@pytest.mark.parametrize("build,forward", [(i2vgen_unet, forward_i2vgen), (unet3d, forward_unet3d)],
                         ids=["i2vgen-xl", "unet3d"])
def test_attention_slicing_equals_whole_attention(build, forward):
    unet = build().eval()
    with torch.no_grad():
        whole = forward(unet, torch.Generator().manual_seed(0))
        unet.enable_attention_slicing(5)  # fewer than the frames x pixels of every attention: all are sliced
        assert all(m.slice_size == 5 for m in unet.modules() if isinstance(m, Attention))
        sliced = forward(unet, torch.Generator().manual_seed(0))
        unet.disable_attention_slicing()
        again = forward(unet, torch.Generator().manual_seed(0))
    assert torch.allclose(sliced, whole, rtol=1e-5, atol=1e-6)
    assert torch.equal(again, whole)


def test_pipeline_attention_slicing_reaches_the_unet(modelscope):
    modelscope.enable_attention_slicing()
    try:
        assert {m.slice_size for m in modelscope.unet.modules() if isinstance(m, Attention)} == {4096}
    finally:
        modelscope.disable_attention_slicing()
    assert {m.slice_size for m in modelscope.unet.modules() if isinstance(m, Attention)} == {None}
    with pytest.raises(ValueError, match="positive integer"):
        modelscope.enable_attention_slicing(0)
