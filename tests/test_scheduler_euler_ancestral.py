"""Parity of vidcore's EulerAncestralDiscreteScheduler with diffusers: same config dict -> identical tables,
and with the same generator seed the same sample after every step of a full loop (same noise draws)."""

import math

import pytest
import torch

import diffusers
from vidcore import schedulers as vs

SHAPE = (2, 4, 3, 8, 8)  # b c f h w
RTOL, ATOL = 1e-6, 1e-6

PIX2PIX = {  # timbrooks/instruct-pix2pix scheduler/scheduler_config.json
    "_class_name": "EulerAncestralDiscreteScheduler",
    "_diffusers_version": "0.14.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "trained_betas": None,
}
DEFAULT = {"_class_name": "EulerAncestralDiscreteScheduler"}


def fake_model(sample: torch.Tensor, t) -> torch.Tensor:
    t = float(t)
    return torch.sin(sample * 1.3 + t / 250.0) * 0.8 + 0.1 * sample * math.cos(t / 100.0)


def initial_sample(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def both(config: dict, **overrides):
    ours = vs.from_config(config, **overrides)
    assert type(ours) is vs.EulerAncestralDiscreteScheduler
    theirs = diffusers.EulerAncestralDiscreteScheduler.from_config(config, **overrides)
    return ours, theirs


def assert_tables_equal(ours, theirs):
    assert ours.timesteps.dtype == theirs.timesteps.dtype
    assert torch.equal(ours.timesteps, theirs.timesteps), (ours.timesteps, theirs.timesteps)
    assert torch.equal(ours.sigmas, theirs.sigmas)
    assert ours.sigmas.device == theirs.sigmas.device
    assert torch.equal(torch.as_tensor(ours.init_noise_sigma), torch.as_tensor(theirs.init_noise_sigma))


def run_loop(ours, theirs, steps, *, seed=0, start=0, sample=None, generators=None):
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    assert_tables_equal(ours, theirs)
    if start:
        ours.set_begin_index(start)
        theirs.set_begin_index(start)
    if generators is None:
        g_o, g_t = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    else:
        g_o = [torch.Generator().manual_seed(s) for s in generators]
        g_t = [torch.Generator().manual_seed(s) for s in generators]
    x_o = x_t = initial_sample() * theirs.init_noise_sigma if sample is None else sample
    for t in theirs.timesteps[start:]:
        in_o, in_t = ours.scale_model_input(x_o, t), theirs.scale_model_input(x_t, t)
        torch.testing.assert_close(in_o, in_t, rtol=RTOL, atol=ATOL)
        x_o = ours.step(fake_model(in_o, t), t, x_o, eta=0.0, generator=g_o)
        x_t = theirs.step(fake_model(in_t, t), t, x_t, generator=g_t).prev_sample
        torch.testing.assert_close(x_o, x_t, rtol=RTOL, atol=ATOL, msg=f"t={float(t)}")
        assert ours.step_index == theirs.step_index
    assert torch.isfinite(x_o).all()
    if generators is None:  # both generators drew the same numbers (one randn per step, the last one too)
        assert torch.equal(torch.randn(3, generator=g_o), torch.randn(3, generator=g_t))
    return x_o


@pytest.mark.parametrize("steps", [1, 4, 20, 50, 100])
def test_pix2pix_config_matches(steps):
    ours, theirs = both(PIX2PIX)
    assert_tables_equal(ours, theirs)  # training tables before set_timesteps (float64 timesteps)
    run_loop(ours, theirs, steps, seed=steps)


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_option_grid_matches(spacing, prediction_type):
    cfg = {**PIX2PIX, "timestep_spacing": spacing, "prediction_type": prediction_type}
    for steps in (9, 25):
        run_loop(*both(cfg), steps, seed=3)


@pytest.mark.parametrize(
    "extra",
    [
        {"steps_offset": 0, "timestep_spacing": "leading"},
        {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"trained_betas": torch.linspace(1e-4, 0.02, 1000).tolist()},
    ],
    ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items() if k != "trained_betas") or "trained",
)
def test_more_options_match(extra):
    run_loop(*both({**PIX2PIX, **extra}), 12, seed=11)


def test_default_config_and_generator_list():
    run_loop(*both(DEFAULT), 10, seed=5)
    run_loop(*both(PIX2PIX), 10, generators=[1, 2])  # one generator per batch element


def test_generator_determinism():
    s = vs.from_config(PIX2PIX)
    outs = []
    for seed in (7, 7, 8):
        s.set_timesteps(10)
        g = torch.Generator().manual_seed(seed)
        x = initial_sample() * s.init_noise_sigma
        for t in s.timesteps:
            x = s.step(fake_model(s.scale_model_input(x, t), t), t, x, generator=g)
        outs.append(x)
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])


def test_add_noise_and_img2img_start():
    ours, theirs = both(PIX2PIX)
    steps, t_start = 20, 8
    for s in (ours, theirs):
        s.set_timesteps(steps)
        s.set_begin_index(t_start)
    x0, noise = initial_sample(1), initial_sample(2)
    t = theirs.timesteps[t_start:][:1].repeat(SHAPE[0])
    noisy = theirs.add_noise(x0, noise, t)
    torch.testing.assert_close(ours.add_noise(x0, noise, t), noisy, rtol=0, atol=0)
    run_loop(ours, theirs, steps, start=t_start, sample=noisy, seed=4)
    # without a begin index add_noise looks each timestep up
    ours, theirs = both(PIX2PIX)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    ts = theirs.timesteps[[2, 7]]
    torch.testing.assert_close(ours.add_noise(x0, noise, ts), theirs.add_noise(x0, noise, ts), rtol=0, atol=0)


def test_half_precision_step():
    ours, theirs = both(PIX2PIX)
    for s in (ours, theirs):
        s.set_timesteps(6)
    x = (initial_sample() * theirs.init_noise_sigma).half()
    t = theirs.timesteps[0]
    out_o = ours.step(fake_model(ours.scale_model_input(x, t), t).half(), t, x,
                      generator=torch.Generator().manual_seed(0))
    out_t = theirs.step(fake_model(theirs.scale_model_input(x, t), t).half(), t, x,
                        generator=torch.Generator().manual_seed(0)).prev_sample
    assert out_o.dtype == torch.float16
    torch.testing.assert_close(out_o, out_t, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["EulerAncestralDiscreteScheduler", "EulerAncestralDiscrete", "euler-a",
                                  "Euler_A", "EulerAncestral"])
def test_from_config_names(name):
    assert type(vs.from_config({**PIX2PIX, "_class_name": name})) is vs.EulerAncestralDiscreteScheduler


def test_config_roundtrip_and_switch():
    s = vs.from_config(PIX2PIX)
    out = s.to_diffusers_config()
    assert out["_class_name"] == "EulerAncestralDiscreteScheduler" and "use_karras_sigmas" not in out
    theirs = diffusers.EulerAncestralDiscreteScheduler.from_config(out)
    for key in s.config.field_names():
        assert out[key] == theirs.config[key], key
    assert vs.from_config(out).config == s.config
    # moved to deterministic Euler and back, as diffusers does
    euler = vs.EulerDiscreteScheduler.from_config(out)
    ref = diffusers.EulerDiscreteScheduler.from_config(theirs.config)
    assert euler.config.timestep_spacing == ref.config.timestep_spacing == "linspace"
    assert euler.config.steps_offset == ref.config.steps_offset == 1


def test_errors_are_actionable():
    with pytest.raises(ValueError, match="prediction_type"):
        vs.from_config({**PIX2PIX, "prediction_type": "sample"})
    with pytest.raises(ValueError, match="beta_schedule"):
        vs.from_config({**PIX2PIX, "beta_schedule": "sigmoid"})
    s = vs.from_config(PIX2PIX)
    s.set_timesteps(5)
    with pytest.raises(ValueError, match="integer"):
        s.step(initial_sample(), 3, initial_sample())
