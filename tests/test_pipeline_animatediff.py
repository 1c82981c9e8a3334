"""AnimateDiffPipeline against diffusers' AnimateDiffPipeline (same tiny random SD1.5 model + motion adapter,
same seed -> same frames), loading paths, sliding context windows for long videos, and errors."""

import json
import shutil

import numpy as np
import pytest
import torch

import tiny
import tiny_animatediff as ta
import vidcore
from vidcore.models.motion import MotionAdapter, UNetMotion
from vidcore.sampling.windows import context_weights, context_windows

TOL = 1e-4  # max abs difference of np frames in [0, 1] (and of latents)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return ta.build_tiny_animatediff(tmp_path_factory.mktemp("animatediff"), variant_fp16=True)


def recommended_ddim(setup):
    """AnimateDiff's recommended DDIM from the folder's (PNDM) config: what the diffusers reference samples with."""
    from vidcore.pipelines.animatediff import animatediff_scheduler

    return animatediff_scheduler(setup.sd / "scheduler" / "scheduler_config.json")


def load(setup, stored_scheduler=False, **kwargs):
    if not stored_scheduler:
        kwargs.setdefault("scheduler", recommended_ddim(setup))
    pipe = vidcore.AnimateDiffPipeline.from_pretrained(setup.sd, motion_adapter=setup.adapter, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def compare(ref, ours, tol=TOL, seed=0, **kwargs):
    kwargs.setdefault("output_type", "np")
    expected = ref(generator=torch.Generator().manual_seed(seed), **kwargs).frames
    got = ours(generator=torch.Generator().manual_seed(seed), **kwargs).frames
    expected, got = np.asarray(expected), np.asarray(got)
    assert expected.shape == got.shape
    err = np.abs(expected - got).max()
    if kwargs["output_type"] == "latent":  # latents reach ~20: the tolerance is relative to their scale
        tol = tol * max(1.0, float(np.abs(expected).max()))
    assert err < tol, f"max abs error {err}"
    return got


SMALL = dict(num_frames=5, height=16, width=24, num_inference_steps=3)


# -- parity with diffusers ------------------------------------------------------------------------

def test_stored_pndm_scheduler_parity(setup):
    import diffusers

    ours = load(setup, stored_scheduler=True)
    assert type(ours.scheduler).__name__ == "PNDMScheduler"  # the hub SD1.5 scheduler, used as diffusers does
    ref = setup.pipe
    saved = ref.scheduler
    try:
        ref.scheduler = diffusers.PNDMScheduler.from_config(ta.SD15_SCHEDULER_CONFIG)
        compare(ref, ours, prompt="a cat walking", negative_prompt="blurry", **SMALL)
        compare(ref, ours, prompt="a dog", num_frames=3, height=16, width=16, num_inference_steps=6, seed=2)
    finally:
        ref.scheduler = saved


def test_recommended_ddim_with_negative_prompt(setup):
    ours = load(setup)
    # the scheduler AnimateDiff's docs build by hand for diffusers: DDIM with linear betas from the PNDM config
    assert type(ours.scheduler).__name__ == "DDIMScheduler"
    ref_cfg = setup.pipe.scheduler.config
    for key, value in ta.ANIMATEDIFF_DDIM.items():
        assert getattr(ours.scheduler.config, key) == value == ref_cfg[key]
    frames = compare(setup.pipe, ours, prompt="a cat walking", negative_prompt="blurry", **SMALL)
    assert frames.shape == (1, 5, 16, 24, 3)


def test_no_guidance_given_latents_and_latent_output(setup):
    ours = load(setup)
    latents = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    kw = dict(prompt="x", num_frames=3, height=16, width=16, num_inference_steps=2, guidance_scale=1.0)
    compare(setup.pipe, ours, latents=latents, **kw)
    got = compare(setup.pipe, ours, latents=latents, output_type="latent", **kw)
    assert got.shape == (1, 4, 3, 8, 8)


def test_prompt_embeds_and_eta_noise(setup):
    ours = load(setup)
    g = torch.Generator().manual_seed(1)
    pe, ne = torch.randn(2, 77, 24, generator=g), torch.randn(2, 77, 24, generator=g)
    # eta > 0 draws DDIM noise every step, shaped like the b c f h w latents as in diffusers
    compare(setup.pipe, ours, prompt_embeds=pe, negative_prompt_embeds=ne, eta=0.7, num_frames=3, height=8,
            width=16, num_inference_steps=3, seed=3)


@pytest.mark.parametrize("kind", ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler"])
def test_scheduler_swap_from_config(setup, kind):
    import diffusers

    from vidcore.schedulers import scheduler_class

    ours = load(setup)
    ours.scheduler = scheduler_class(kind).from_config(ours.scheduler.to_diffusers_config())
    ref = setup.pipe
    saved = ref.scheduler
    try:
        ref.scheduler = getattr(diffusers, kind).from_config(saved.config)
        compare(ref, ours, prompt=["a dog", "a red boat"], negative_prompt=["ugly", "dark"], num_frames=3,
                height=16, width=16, num_inference_steps=4)
    finally:
        ref.scheduler = saved


def test_decode_chunks_vae_slicing_and_output_types(setup):
    ours = load(setup)
    kw = dict(prompt="rain", num_frames=3, height=16, width=16, num_inference_steps=2)
    full = compare(setup.pipe, ours, decode_chunk_size=1, **kw)
    ours.vae.enable_slicing()
    sliced = ours(generator=torch.Generator().manual_seed(0), output_type="np", **kw).frames
    assert np.abs(full - sliced).max() < 1e-6
    pt = ours(generator=torch.Generator().manual_seed(0), output_type="pt", **kw).frames
    assert pt.shape == (1, 3, 3, 16, 16)
    pil = ours(generator=torch.Generator().manual_seed(0), **kw).frames  # diffusers' default: PIL
    assert len(pil) == 1 and len(pil[0]) == 3 and pil[0][0].size == (16, 16)
    assert ours(generator=torch.Generator().manual_seed(0), output_type="np", return_dict=False, **kw)[0].shape \
        == (1, 3, 16, 16, 3)


def test_num_videos_per_prompt(setup):
    ours = load(setup)
    kw = dict(num_frames=2, height=8, width=8, num_inference_steps=2, output_type="latent")
    # diffusers resets num_videos_per_prompt to 1; vidcore honours it. n videos of one prompt draw the same
    # noise as diffusers' batch of n copies of the prompt.
    one = ours("a", num_videos_per_prompt=1, generator=torch.Generator().manual_seed(0), **kw).frames
    ref_one = setup.pipe("a", num_videos_per_prompt=1, generator=torch.Generator().manual_seed(0), **kw).frames
    # latents reach ~20: the tolerance is relative to their scale
    assert (one - ref_one).abs().max() < TOL * ref_one.abs().max()
    two = ours("a", num_videos_per_prompt=2, generator=torch.Generator().manual_seed(0), **kw).frames
    ref_two = setup.pipe(["a", "a"], generator=torch.Generator().manual_seed(0), **kw).frames
    assert two.shape == (2, 4, 2, 4, 4)
    assert (two - ref_two).abs().max() < TOL * ref_two.abs().max()
    assert not torch.allclose(two[0], two[1])


def test_callback_on_step_end(setup):
    ours = load(setup)
    seen = []

    def shrink(pipe, i, t, tensors):
        seen.append((i, int(t), sorted(tensors)))
        return {"latents": tensors["latents"] * 0.9}

    kw = dict(prompt="a", num_frames=2, height=8, width=8, num_inference_steps=3, callback_on_step_end=shrink)
    compare(setup.pipe, ours, **kw)
    assert [s[0] for s in seen[-3:]] == [0, 1, 2] and seen[-1][2] == ["latents"]

    got = {}

    def grab(pipe, i, t, tensors):
        got.update({k: v.shape for k, v in tensors.items()})
        return {}

    ours("a", num_frames=2, height=8, width=8, num_inference_steps=1, callback_on_step_end=grab,
         callback_on_step_end_tensor_inputs=["latents", "prompt_embeds", "negative_prompt_embeds"])
    assert got == {"latents": (1, 4, 2, 4, 4), "prompt_embeds": (1, 77, 24), "negative_prompt_embeds": (1, 77, 24)}
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs must be among"):
        ours("a", num_frames=2, height=8, width=8, callback_on_step_end=grab,
             callback_on_step_end_tensor_inputs=["noise_pred"])


def test_clip_skip_uses_the_earlier_layer(setup):
    # diffusers' clip_skip path reads text_encoder.text_model, gone in transformers 5: reference embeddings
    # are built from the definition and handed to diffusers
    ref, ours = setup.pipe, load(setup)
    ids = ref.tokenizer(["a dog"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        embeds = ref.text_encoder.final_layer_norm(ref.text_encoder(ids, output_hidden_states=True).hidden_states[-2])
    kw = dict(num_frames=2, height=8, width=8, num_inference_steps=2, negative_prompt="ugly", output_type="latent")
    expected = ref(prompt_embeds=embeds, generator=torch.Generator().manual_seed(0), **kw).frames
    got = ours("a dog", clip_skip=1, generator=torch.Generator().manual_seed(0), **kw).frames
    assert (expected - got).abs().max() < TOL


# -- loading --------------------------------------------------------------------------------------

def test_module_adapter_fp16_variant_and_dtype(setup):
    adapter = vidcore.load_model(setup.adapter)
    ours = vidcore.AnimateDiffPipeline.from_pretrained(setup.sd, motion_adapter=adapter, variant="fp16",
                                                       scheduler=recommended_ddim(setup))
    ours.set_progress_bar_config(disable=True)
    assert ours.motion_adapter is adapter and isinstance(ours.unet, UNetMotion)
    assert ours.unet.unet.conv_in.weight.dtype == torch.float32  # fp16 files, float32 by default
    # randomize_ rounds weights to fp16, so the fp16 files hold the same numbers
    compare(setup.pipe, ours, prompt="a", num_frames=2, height=8, width=8, num_inference_steps=2, output_type="latent")
    half = vidcore.AnimateDiffPipeline.from_pretrained(setup.sd, motion_adapter=setup.adapter, torch_dtype="bf16")
    assert half.dtype == torch.bfloat16 and half.motion_adapter.down_blocks[0][0].proj_in.weight.dtype == torch.bfloat16
    assert half.text_encoder.dtype == torch.bfloat16


def test_saved_animatediff_pipeline_folder(setup, tmp_path):
    """diffusers' AnimateDiffPipeline.save_pretrained writes unet/ as a UNetMotionModel (SD + motion modules)."""
    folder = tmp_path / "saved"
    setup.pipe.save_pretrained(folder)
    tiny.make_tiny_tokenizer(folder / "tokenizer")
    assert json.loads((folder / "unet" / "config.json").read_text())["_class_name"] == "UNetMotionModel"
    shutil.rmtree(folder / "motion_adapter")  # the motion modules come from unet/
    index = json.loads((folder / "model_index.json").read_text())
    index["motion_adapter"] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    ours = vidcore.AnimateDiffPipeline.from_pretrained(folder)
    ours.set_progress_bar_config(disable=True)
    assert type(ours.scheduler).__name__ == "DDIMScheduler"  # saved with the DDIM scheduler
    compare(setup.pipe, ours, prompt="a", num_frames=3, height=8, width=16, num_inference_steps=2)
    # an explicit adapter replaces the saved motion modules (the 2D weights stay)
    other = MotionAdapter(ours.motion_adapter.config)
    swapped = vidcore.AnimateDiffPipeline.from_pretrained(folder, motion_adapter=other)
    assert swapped.motion_adapter is other


def test_stored_scheduler_override(setup):
    from vidcore.pipelines.animatediff import animatediff_scheduler

    euler = animatediff_scheduler(setup.sd / "scheduler" / "scheduler_config.json", "euler", timestep_spacing="trailing")
    assert euler.config.beta_schedule == "linear" and euler.config.timestep_spacing == "trailing"
    ours = load(setup, scheduler=euler)
    assert ours.scheduler is euler


# -- long videos: sliding context windows ---------------------------------------------------------

def test_context_windows_cover_every_frame():
    assert context_windows(16, 16, 4) == [(0, 16)]
    assert context_windows(10, 16, 4) == [(0, 10)]
    assert context_windows(20, 8, 4) == [(0, 8), (4, 12), (8, 16), (12, 20)]
    assert context_windows(21, 8, 6) == [(0, 8), (6, 14), (12, 20), (13, 21)]  # last window ends at the end
    for frames, length, stride in [(33, 16, 4), (50, 24, 24), (9, 3, 1), (40, 32, 7)]:
        windows = context_windows(frames, length, stride)
        assert all(e - s == length for s, e in windows) and windows[-1][1] == frames
        assert set().union(*(range(s, e) for s, e in windows)) == set(range(frames))
    assert context_weights(5).tolist() == [1, 2, 3, 2, 1]
    assert context_weights(4, "flat").tolist() == [1, 1, 1, 1]


def test_one_window_is_the_plain_result(setup):
    ours = load(setup)
    kw = dict(prompt="a", num_frames=6, height=8, width=8, num_inference_steps=2, output_type="latent")
    plain = ours(generator=torch.Generator().manual_seed(0), **kw).frames
    for extra in (dict(context_length=6), dict(context_length=6, context_stride=1, context_weighting="flat"),
                  dict(context_length=20, context_stride=3)):
        got = ours(generator=torch.Generator().manual_seed(0), **kw, **extra).frames
        assert torch.equal(plain, got), extra


def test_overlapping_windows_of_one_frame_set_match_a_single_window(setup):
    """Windows that all see the same frames give the plain prediction (weights normalise exactly)."""
    ours = load(setup)
    kw = dict(prompt="a", num_frames=4, height=8, width=8, num_inference_steps=2, output_type="latent")
    plain = ours(generator=torch.Generator().manual_seed(0), **kw).frames
    # 2 windows of 3 frames over 4 frames -> frames 1, 2 are blended; a different but valid result
    blended = ours(generator=torch.Generator().manual_seed(0), context_length=3, context_stride=1, **kw).frames
    assert blended.shape == plain.shape and torch.isfinite(blended).all()
    assert not torch.allclose(plain, blended)


def test_long_video_beyond_the_position_table(setup):
    ours = load(setup)
    limit = ours.motion_adapter.max_frames  # 24
    frames = limit + 5
    with pytest.raises(ValueError, match="exceeds the motion adapter's motion_max_seq_length"):
        ours.unet(torch.zeros(1, 4, frames, 4, 4), 1, torch.zeros(1, 77, 24))
    video = ours("a long walk", num_frames=frames, height=8, width=8, num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).frames
    assert video.shape == (1, frames, 8, 8, 3) and np.isfinite(video).all()


def _seam_and_inner_jumps(latents, windows):
    """Mean |frame k+1 - frame k| for pairs where the set of covering windows changes (seams) and for pairs
    inside the same windows."""
    d = (latents[:, :, 1:] - latents[:, :, :-1]).abs().mean(dim=(0, 1, 3, 4))
    n = latents.shape[2]
    member = [frozenset(i for i, (s, e) in enumerate(windows) if s <= k < e) for k in range(n)]
    seams = [k for k in range(n - 1) if member[k] != member[k + 1]]
    inner = [k for k in range(n - 1) if member[k] == member[k + 1]]
    return d[seams], d[inner]


def test_long_video_is_continuous_at_window_seams(setup):
    """A static input (the same noise in every frame) should give a video without jumps. Inside one window
    the frames differ only through the motion modules' frame positions; a hard cut between windows jumps
    from position L-1 to 0. With overlapping, pyramid-weighted windows (the defaults) no seam jumps more
    than the largest step inside a window; the check is shown to be sensitive with disjoint flat windows."""
    ours = load(setup)
    frames, length = 20, 8
    noise = torch.randn(1, 4, 1, 4, 4, generator=torch.Generator().manual_seed(0)).repeat(1, 1, frames, 1, 1)
    kw = dict(prompt="a cat", num_frames=frames, height=8, width=8, num_inference_steps=4, output_type="latent",
              context_length=length)

    blended = ours(latents=noise.clone(), **kw).frames  # default stride length // 4 = 2, pyramid weights
    seams, inner = _seam_and_inner_jumps(blended, context_windows(frames, length, 2))
    assert len(seams) > 3 and len(inner) > 3
    assert seams.max() <= inner.max(), (seams, inner)

    cut = ours(latents=noise.clone(), context_stride=length, context_weighting="flat", **kw).frames
    seams, inner = _seam_and_inner_jumps(cut, context_windows(frames, length, length))
    assert seams.max() > 2 * inner.max(), (seams, inner)


# -- motion scale (AnimateDiff-Evolved's per-frame scale of the motion modules' residual) ------------------

def test_motion_scale_one_is_the_plain_model(setup):
    ours = load(setup)
    kw = dict(prompt="a", num_frames=4, height=8, width=8, num_inference_steps=2, output_type="latent")
    plain = ours(generator=torch.Generator().manual_seed(0), **kw).frames
    for scale in (1.0, 1, [1.0] * 4, torch.ones(4)):
        assert torch.equal(ours(generator=torch.Generator().manual_seed(0), motion_scale=scale, **kw).frames, plain)
    half = ours(generator=torch.Generator().manual_seed(0), motion_scale=0.5, **kw).frames
    assert torch.equal(ours(generator=torch.Generator().manual_seed(0), motion_scale=[0.5] * 4, **kw).frames, half)
    assert not torch.allclose(half, plain)
    mixed = ours(generator=torch.Generator().manual_seed(0), motion_scale=[0.5, 0.5, 1.0, 2.0], **kw).frames
    assert torch.isfinite(mixed).all() and not torch.allclose(mixed, half)


def test_motion_scale_zero_is_the_sd_unet_on_each_frame(setup):
    """0 turns the motion modules off: the UNetMotion equals its UNet2D on the frames folded into the batch, and
    a video's frames no longer depend on each other (the first two of four equal a two-frame run)."""
    ours = load(setup)
    unet = ours.unet
    g = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(2, 4, 3, 8, 8, generator=g), torch.randn(2, 7, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        got = unet(x, 10, ctx, motion_scale=0.0)
        want = unet.unet(x.transpose(1, 2).reshape(6, 4, 8, 8), 10, ctx.repeat_interleave(3, dim=0))
        torch.testing.assert_close(got, want.view(2, 3, 4, 8, 8).transpose(1, 2), rtol=1e-5, atol=1e-5)
        assert torch.equal(unet(x, 10, ctx, motion_scale=torch.zeros(3)), got)

    noise = torch.randn(1, 4, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    kw = dict(prompt="a", height=8, width=8, num_inference_steps=2, output_type="latent", motion_scale=0.0)
    four = ours(num_frames=4, latents=noise.clone(), **kw).frames
    two = ours(num_frames=2, latents=noise[:, :, :2].clone(), **kw).frames
    assert (four[:, :, :2] - two).abs().max() < 1e-5 * four.abs().max()  # float rounding only (with motion: ~0.5)


def test_motion_scale_with_windows_and_bad_values(setup):
    ours = load(setup)
    kw = dict(prompt="a", num_frames=10, height=8, width=8, num_inference_steps=1, output_type="latent",
              context_length=4, context_stride=2)
    video = ours(motion_scale=[0.0] * 5 + [1.5] * 5, generator=torch.Generator().manual_seed(0), **kw).frames
    assert video.shape[2] == 10 and torch.isfinite(video).all()
    with pytest.raises(ValueError, match=r"motion_scale must be a number or a list of one number per frame "
                                         r"\(num_frames=10\), got 3 values"):
        ours(motion_scale=[1.0, 1.0, 1.0], **kw)
    with pytest.raises(ValueError, match="motion_scale must be a number or a list of one number per frame, got str 'x'"):
        ours(motion_scale="x", **kw)
    with pytest.raises(ValueError, match="motion_scale values must be finite"):
        ours(motion_scale=float("nan"), **kw)


# -- errors ---------------------------------------------------------------------------------------

def test_bad_context_settings(setup):
    ours = load(setup)
    kw = dict(prompt="a", num_frames=30, height=8, width=8, num_inference_steps=1)
    with pytest.raises(ValueError, match="context_length must be an integer between 1 and the motion adapter's "
                                         "motion_max_seq_length=24, got 25"):
        ours(context_length=25, **kw)
    with pytest.raises(ValueError, match="context_length must be an integer between 1 .* got 0"):
        ours(context_length=0, **kw)
    with pytest.raises(ValueError, match="context_stride must be between 1 and context_length=8 .* got 9"):
        ours(context_length=8, context_stride=9, **kw)
    with pytest.raises(ValueError, match="context_stride must be between 1 and context_length=8 .* got 0"):
        ours(context_length=8, context_stride=0, **kw)
    with pytest.raises(ValueError, match="context_weighting must be one of"):
        ours(context_weighting="gaussian", **kw)


def test_bad_inputs(setup):
    ours = load(setup)
    with pytest.raises(ValueError, match="multiples of 8"):
        ours("a", height=12, width=8)
    with pytest.raises(ValueError, match="at most one of negative_prompt and negative_prompt_embeds"):
        ours("a", negative_prompt="b", negative_prompt_embeds=torch.zeros(1, 77, 24), height=8, width=8)
    with pytest.raises(ValueError, match="exactly one of prompt or prompt_embeds"):
        ours(height=8, width=8)


def test_loading_errors(setup, tmp_path):
    with pytest.raises(vidcore.errors.ModelNotFoundError, match="without motion modules; pass motion_adapter="):
        vidcore.AnimateDiffPipeline.from_pretrained(setup.sd)
    with pytest.raises(vidcore.errors.ConfigError, match="holds a AutoencoderKL, not a MotionAdapter"):
        vidcore.AnimateDiffPipeline.from_pretrained(setup.sd, motion_adapter=setup.sd / "vae")
    with pytest.raises(TypeError, match="motion_adapter must be a vidcore MotionAdapter"):
        vidcore.AnimateDiffPipeline.from_pretrained(setup.sd, motion_adapter=torch.nn.Linear(1, 1))
    with pytest.raises(TypeError, match="unexpected arguments"):  # (image_encoder / feature_extractor: IP-Adapter's)
        vidcore.AnimateDiffPipeline.from_pretrained(setup.sd, motion_adapter=setup.adapter, safety_checker=None)
    from diffusers import MotionAdapter as RefAdapter

    RefAdapter(**tiny.tiny_motion_adapter_config(block_out_channels=(32, 64, 64))).save_pretrained(tmp_path / "sdxl")
    with pytest.raises(ValueError, match="block_out_channels .* do not match the UNet's"):
        vidcore.AnimateDiffPipeline.from_pretrained(setup.sd, motion_adapter=tmp_path / "sdxl")


def test_hub_download_patterns_skip_unused_weights():
    from fnmatch import fnmatch

    from vidcore.loading.fetch import download_patterns as _patterns

    repo = ["model_index.json", "v1-5-pruned.ckpt", "v1-5-pruned-emaonly.safetensors", "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
            "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.non_ema.safetensors",
            "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors", "tokenizer/vocab.json",
            "tokenizer/merges.txt", "safety_checker/model.safetensors", "safety_checker/config.json"]
    comps = ["tokenizer", "text_encoder", "unet"]

    def fetched(variant):
        return sorted(f for f in repo if any(fnmatch(f, p) for p in _patterns(comps, variant)))

    assert fetched(None) == ["model_index.json", "text_encoder/model.safetensors", "tokenizer/merges.txt",
                             "tokenizer/vocab.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"]
    assert fetched("fp16") == ["model_index.json", "text_encoder/model.fp16.safetensors", "tokenizer/merges.txt",
                               "tokenizer/vocab.json", "unet/config.json",
                               "unet/diffusion_pytorch_model.fp16.safetensors"]


def test_unet_motion_config_outside_sd15_is_refused(setup, tmp_path):
    from vidcore.pipelines.animatediff import load_unet_motion

    folder = tmp_path / "saved"
    setup.pipe.unet.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "encoder_hid_dim_type": "ip_image_proj"}))
    with pytest.raises(vidcore.errors.ConfigError, match="encoder_hid_dim_type='ip_image_proj' is not supported"):
        load_unet_motion(folder)
    # SDXL's text_time conditioning loads (tests/test_motion_sdxl.py) but needs its sizes
    (folder / "config.json").write_text(json.dumps({**config, "addition_embed_type": "text_time"}))
    with pytest.raises(vidcore.errors.ConfigError, match="text_time' needs addition_time_embed_dim"):
        load_unet_motion(folder)
    (folder / "config.json").write_text(json.dumps({**config, "in_channels": 9}))
    with pytest.raises(vidcore.errors.ConfigError, match="a PIA UNet"):
        load_unet_motion(folder)
