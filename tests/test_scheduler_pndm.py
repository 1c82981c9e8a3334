"""Parity of vidcore's PNDMScheduler with diffusers: same config dict -> identical timesteps, and the same
sample after every call of a full loop with a deterministic fake model (PLMS and the RK4 warm-up)."""

import math

import pytest
import torch

import diffusers
from vidcore import schedulers as vs

SHAPE = (2, 4, 3, 8, 8)  # b c f h w
RTOL, ATOL = 1e-6, 1e-6

SD15 = {  # runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
DEFAULT = {"_class_name": "PNDMScheduler"}  # skip_prk_steps=False: RK4 warm-up


def fake_model(sample: torch.Tensor, t) -> torch.Tensor:
    """Deterministic stand-in for a UNet: depends on both the sample and the timestep."""
    t = float(t)
    return torch.sin(sample * 1.3 + t / 250.0) * 0.8 + 0.1 * sample * math.cos(t / 100.0)


def initial_sample(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def both(config: dict, **overrides):
    ours = vs.from_config(config, **overrides)
    assert type(ours) is vs.PNDMScheduler
    theirs = diffusers.PNDMScheduler.from_config(config, **overrides)
    return ours, theirs


def assert_loop_matches(ours, theirs, steps, sample=None):
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    assert ours.timesteps.dtype == theirs.timesteps.dtype == torch.int64
    assert torch.equal(ours.timesteps, theirs.timesteps), (ours.timesteps, theirs.timesteps)
    x_o = x_t = initial_sample() if sample is None else sample
    for t in theirs.timesteps:
        x_o = ours.step(fake_model(ours.scale_model_input(x_o, t), t), t, x_o, eta=0.0, generator=None)
        x_t = theirs.step(fake_model(theirs.scale_model_input(x_t, t), t), t, x_t).prev_sample
        torch.testing.assert_close(x_o, x_t, rtol=RTOL, atol=ATOL, msg=f"t={int(t)}")
    assert torch.isfinite(x_o).all()
    return x_o


@pytest.mark.parametrize("steps", [1, 2, 5, 25, 50])
def test_sd15_config_matches(steps):
    ours, theirs = both(SD15)
    assert_loop_matches(ours, theirs, steps)
    assert len(ours.timesteps) == (steps + 1 if steps > 1 else 1)  # second timestep repeated


@pytest.mark.parametrize("steps", [4, 7, 20])
def test_rk_warmup_matches(steps):
    assert_loop_matches(*both(DEFAULT), steps)
    assert_loop_matches(*both(SD15, skip_prk_steps=False), steps)


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("skip_prk", [True, False])
def test_option_grid_matches(spacing, prediction_type, skip_prk):
    cfg = {**SD15, "timestep_spacing": spacing, "prediction_type": prediction_type, "skip_prk_steps": skip_prk}
    for steps in (9, 30):
        assert_loop_matches(*both(cfg), steps)


@pytest.mark.parametrize(
    "extra",
    [
        {"set_alpha_to_one": True},
        {"steps_offset": 0},
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"},
        {"trained_betas": torch.linspace(1e-4, 0.02, 1000).tolist()},
        {"num_train_timesteps": 500, "timestep_spacing": "trailing"},
    ],
    ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items() if k != "trained_betas") or "trained",
)
def test_more_options_match(extra):
    assert_loop_matches(*both({**SD15, **extra}), 13)


def test_set_timesteps_resets_history_and_add_noise():
    ours, theirs = both(SD15)
    ours.set_timesteps(10)
    x = initial_sample()
    for t in ours.timesteps[:4]:
        x = ours.step(fake_model(x, t), t, x)
    assert ours.counter == 4 and ours.ets
    assert_loop_matches(ours, theirs, 10)  # set_timesteps starts afresh
    x0, noise = initial_sample(1), initial_sample(2)
    t = torch.tensor([3, 901])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), rtol=0, atol=0)
    half = x0.half(), noise.half()
    torch.testing.assert_close(ours.add_noise(*half, t), theirs.add_noise(*half, t), rtol=0, atol=0)


def test_half_precision_loop_matches():
    ours, theirs = both(SD15)
    assert_loop_matches(ours, theirs, 6, sample=initial_sample().half())


def test_from_config_dispatch_and_roundtrip():
    for name in ("PNDMScheduler", "PNDM", "pndm"):
        assert type(vs.from_config({**SD15, "_class_name": name})) is vs.PNDMScheduler
    s = vs.from_config(SD15)
    assert s.config.skip_prk_steps and not s.config.set_alpha_to_one and s.config.steps_offset == 1
    assert s.order == 1 and s.init_noise_sigma == 1.0
    out = s.to_diffusers_config()
    assert out["_class_name"] == "PNDMScheduler"
    theirs = diffusers.PNDMScheduler.from_config(out)
    for key in s.config.field_names():
        assert out[key] == theirs.config[key], key
    assert vs.from_config(out).config == s.config
    # SD1.5's PNDM config moved to DDIM (as pipelines do): same result as diffusers
    ours = vs.DDIMScheduler.from_config(out)
    ref = diffusers.DDIMScheduler.from_config(diffusers.PNDMScheduler.from_config(SD15).config)
    for key in ours.config.field_names():
        assert ours.config.__getattribute__(key) == ref.config[key], key


def test_errors_are_actionable():
    with pytest.raises(ValueError, match="prediction_type"):
        vs.from_config({**SD15, "prediction_type": "sample"})
    with pytest.raises(ValueError, match="beta_schedule"):
        vs.from_config({**SD15, "beta_schedule": "sigmoid"})
    with pytest.raises(ValueError, match="num_inference_steps >= 4"):
        vs.from_config(DEFAULT).set_timesteps(3)
    with pytest.raises(ValueError, match="set_timesteps"):
        vs.from_config(SD15).step(initial_sample(), 10, initial_sample())
