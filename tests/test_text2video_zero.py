"""TextToVideoZeroPipeline against diffusers' deprecated TextToVideoZeroPipeline (same tiny random SD model,
same seed -> same frames), the motion-field warp against diffusers' helper, and errors."""

import numpy as np
import pytest
import torch

import tiny_zero
import vidcore
from vidcore.nn.warp import warp_latents

TOL = 1e-4  # max abs difference of np frames in [0, 1] (and of latents)
SMALL = dict(video_length=3, height=16, width=24, num_inference_steps=4, t0=1, t1=2)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd")
    sd = tiny_zero.build_tiny_sd(folder)
    return tiny_zero.zero_pipeline(sd), folder


def load(folder, stored_scheduler=False, **kwargs):
    if not stored_scheduler:  # the reference (tiny_zero.zero_pipeline) samples with DDIM from the stored config
        kwargs.setdefault("scheduler", vidcore.schedulers.DDIMScheduler.from_config(folder))
    pipe = vidcore.TextToVideoZeroPipeline.from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_both(ref, ours, seed=0, **kwargs):
    expected = ref(generator=torch.Generator().manual_seed(seed), **kwargs).images
    got = ours(generator=torch.Generator().manual_seed(seed), **kwargs)
    return np.asarray(expected), got


# -- motion field ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,ids,sx,sy", [((3, 4, 8, 12), [1, 2, 3], 12, 12),
                                             ((4, 4, 64, 64), [1, 2, 5, 7], 12.3, -7.1),
                                             ((2, 3, 6, 10), [3, 9], 40, 0)])
def test_warp_equals_diffusers(shape, ids, sx, sy):
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
        create_motion_field_and_warp_latents,
    )

    x = torch.randn(shape, generator=torch.Generator().manual_seed(len(ids)))
    expected = create_motion_field_and_warp_latents(sx, sy, ids, x)
    got = warp_latents(x, ids, sx, sy)
    assert torch.equal(got, expected)
    assert not torch.equal(got, x)


def test_warp_is_a_translation():
    # 64 x 64 latent, strength 16 on the 512 grid = 2 cells per frame id; interior cells move exactly
    x = torch.randn(1, 2, 64, 64, generator=torch.Generator().manual_seed(0))
    got = warp_latents(x, [1], 16, 0)
    assert torch.equal(got[..., :, 4:60], x[..., :, 6:62])
    got = warp_latents(x, [2], 0, 8)
    assert torch.equal(got[..., 4:60, :], x[..., 6:62, :])


def test_warp_errors():
    with pytest.raises(ValueError, match="frame ids"):
        warp_latents(torch.zeros(2, 4, 8, 8), [1])
    with pytest.raises(ValueError, match="frames, channels"):
        warp_latents(torch.zeros(4, 8, 8), [1])


# -- parity with diffusers ------------------------------------------------------------------------

def test_stored_pndm_scheduler_parity(setup):
    import diffusers

    ref, folder = setup
    ours = load(folder, stored_scheduler=True)
    assert type(ours.scheduler).__name__ == "PNDMScheduler"  # the stored SD1.5 scheduler, as diffusers
    saved = ref.scheduler
    ref.scheduler = diffusers.PNDMScheduler.from_config(tiny_zero.SD15_SCHEDULER_CONFIG)
    try:
        for kwargs in (SMALL, dict(SMALL, num_inference_steps=6, t0=2, t1=4)):
            expected, got = run_both(ref, ours, prompt="a bear playing guitar", negative_prompt="blurry", **kwargs)
            assert np.abs(got.frames[0] - expected).max() < TOL
    finally:
        ref.scheduler = saved


def test_ddim_parity(setup):
    ref, folder = setup
    ours = load(folder)
    assert type(ours.scheduler).__name__ == "DDIMScheduler"  # built from the stored PNDM config
    expected, got = run_both(ref, ours, prompt="a bear playing guitar", negative_prompt="blurry", **SMALL)
    frames = got.frames
    assert frames.shape == (1, 3, 16, 24, 3) and expected.shape == (3, 16, 24, 3)
    assert np.abs(frames[0] - expected).max() < TOL
    assert np.array_equal(got.images, frames[0])
    # frames differ from each other (the motion field moved them) but are not noise-independent
    assert np.abs(frames[0, 1] - frames[0, 0]).max() > 1e-3


@pytest.mark.parametrize("kwargs", [
    dict(motion_field_strength_x=-20, motion_field_strength_y=5, frame_ids=[0, 4, 9], guidance_scale=4.0),
    dict(video_length=4, num_inference_steps=5, t0=0, t1=3, eta=0.7),  # eta noise after the forward jump
    dict(video_length=1),
])
def test_parity_options(setup, kwargs):
    ref, folder = setup
    ours = load(folder)
    args = {**SMALL, **kwargs}
    expected, got = run_both(ref, ours, seed=3, prompt="a cat", **args)
    assert np.abs(got.frames[0] - expected).max() < TOL


def test_latents_in_latent_out_non_square(setup):
    ref, folder = setup
    ours = load(folder)
    latents = torch.randn(1, 4, 12, 4, generator=torch.Generator().manual_seed(5))
    kw = dict(prompt="x", video_length=3, height=24, width=8, num_inference_steps=3, t0=0, t1=1, latents=latents)
    expected, got = run_both(ref, ours, output_type="latent", **kw)
    assert got.frames.shape == (1, 4, 3, 12, 4)
    assert torch.allclose(got.images, torch.as_tensor(expected), atol=TOL)


def test_without_guidance(setup):
    # diffusers' pipeline fails with guidance_scale <= 1 (it concatenates a missing negative embedding)
    _, folder = setup
    ours = load(folder)
    a = ours(prompt="x", guidance_scale=1.0, generator=torch.Generator().manual_seed(0), **SMALL).frames
    b = ours(prompt="x", guidance_scale=1.0, negative_prompt="y", generator=torch.Generator().manual_seed(0),
             **SMALL).frames
    c = ours(prompt="x", guidance_scale=1.5, generator=torch.Generator().manual_seed(0), **SMALL).frames
    assert np.array_equal(a, b) and np.abs(a - c).max() > 1e-3


def test_prompt_embeds_equal_prompt(setup):
    _, folder = setup
    ours = load(folder)
    pe = vidcore.pipelines.text.clip_embed(ours.tokenizer, ours.text_encoder, ["a dog"], "cpu")
    ne = vidcore.pipelines.text.clip_embed(ours.tokenizer, ours.text_encoder, ["ugly"], "cpu")
    a = ours(prompt="a dog", negative_prompt="ugly", generator=torch.Generator().manual_seed(1), **SMALL).frames
    b = ours(prompt_embeds=pe, negative_prompt_embeds=ne, generator=torch.Generator().manual_seed(1), **SMALL).frames
    assert np.abs(a - b).max() < 1e-6


@pytest.mark.parametrize("scheduler", ["ddim", "stored pndm", "dpm++"])
def test_several_videos_each_equal_a_single_run(setup, scheduler):
    """Multistep samplers keep phase-1 outputs of the first frames into phase 3: repeated per frame, so a batch
    of videos equals single runs (diffusers' PNDM / DPM-Solver fail there with more than one video)."""
    _, folder = setup
    ours = load(folder, stored_scheduler=scheduler == "stored pndm")
    if scheduler == "dpm++":
        ours.scheduler = vidcore.schedulers.DPMSolverMultistepScheduler.from_config(folder)
    gens = [torch.Generator().manual_seed(s) for s in (11, 12)]
    both = ours(prompt=["a dog", "a cat"], generator=gens, **SMALL).frames
    assert both.shape == (2, 3, 16, 24, 3)
    for k, (p, s) in enumerate([("a dog", 11), ("a cat", 12)]):
        one = ours(prompt=p, generator=torch.Generator().manual_seed(s), **SMALL).frames
        assert np.abs(both[k] - one[0]).max() < 1e-5
    two = ours(prompt="a dog", num_videos_per_prompt=2, generator=torch.Generator().manual_seed(0), **SMALL).frames
    assert two.shape == (2, 3, 16, 24, 3) and np.abs(two[0] - two[1]).max() > 1e-3


def test_callbacks_and_attention_restored(setup):
    _, folder = setup
    ours = load(folder)
    seen, legacy = [], []

    def on_step(pipe, i, t, tensors):
        seen.append((i, int(t), tuple(tensors["latents"].shape)))
        return {}

    ours(prompt="x", generator=torch.Generator().manual_seed(0), callback_on_step_end=on_step,
         callback=lambda i, t, x: legacy.append(i), callback_steps=2, **SMALL)
    # 4 steps, t0=1, t1=2: 1 step on the first frame to T1, 1 to T0, then 3 steps on all 3 frames from T1
    ts = [int(t) for t in ours.scheduler.timesteps]
    assert [s[1] for s in seen] == ts[:1] + ts[1:2] + ts[1:]
    assert [s[2][0] for s in seen] == [1, 1, 3, 3, 3] and [s[0] for s in seen] == list(range(5))
    assert legacy == [0, 2, 4]
    from vidcore.nn.attention import Attention
    assert all(m.cross_frame is None for m in ours.unet.modules() if isinstance(m, Attention))


def test_callback_replaces_prompt_embeds(setup):
    _, folder = setup
    ours = load(folder)
    other = vidcore.pipelines.text.clip_embed(ours.tokenizer, ours.text_encoder, ["a red car"], "cpu")

    def swap_at(step):
        def on_step(pipe, i, t, tensors):
            return {"prompt_embeds": other} if i == step else {}
        return on_step

    def run(**kw):
        return ours(prompt="a dog", generator=torch.Generator().manual_seed(0),
                    callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"], **SMALL, **kw).frames

    target = ours(prompt="a red car", generator=torch.Generator().manual_seed(0), **SMALL).frames
    base = run()
    late = run(callback_on_step_end=swap_at(3))  # swapped inside the last phase: the final step uses it
    early = run(callback_on_step_end=swap_at(-1))  # never
    assert np.array_equal(early, base) and np.abs(late - base).max() > 1e-4 and np.abs(late - target).max() > 1e-4


def test_errors(setup):
    _, folder = setup
    ours = load(folder)
    with pytest.raises(ValueError, match="t0 and t1"):
        ours(prompt="x", video_length=2, num_inference_steps=10)  # defaults 44/47 need 48 steps
    with pytest.raises(ValueError, match="t0 and t1"):
        ours(prompt="x", **{**SMALL, "t0": 2, "t1": 2})
    with pytest.raises(ValueError, match="frame_ids"):
        ours(prompt="x", frame_ids=[0, 1], **SMALL)
    with pytest.raises(ValueError, match="multiples of 8"):
        ours(prompt="x", **{**SMALL, "height": 12})
    with pytest.raises(ValueError, match="exactly one"):
        ours(**SMALL)
