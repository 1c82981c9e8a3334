"""Parity of vidcore's EulerDiscreteScheduler with diffusers: same config dict -> identical timesteps,
sigmas and init_noise_sigma, and the same sample after every step of a loop with a fake model."""

import math

import pytest
import torch

import diffusers
from vidcore import schedulers as vs

SHAPE = (2, 4, 3, 8, 8)  # b c f h w
RTOL, ATOL = 1e-6, 1e-6

SVD = {  # stabilityai/stable-video-diffusion-img2vid(-xt) scheduler/scheduler_config.json
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.24.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "trained_betas": None,
    "use_karras_sigmas": True,
}
SD15 = {  # the SD 1.5 scheduler config AnimateDiff pipelines start from
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
# ByteDance/AnimateDiff-Lightning: EulerDiscreteScheduler.from_config(cfg, timestep_spacing="trailing",
# beta_schedule="linear")
LIGHTNING = {**SD15, "timestep_spacing": "trailing", "beta_schedule": "linear"}
DEFAULT = {"_class_name": "EulerDiscreteScheduler"}


def fake_model(sample: torch.Tensor, t) -> torch.Tensor:
    """Deterministic stand-in for a UNet: depends on both the sample and the timestep."""
    t = float(t)
    return torch.sin(sample * 1.3 + t / 250.0) * 0.8 + 0.1 * sample * math.cos(t / 100.0)


def initial_sample(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def both(config: dict, **overrides):
    ours = vs.from_config(config, **overrides)
    assert isinstance(ours, vs.EulerDiscreteScheduler)
    theirs = diffusers.EulerDiscreteScheduler.from_config(config, **overrides)
    return ours, theirs


def assert_tables_equal(ours, theirs):
    assert ours.timesteps.dtype == theirs.timesteps.dtype == torch.float32
    assert torch.equal(ours.timesteps, theirs.timesteps), (ours.timesteps, theirs.timesteps)
    assert torch.equal(ours.sigmas, theirs.sigmas), (ours.sigmas, theirs.sigmas)
    assert ours.sigmas.device == theirs.sigmas.device
    assert torch.equal(torch.as_tensor(ours.init_noise_sigma), torch.as_tensor(theirs.init_noise_sigma))


def run_loop(ours, theirs, *, start=0, sample=None, seed=None, begin_index=True, **step_kw):
    """scale_model_input + step over theirs.timesteps[start:], comparing after every step."""
    timesteps = theirs.timesteps[start:]
    if begin_index:
        ours.set_begin_index(start)
        theirs.set_begin_index(start)
    kw_o, kw_t = dict(step_kw), dict(step_kw)
    if seed is not None:
        kw_o["generator"] = torch.Generator().manual_seed(seed)
        kw_t["generator"] = torch.Generator().manual_seed(seed)
    x_o = x_t = initial_sample() * theirs.init_noise_sigma if sample is None else sample
    for t in timesteps:
        in_o, in_t = ours.scale_model_input(x_o, t), theirs.scale_model_input(x_t, t)
        torch.testing.assert_close(in_o, in_t, rtol=RTOL, atol=ATOL)
        x_o = ours.step(fake_model(in_o, t), t, x_o, **kw_o)
        x_t = theirs.step(fake_model(in_t, t), t, x_t, **kw_t).prev_sample
        torch.testing.assert_close(x_o, x_t, rtol=RTOL, atol=ATOL, msg=f"t={float(t)}")
        assert ours.step_index == theirs.step_index
    assert torch.isfinite(x_o).all()
    return x_o


def assert_loop_matches(ours, theirs, steps=None, **kw):
    set_kw = {k: kw.pop(k) for k in ("sigmas", "timesteps") if k in kw}
    ours.set_timesteps(steps, **set_kw)
    theirs.set_timesteps(steps, **set_kw)
    assert_tables_equal(ours, theirs)
    return run_loop(ours, theirs, **kw)


# ------------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize("steps", [25, 7])
def test_svd_config_matches(steps):
    ours, theirs = both(SVD)
    assert_tables_equal(ours, theirs)  # the training tables before set_timesteps
    assert_loop_matches(ours, theirs, steps)
    assert ours.timesteps[0] == pytest.approx(0.25 * math.log(700.0), rel=1e-6)  # continuous timesteps
    assert float(ours.init_noise_sigma) == pytest.approx((700.0**2 + 1) ** 0.5)  # "leading"


@pytest.mark.parametrize("name,cfg", [("default", DEFAULT), ("sd15", SD15), ("lightning", LIGHTNING)])
def test_discrete_configs_match(name, cfg):
    ours, theirs = both(cfg)
    assert_tables_equal(ours, theirs)
    for steps in (4, 20):
        assert_loop_matches(ours, theirs, steps)


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_option_grid_matches(spacing, karras, prediction_type):
    cfg = {**SD15, "timestep_spacing": spacing, "use_karras_sigmas": karras, "prediction_type": prediction_type}
    assert_loop_matches(*both(cfg), 9)


@pytest.mark.parametrize(
    "extra",
    [
        {"final_sigmas_type": "sigma_min"},
        {"final_sigmas_type": "sigma_min", "use_karras_sigmas": True, "timestep_spacing": "trailing"},
        {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
        {"rescale_betas_zero_snr": True, "use_karras_sigmas": True},
        {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"},
        {"interpolation_type": "log_linear"},
        {"interpolation_type": "log_linear", "use_karras_sigmas": True},
        {"timestep_type": "continuous"},  # epsilon: continuous has no effect
        {**SVD, "use_karras_sigmas": False},
        {**SVD, "timestep_spacing": "linspace", "sigma_max": None, "sigma_min": None},
        {"prediction_type": "original_sample"},
        {"trained_betas": torch.linspace(1e-4, 0.02, 1000).tolist()},
    ],
    ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items() if k[0] != "_" and k != "trained_betas") or "trained",
)
def test_more_options_match(extra):
    assert_loop_matches(*both({**SD15, **extra}), 10)


def test_custom_sigmas_and_timesteps():
    # SVD pipeline's `sigmas=` argument: n + 1 values, the last one the final sigma
    ours, theirs = both(SVD)
    sigmas = [700.0, 120.0, 30.0, 8.0, 2.5, 0.7, 0.1, 0.002, 0.0]
    assert_loop_matches(ours, theirs, sigmas=sigmas)
    assert ours.num_inference_steps == theirs.num_inference_steps == len(sigmas) - 1
    ours, theirs = both(SD15)
    assert_loop_matches(ours, theirs, sigmas=[14.0, 5.0, 1.5, 0.3, 0.0])  # discrete: sigma -> t lookup
    assert_loop_matches(ours, theirs, timesteps=[999, 750, 500, 251.5, 20])


def test_churn_noise_stream_matches():
    ours, theirs = both(SD15)
    assert_loop_matches(ours, theirs, 12, seed=1234, s_churn=3.0)
    # churn only inside [s_tmin, s_tmax]
    assert_loop_matches(ours, theirs, 12, seed=5, s_churn=20.0, s_tmin=0.5, s_tmax=5.0, s_noise=1.003)
    ours, theirs = both(SVD)
    assert_loop_matches(ours, theirs, 10, seed=7, s_churn=1.0)


def test_add_noise_and_video2video_start():
    """img2img/v2v: timesteps[t_start:], set_begin_index, add_noise at the first kept timestep."""
    for cfg in (SD15, SVD, {**SD15, "use_karras_sigmas": True}):
        ours, theirs = both(cfg)
        steps, t_start = 20, 8
        for s in (ours, theirs):
            s.set_timesteps(steps)
            s.set_begin_index(t_start)
        x0, noise = initial_sample(1), initial_sample(2)
        t = theirs.timesteps[t_start:][:1].repeat(SHAPE[0])
        noisy = theirs.add_noise(x0, noise, t)
        torch.testing.assert_close(ours.add_noise(x0, noise, t), noisy, rtol=0, atol=0)
        run_loop(ours, theirs, start=t_start, sample=noisy)
        assert ours.step_index == theirs.step_index == steps


def test_restart_without_begin_index_and_add_noise_lookup():
    ours, theirs = both(SVD)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    x0, noise = initial_sample(1), initial_sample(2)
    ts = theirs.timesteps[[2, 7]]
    torch.testing.assert_close(ours.add_noise(x0, noise, ts), theirs.add_noise(x0, noise, ts), rtol=0, atol=0)
    run_loop(ours, theirs, start=4, begin_index=False)  # first step index found from the timestep
    assert ours.step_index == theirs.step_index == 10
    half = x0.half(), noise.half()
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    torch.testing.assert_close(ours.add_noise(*half, ts), theirs.add_noise(*half, ts), rtol=0, atol=0)


def test_half_precision_step_and_set_timesteps_resets():
    ours, theirs = both(SVD)
    for s in (ours, theirs):
        s.set_timesteps(6)
    x = (initial_sample() * theirs.init_noise_sigma).half()
    t = theirs.timesteps[0]
    out_o = ours.step(fake_model(ours.scale_model_input(x, t), t).half(), t, x)
    out_t = theirs.step(fake_model(theirs.scale_model_input(x, t), t).half(), t, x).prev_sample
    assert out_o.dtype == torch.float16
    torch.testing.assert_close(out_o, out_t, rtol=0, atol=0)
    ours.set_begin_index(3)
    ours.set_timesteps(6)
    assert ours.step_index is None and ours.begin_index is None


# ------------------------------------------------------------------------------------------ plumbing


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "EulerDiscrete", "Euler", "euler"])
def test_from_config_names(name):
    assert type(vs.from_config({"_class_name": name})) is vs.EulerDiscreteScheduler
    assert vs.EulerDiscreteScheduler.order == 1


def test_ancestral_is_not_euler():
    assert type(vs.from_config({"_class_name": "EulerAncestralDiscreteScheduler"})) is vs.EulerAncestralDiscreteScheduler
    with pytest.raises(ValueError, match="EulerDiscreteScheduler"):
        vs.from_config({"_class_name": "EulerAncestralDiscreteSchedulerX"})


def test_config_roundtrip_and_switch_from_ddim():
    s = vs.from_config(SVD)
    out = s.to_diffusers_config()
    theirs = diffusers.EulerDiscreteScheduler.from_config(out)
    for key in s.config.field_names():
        assert out[key] == theirs.config[key], key
    assert vs.from_config(out).config == s.config
    # a DDIM config moved to Euler: keys absent from the file take Euler's defaults (linspace spacing)
    ddim_cfg = {**SD15, "_class_name": "DDIMScheduler"}
    ours = vs.EulerDiscreteScheduler.from_config(vs.from_config(ddim_cfg).to_diffusers_config())
    theirs = diffusers.EulerDiscreteScheduler.from_config(diffusers.DDIMScheduler.from_config(ddim_cfg).config)
    assert ours.config.timestep_spacing == theirs.config.timestep_spacing == "linspace"
    assert_loop_matches(ours, theirs, 8)


def test_errors_are_actionable():
    for key in ("use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas"):
        with pytest.raises(NotImplementedError, match=key):
            vs.from_config({**SD15, key: True})
    with pytest.raises(NotImplementedError, match="sigmoid"):
        vs.from_config({**SD15, "beta_schedule": "sigmoid"})
    with pytest.raises(ValueError, match="interpolation_type"):
        vs.from_config({**SD15, "interpolation_type": "cubic"})
    s = vs.from_config(SVD)
    with pytest.raises(ValueError, match="karras"):
        s.set_timesteps(timesteps=[900, 500])
    with pytest.raises(ValueError, match="only one"):
        s.set_timesteps(5, sigmas=[1.0, 0.0])
    with pytest.raises(ValueError, match="one of"):
        s.set_timesteps()
    s = vs.from_config(SD15)
    s.set_timesteps(5)
    with pytest.raises(ValueError, match="integer"):
        s.step(initial_sample(), 3, initial_sample())
    with pytest.raises(ValueError, match="not in the schedule"):
        s.step(initial_sample(), torch.tensor(123.25), initial_sample())
