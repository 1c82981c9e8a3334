"""Step caches on every pipeline family (tiny random models): DeepCache with cache_interval=1 and the block cache
with threshold=0 equal the uncached run bit for bit; cached runs are finite, report their counts in
``.cache_stats`` and stay closer to the uncached video than another seed's video is (a bound measured here)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch

import tiny
import tiny_animatediff
import tiny_controlnet
import tiny_zero
import vidcore

STEPS = 6


def _image(size=32):
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8))


def _t2v(root):
    tiny.build_tiny_t2v_pipeline(root / "t2v")
    pipe = vidcore.TextToVideoPipeline.from_pretrained(root / "t2v")
    return pipe, dict(prompt="a cat", num_frames=3, height=16, width=16)


def _i2vgen(root):
    tiny.build_tiny_i2vgen_pipeline(root / "i2v")
    pipe = vidcore.I2VGenXLPipeline.from_pretrained(root / "i2v")
    return pipe, dict(prompt="a cat", image=_image(), num_frames=3, height=16, width=16)


def _svd(root):
    tiny.build_tiny_svd_pipeline(root / "svd")
    pipe = vidcore.StableVideoDiffusionPipeline.from_pretrained(root / "svd")
    return pipe, dict(image=_image(), num_frames=3, height=16, width=16)


def _animatediff(root):  # 30 frames > the adapter's 24 positions: sliding windows, several UNet calls per step
    built = tiny_animatediff.build_tiny_animatediff(root / "ad")
    pipe = vidcore.AnimateDiffPipeline.from_pretrained(built.sd, motion_adapter=built.adapter)
    return pipe, dict(prompt="waves", num_frames=30, height=8, width=8, context_length=12, context_stride=5)


def _zero(root):
    tiny_zero.build_tiny_sd(root / "zero")
    pipe = vidcore.TextToVideoZeroPipeline.from_pretrained(root / "zero")
    return pipe, dict(prompt="a horse", video_length=3, height=16, width=16, t0=2, t1=4)


def _controlled(root):
    built = tiny_controlnet.build_tiny_controlled(root / "cn")
    pipe = vidcore.ControlledVideoPipeline.from_pretrained(built.sd, controlnet=built.controlnet)
    return pipe, dict(prompt="a red car", conditioning_frames=tiny_controlnet.random_control_frames(3, 16, 16))


FAMILIES = {"text-to-video": _t2v, "i2vgen-xl": _i2vgen, "svd": _svd, "animatediff": _animatediff,
            "text2video-zero": _zero, "controlled": _controlled}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    pipe, kwargs = FAMILIES[request.param](tmp_path_factory.mktemp(request.param))
    pipe.set_progress_bar_config(disable=True)
    return request.param, pipe, kwargs


def _run(pipe, kwargs, seed=0):
    torch.manual_seed(seed)  # I2VGen-XL draws its image latents from the global RNG, as diffusers does
    out = pipe(**kwargs, num_inference_steps=STEPS, generator=torch.Generator("cpu").manual_seed(seed), output_type="np")
    return np.asarray(out.frames), out.cache_stats


def _unet_calls(pipe, kwargs) -> int:
    calls = []
    hook = pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    _run(pipe, kwargs)
    hook.remove()
    return len(calls)


def test_exact_settings_equal_the_uncached_run(family):
    name, pipe, kwargs = family
    plain, stats = _run(pipe, kwargs)
    assert stats is None
    calls = _unet_calls(pipe, kwargs)
    pipe.enable_deep_cache(cache_interval=1, cache_branch_id=0)
    same, stats = _run(pipe, kwargs)
    pipe.disable_deep_cache()
    assert np.array_equal(same, plain)
    assert stats["full"] == calls and stats["cached"] == 0
    pipe.enable_block_cache(threshold=0.0)
    same, stats = _run(pipe, kwargs)
    pipe.disable_block_cache()
    assert np.array_equal(same, plain)
    assert stats == {"method": "block", "threshold": 0.0, "full": calls, "cached": 0}


@pytest.mark.parametrize("method", ["deep", "block"])
def test_cached_runs_skip_work_and_stay_close(family, method):
    name, pipe, kwargs = family
    plain, _ = _run(pipe, kwargs)
    other_seed, _ = _run(pipe, kwargs, seed=1)
    if method == "deep":
        pipe.enable_deep_cache(cache_interval=3, cache_branch_id=0)
    else:
        pipe.enable_block_cache(threshold=0.5)
    cached, stats = _run(pipe, kwargs)
    pipe.disable_deep_cache()
    pipe.disable_block_cache()
    assert pipe.cache_stats() is None
    assert np.isfinite(cached).all() and cached.shape == plain.shape
    assert stats["cached"] > 0 and stats["full"] > 0
    if method == "deep" and name != "text2video-zero":  # step 0 and every third step in full, each UNet call
        steps = len(pipe.scheduler.timesteps)  # PLMS (PNDM, AnimateDiff's stored sampler) adds a step
        per_step, left = divmod(stats["full"] + stats["cached"], steps)
        assert left == 0 and stats["full"] == per_step * len(range(0, steps, 3))
    drift = np.abs(cached - plain).mean()
    assert 0 < drift < np.abs(other_seed - plain).mean(), (drift, np.abs(other_seed - plain).mean())


def test_errors():
    tpipe = vidcore.TextToVideoPipeline.__new__(vidcore.TextToVideoPipeline)
    tpipe.unet = SimpleNamespace(down_blocks=[0, 1])
    with pytest.raises(ValueError, match="cache_branch_id must be an integer in 0..1"):
        tpipe.enable_deep_cache(cache_branch_id=2)
    with pytest.raises(ValueError, match="cache_interval must be an integer >= 1"):
        tpipe.enable_deep_cache(cache_interval=0)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        tpipe.enable_block_cache(threshold=-1)
    tpipe._parallel = SimpleNamespace(config=SimpleNamespace(frame_size=2))
    with pytest.raises(ValueError, match="frame-parallel"):
        tpipe.enable_block_cache(threshold=0.1)
    assert tpipe.cache_stats() is None
    tpipe.enable_deep_cache(cache_interval=2)  # DeepCache's schedule is the same on every rank
    assert tpipe.cache_stats()["method"] == "deep"
