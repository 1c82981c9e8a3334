"""Step caches (vidcore.sampling.step_cache): the full-step schedules, by arithmetic."""

import math

import pytest

from vidcore.sampling import StepCache, full_steps


@pytest.mark.parametrize("num_steps,interval", [(25, 3), (50, 5), (7, 2), (10, 1), (4, 10)])
def test_uniform_schedule_is_every_interval_th_step(num_steps, interval):
    assert full_steps(num_steps, interval) == list(range(0, num_steps, interval))


@pytest.mark.parametrize("num_steps,interval", [(25, 3), (50, 5), (50, 3), (12, 4), (9, 2)])
def test_non_uniform_schedule_has_as_many_full_steps_denser_early(num_steps, interval):
    steps = full_steps(num_steps, interval, uniform=False)
    assert len(steps) == math.ceil(num_steps / interval) == len(set(steps))
    assert steps[0] == 0 and steps == sorted(steps) and steps[-1] < num_steps
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    if len(gaps) >= 2:
        half = len(gaps) // 2
        assert sum(gaps[:half]) / half <= sum(gaps[half:]) / (len(gaps) - half)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="cache_interval"):
        StepCache("deep", cache_interval=0)
    with pytest.raises(ValueError, match="cache_branch_id"):
        StepCache("deep", cache_branch_id=-1)
    with pytest.raises(ValueError, match="threshold"):
        StepCache("block", threshold=-0.1)


# --------------------------------------------------------------------------- the level walk of every UNet

import torch  # noqa: E402

import tiny  # noqa: E402
from vidcore.models.i2vgen_unet import I2VGenXLConfig, I2VGenXLUNet  # noqa: E402
from vidcore.models.motion import MotionAdapter, MotionAdapterConfig, UNetMotion  # noqa: E402
from vidcore.models.svd_unet import SVDUNet, SVDUNetConfig  # noqa: E402
from vidcore.models.unet2d import UNet2D, UNet2DConfig  # noqa: E402
from vidcore.models.unet3d import UNet3D, UNet3DConfig  # noqa: E402

THREE_LEVELS_3D = dict(block_out_channels=(32, 64, 64), down_block_types=("CrossAttnDownBlock3D",) * 2 + ("DownBlock3D",),
                       up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 2)
THREE_LEVELS_2D = dict(block_out_channels=(32, 64, 64), down_block_types=("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
                       up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _unet3d():
    model = UNet3D(UNet3DConfig.from_diffusers_config(tiny.tiny_unet3d_config(**THREE_LEVELS_3D)))
    return model, model, lambda: model(_randn(2, 4, 3, 8, 12), 500, _randn(2, 5, 32, seed=1))


def _i2vgen():
    model = I2VGenXLUNet(I2VGenXLConfig.from_diffusers_config(tiny.tiny_i2vgen_unet_config()))
    return model, model, lambda: model(_randn(2, 4, 3, 8, 8), 500, 16, _randn(2, 4, 3, 8, 8, seed=2),
                                       _randn(2, 32, seed=3), _randn(2, 5, 32, seed=1))


def _svd():
    model = SVDUNet(SVDUNetConfig.from_diffusers_config(tiny.tiny_svd_unet_config()))
    return model, model, lambda: model(_randn(1, 3, 8, 8, 12), 0.5, _randn(1, 1, 32, seed=1), _randn(1, 3, seed=2))


def _unet2d(residuals=False):
    model = UNet2D(UNet2DConfig.from_diffusers_config(tiny.tiny_unet2d_config(**THREE_LEVELS_2D)))
    # skips: conv_in, level 0 x2 (full size), its downsampler, level 1 x2 (1/2), its downsampler, level 2 x2 (1/4)
    widths, scales = [32, 32, 32, 32, 64, 64, 64, 64, 64], [1, 1, 1, 2, 2, 2, 4, 4, 4]
    extra = dict(down_block_additional_residuals=[_randn(2, c, 8 // s, 12 // s, seed=10 + k)
                                                  for k, (c, s) in enumerate(zip(widths, scales))],
                 mid_block_additional_residual=_randn(2, 64, 2, 3, seed=9)) if residuals else {}
    return model, model, lambda: model(_randn(2, 4, 8, 12), 500, _randn(2, 5, 24, seed=1), **extra)


def _motion():
    unet = UNet2D(UNet2DConfig.from_diffusers_config(tiny.tiny_unet2d_config()))
    adapter = MotionAdapter(MotionAdapterConfig.from_diffusers_config(tiny.tiny_motion_adapter_config()))
    model = UNetMotion(unet, adapter)
    return model, unet, lambda: model(_randn(2, 4, 3, 8, 8), 500, _randn(2, 5, 24, seed=1))


UNETS = {"unet3d": _unet3d, "i2vgen": _i2vgen, "svd": _svd, "unet2d": _unet2d,
         "unet2d+controlnet": lambda: _unet2d(residuals=True), "unet_motion": _motion}


def _build(name):
    model, walker, call = UNETS[name]()
    tiny.randomize_(model, seed=4)
    return model.eval(), walker, call


@pytest.mark.parametrize("name", sorted(UNETS))
def test_deep_cache_shallow_path_equals_the_full_run(name):
    """Same input twice: the second call runs only the top levels and takes the deep feature the first call
    kept, which is what its own deep levels would compute; so it equals the uncached output, for every branch."""
    model, walker, call = _build(name)
    with torch.no_grad():
        plain = call()
        for branch in range(len(walker.down_blocks)):
            walker.step_cache = cache = StepCache("deep", cache_interval=2, cache_branch_id=branch)
            cache.begin(2)
            outs, deep_calls = [], []
            hook = walker.mid_block.register_forward_hook(lambda *a: deep_calls.append("mid"))  # full calls only
            for _ in range(2):
                cache.next_step()
                outs.append(call())
            hook.remove()
            assert deep_calls == ["mid"]
            assert cache.stats == {"full": 1, "cached": 1}
            assert torch.equal(outs[0], plain) and torch.equal(outs[1], plain), branch
    walker.step_cache = None


@pytest.mark.parametrize("name", sorted(UNETS))
def test_block_cache_reuses_an_unchanged_step(name):
    model, walker, call = _build(name)
    with torch.no_grad():
        plain = call()
        walker.step_cache = cache = StepCache("block", threshold=1e-3)
        cache.begin(3)
        outs = []
        for _ in range(3):
            cache.next_step()
            outs.append(call())
    walker.step_cache = None
    assert cache.stats == {"full": 1, "cached": 2}
    assert torch.equal(outs[0], plain)
    for out in outs[1:]:  # level-0 feature + (walk output - level-0 feature): the same up to rounding
        torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-5)


def test_deep_cache_refuses_a_branch_beyond_the_depth():
    model, walker, call = _build("svd")
    walker.step_cache = StepCache("deep", cache_branch_id=2)
    with pytest.raises(ValueError, match="beyond this UNet's depth"), torch.no_grad():
        call()
