"""Parity of vidcore.schedulers with diffusers: same config dict -> same timesteps and, over a full
sampling loop with a deterministic fake model, the same sample after every step."""

import dataclasses
import json
import math

import pytest
import torch

import diffusers
from vidcore import schedulers as vs

SHAPE = (2, 4, 3, 8, 8)  # b c f h w
RTOL, ATOL = 1e-5, 1e-5

MODELSCOPE = {  # damo-vilab/text-to-video-ms-1.7b scheduler/scheduler_config.json
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.15.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
I2VGEN = {  # ali-vilab/i2vgen-xl scheduler
    "_class_name": "DDIMScheduler",
    "beta_schedule": "squaredcos_cap_v2",
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


def fake_model(sample: torch.Tensor, t) -> torch.Tensor:
    """Deterministic stand-in for a UNet: depends on both the sample and the timestep."""
    t = float(t)
    return torch.sin(sample * 1.3 + t / 250.0) * 0.8 + 0.1 * sample * math.cos(t / 100.0)


def initial_sample(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def both(config: dict, **overrides):
    ours = vs.from_config(config, **overrides)
    theirs = getattr(diffusers, ours.diffusers_name).from_config(config, **overrides)
    return ours, theirs


def assert_loop_matches(ours, theirs, steps, *, eta=None, seed=None, start=0, sample=None):
    """Run both samplers over the same schedule (optionally from `start`, as video2video does)."""
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    assert ours.timesteps.dtype == torch.int64
    assert torch.equal(ours.timesteps, theirs.timesteps), (ours.timesteps, theirs.timesteps)
    if hasattr(theirs, "sigmas") and hasattr(ours, "sigmas"):
        torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=1e-6, atol=0)
    timesteps = theirs.timesteps[start * theirs.order :]
    ours.set_begin_index(start * ours.order)
    if hasattr(theirs, "set_begin_index"):
        theirs.set_begin_index(start * theirs.order)

    kw_o, kw_t = {}, {}
    if eta is not None:
        kw_o["eta"] = kw_t["eta"] = eta
    if seed is not None:
        kw_o["generator"] = torch.Generator().manual_seed(seed)
        kw_t["generator"] = torch.Generator().manual_seed(seed)

    x_o = x_t = initial_sample() if sample is None else sample
    for t in timesteps:
        x_o = ours.step(fake_model(ours.scale_model_input(x_o, t), t), t, x_o, **kw_o)
        x_t = theirs.step(fake_model(theirs.scale_model_input(x_t, t), t), t, x_t, **kw_t).prev_sample
        torch.testing.assert_close(x_o, x_t, rtol=RTOL, atol=ATOL, msg=f"t={int(t)}")
    assert torch.isfinite(x_o).all()


# ------------------------------------------------------------------------------------------ DDIM

DDIM_CASES = {
    "modelscope": dict(MODELSCOPE),
    "i2vgen": dict(I2VGEN),
    "linear_clip": {"_class_name": "DDIMScheduler", "beta_schedule": "linear", "clip_sample": True,
                    "clip_sample_range": 1.5},
    "linspace_sample": {**MODELSCOPE, "timestep_spacing": "linspace", "prediction_type": "sample",
                        "clip_sample": True},
    "trailing_vpred_zsnr": {**MODELSCOPE, "timestep_spacing": "trailing", "prediction_type": "v_prediction",
                            "rescale_betas_zero_snr": True, "set_alpha_to_one": True},
    "thresholding": {**MODELSCOPE, "thresholding": True, "sample_max_value": 1.5},
    "trained_betas": {"_class_name": "DDIMScheduler",
                      "trained_betas": torch.linspace(1e-4, 0.02, 1000).tolist(), "beta_schedule": "linear"},
}


@pytest.mark.parametrize("name", list(DDIM_CASES))
@pytest.mark.parametrize("steps", [7, 25])
def test_ddim_matches_diffusers(name, steps):
    assert_loop_matches(*both(DDIM_CASES[name]), steps)


@pytest.mark.parametrize("name", ["modelscope", "i2vgen", "linear_clip"])
def test_ddim_eta_noise_stream_matches(name):
    assert_loop_matches(*both(DDIM_CASES[name]), 10, eta=0.7, seed=1234)


def test_ddim_add_noise_and_video2video_start():
    ours, theirs = both(MODELSCOPE)
    ours.set_timesteps(20)
    theirs.set_timesteps(20)
    x0, noise = initial_sample(1), initial_sample(2)
    t = theirs.timesteps[8:9].repeat(SHAPE[0])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), rtol=0, atol=0)
    assert_loop_matches(ours, theirs, 20, start=8, sample=theirs.add_noise(x0, noise, t))


def test_ddim_step_requires_set_timesteps():
    with pytest.raises(ValueError, match="set_timesteps"):
        vs.DDIMScheduler().step(initial_sample(), 10, initial_sample())


# ------------------------------------------------------------------------------------------ DPM-Solver++

DPM = {"_class_name": "DPMSolverMultistepScheduler", "beta_schedule": "scaled_linear",
       "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_dpm_solver_matches_diffusers(order, karras, prediction_type):
    cfg = {**DPM, "solver_order": order, "use_karras_sigmas": karras, "prediction_type": prediction_type}
    for steps in (8, 20):  # < 15 uses lower_order_final, >= 15 does not
        assert_loop_matches(*both(cfg), steps)


@pytest.mark.parametrize(
    "extra",
    [
        {"solver_type": "heun"},
        {"solver_type": "heun", "solver_order": 3},
        {"lower_order_final": False, "final_sigmas_type": "sigma_min"},
        {"euler_at_final": True, "final_sigmas_type": "sigma_min", "timestep_spacing": "trailing"},
        {"timestep_spacing": "leading", "steps_offset": 1},
        {"timestep_spacing": "trailing", "prediction_type": "sample", "thresholding": True},
        {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1, "use_karras_sigmas": True},
        {"beta_schedule": "linear", "rescale_betas_zero_snr": True, "prediction_type": "v_prediction",
         "timestep_spacing": "trailing"},
    ],
    ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()),
)
def test_dpm_solver_options_match_diffusers(extra):
    assert_loop_matches(*both({**DPM, **extra}), 12)


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_sde_dpm_solver_noise_stream_matches(solver_type, order):
    cfg = {**DPM, "algorithm_type": "sde-dpmsolver++", "solver_type": solver_type, "solver_order": order}
    assert_loop_matches(*both(cfg), 10, seed=7)


@pytest.mark.parametrize("karras", [False, True])
def test_dpm_solver_video2video_begin_index(karras):
    """VideoToVideoSDPipeline: timesteps[t_start * order:], set_begin_index, add_noise at the first one."""
    ours, theirs = both({**DPM, "use_karras_sigmas": karras})
    steps, strength = 20, 0.6
    t_start = steps - int(steps * strength)
    for s in (ours, theirs):
        s.set_timesteps(steps)
        s.set_begin_index(t_start * s.order)
    x0, noise = initial_sample(1), initial_sample(2)
    t = theirs.timesteps[t_start:][:1].repeat(SHAPE[0])
    noisy = theirs.add_noise(x0, noise, t)
    torch.testing.assert_close(ours.add_noise(x0, noise, t), noisy, rtol=0, atol=0)
    assert_loop_matches(ours, theirs, steps, start=t_start, sample=noisy)
    assert ours.step_index == theirs.step_index == steps


def test_dpm_solver_restart_without_begin_index_finds_step():
    """Without a begin index the first step's index comes from looking the timestep up."""
    ours, theirs = both(DPM)
    for s in (ours, theirs):
        s.set_timesteps(10)
    x = initial_sample()
    t = theirs.timesteps[4]
    out_o = ours.step(fake_model(x, t), t, x)
    out_t = theirs.step(fake_model(x, t), t, x).prev_sample
    assert ours.step_index == theirs.step_index == 5
    torch.testing.assert_close(out_o, out_t, rtol=RTOL, atol=ATOL)
    x0, noise = initial_sample(1), initial_sample(2)
    ts = theirs.timesteps[[2, 7]]
    torch.testing.assert_close(ours.add_noise(x0, noise, ts), theirs.add_noise(x0, noise, ts), rtol=0, atol=0)


def test_dpm_solver_set_timesteps_resets_history():
    s = vs.DPMSolverMultistepScheduler.from_config(DPM)
    s.set_timesteps(5)
    x = initial_sample()
    for t in s.timesteps[:3]:
        x = s.step(fake_model(x, t), t, x)
    s.set_begin_index(2)
    s.set_timesteps(5)
    assert s.step_index is None and s.begin_index is None and s.lower_order_nums == 0
    assert all(m is None for m in s.model_outputs)


def test_zeroscope_switch_from_modelscope_ddim_config():
    """DPMSolverMultistepScheduler.from_config(pipe.scheduler.config): keys that were absent from the
    hub file take DPM's defaults (linspace spacing), exactly as diffusers' _use_default_values does."""
    ddim_o = vs.from_config(MODELSCOPE)
    ddim_t = diffusers.DDIMScheduler.from_config(MODELSCOPE)
    ours = vs.DPMSolverMultistepScheduler.from_config(ddim_o.to_diffusers_config())
    theirs = diffusers.DPMSolverMultistepScheduler.from_config(ddim_t.config)
    assert ours.config.timestep_spacing == theirs.config.timestep_spacing == "linspace"
    assert_loop_matches(ours, theirs, 25)
    # and diffusers reads our exported dict the same way
    again = diffusers.DPMSolverMultistepScheduler.from_config(ddim_o.to_diffusers_config())
    assert again.config.timestep_spacing == "linspace"


# ------------------------------------------------------------------------------------------ DDPM


@pytest.mark.parametrize(
    "cfg",
    [
        {"_class_name": "DDPMScheduler"},
        {"_class_name": "DDPMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
         "beta_end": 0.012, "clip_sample": False, "timestep_spacing": "trailing"},
        {"_class_name": "DDPMScheduler", "beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction",
         "variance_type": "fixed_large", "timestep_spacing": "linspace"},
        {"_class_name": "DDPMScheduler", "beta_schedule": "sigmoid", "variance_type": "fixed_small_log",
         "steps_offset": 1, "prediction_type": "sample"},
    ],
)
def test_ddpm_matches_diffusers(cfg):
    ours, theirs = both(cfg)
    x0, noise = initial_sample(1), initial_sample(2)
    t = torch.tensor([0, 999])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), rtol=0, atol=0)
    assert_loop_matches(ours, theirs, 12, seed=3)


def test_ddpm_add_noise_half_precision():
    ours, theirs = both({"_class_name": "DDPMScheduler", "beta_schedule": "scaled_linear"})
    x0, noise = initial_sample(1).half(), initial_sample(2).half()
    t = torch.tensor([10, 500])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ configs


def test_from_config_unknown_class_name():
    with pytest.raises(ValueError) as err:
        vs.from_config({"_class_name": "LMSDiscreteScheduler"})
    msg = str(err.value)
    assert "'LMSDiscreteScheduler'" in msg
    for name in ("DDIMScheduler", "DPMSolverMultistepScheduler", "DDPMScheduler", "PNDMScheduler",
                 "EulerAncestralDiscreteScheduler"):
        assert name in msg


def test_from_config_missing_class_name():
    with pytest.raises(ValueError, match="_class_name"):
        vs.from_config({"beta_schedule": "linear"})


@pytest.mark.parametrize("name,cls", [("DDIM", vs.DDIMScheduler), ("ddpm", vs.DDPMScheduler),
                                      ("DPMSolverMultistep", vs.DPMSolverMultistepScheduler)])
def test_from_config_bare_names(name, cls):
    assert type(vs.from_config({"_class_name": name})) is cls


def test_from_config_path_overrides_and_roundtrip(tmp_path):
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(MODELSCOPE))
    s = vs.from_config(tmp_path, beta_schedule="linear", timestep_spacing="linspace")
    assert isinstance(s, vs.DDIMScheduler)
    assert s.config.beta_schedule == "linear" and s.config.timestep_spacing == "linspace"
    assert s.config.steps_offset == 1 and s.num_train_timesteps == 1000 and len(s) == 1000
    out = s.to_diffusers_config()
    assert out["_class_name"] == "DDIMScheduler" and out["beta_start"] == 0.00085
    theirs = diffusers.DDIMScheduler.from_config(MODELSCOPE, beta_schedule="linear", timestep_spacing="linspace")
    for key in s.config.field_names():
        assert out[key] == theirs.config[key], key
    assert vs.from_config(out).config == s.config
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.config.beta_start = 0.1


def test_config_errors_are_actionable():
    with pytest.raises(ValueError, match="timestep_spacing='middle'.*'leading'"):
        vs.from_config(MODELSCOPE, timestep_spacing="middle")
    with pytest.raises(TypeError, match="beta_strat"):
        vs.from_config(MODELSCOPE, beta_strat=0.1)
    with pytest.raises(NotImplementedError, match="use_lu_lambdas"):
        vs.from_config({**DPM, "use_lu_lambdas": True})
    with pytest.raises(ValueError, match="algorithm_type"):
        vs.from_config({**DPM, "algorithm_type": "dpmsolver"})
    with pytest.raises(ValueError, match="num_inference_steps=2000"):
        vs.from_config(MODELSCOPE).set_timesteps(2000)


def test_vidcore_schedulers_do_not_import_diffusers():
    import subprocess
    import sys

    code = "import sys, vidcore.schedulers; assert not [m for m in sys.modules if m.startswith('diffusers')]"
    subprocess.run([sys.executable, "-c", code], check=True)
