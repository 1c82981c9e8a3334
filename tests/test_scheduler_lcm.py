"""LCMScheduler / TCDScheduler parity with diffusers: same timesteps, and over a sampling loop with a fake model
and seeded generators, the same sample after every step (custom timesteps, strength, begin index too)."""

import diffusers
import pytest
import torch
from test_schedulers import (
    ATOL,
    RTOL,
    assert_loop_matches,
    both,
    fake_model,
    initial_sample,
)

from vidcore import schedulers as vs

LCM = {"_class_name": "LCMScheduler"}
ANIMATELCM = {"_class_name": "LCMScheduler", "beta_schedule": "linear", "beta_start": 0.00085, "beta_end": 0.012,
              "clip_sample": False, "steps_offset": 1, "timestep_spacing": "linspace"}

CONFIGS = {
    "default": {},
    "animatelcm_linear": {k: v for k, v in ANIMATELCM.items() if k != "_class_name"},
    "vpred_zsnr": {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_scaling": 5.0},
    "sample_clip": {"prediction_type": "sample", "clip_sample": True, "clip_sample_range": 0.8,
                    "set_alpha_to_one": False},
    "threshold_cos": {"thresholding": True, "sample_max_value": 1.2, "beta_schedule": "squaredcos_cap_v2",
                      "original_inference_steps": 25},
    "trained_betas": {"trained_betas": torch.linspace(1e-4, 0.02, 1000).tolist(), "num_train_timesteps": 1000,
                      "original_inference_steps": 100},
}


@pytest.mark.parametrize("kind", ["LCMScheduler", "TCDScheduler"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_consistency_samplers_match_diffusers(kind, name):
    cfg = {"_class_name": kind, **CONFIGS[name]}
    for steps in (1, 4, 8):
        kw = {"eta": 0.3} if kind == "TCDScheduler" else {}
        assert_loop_matches(*both(cfg), steps, seed=11, **kw)


@pytest.mark.parametrize("eta", [0.0, 0.7, 1.0])
def test_tcd_gamma_matches_diffusers(eta):
    assert_loop_matches(*both({"_class_name": "TCDScheduler"}), 6, eta=eta, seed=5)


def _loop(ours, theirs, kw_set, *, eta=None, seed=3, start=0):
    ours.set_timesteps(**kw_set)
    theirs.set_timesteps(**kw_set)
    assert torch.equal(ours.timesteps, theirs.timesteps), (ours.timesteps, theirs.timesteps)
    assert ours.num_inference_steps == theirs.num_inference_steps
    if start:
        ours.set_begin_index(start)
        theirs.set_begin_index(start)
    g_o, g_t = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    extra = {} if eta is None else {"eta": eta}
    x_o = x_t = initial_sample()
    for t in theirs.timesteps[start:]:
        x_o = ours.step(fake_model(x_o, t), t, x_o, generator=g_o, **extra)
        x_t = theirs.step(fake_model(x_t, t), t, x_t, generator=g_t, **extra).prev_sample
        torch.testing.assert_close(x_o, x_t, rtol=RTOL, atol=ATOL, msg=f"t={int(t)}")


@pytest.mark.parametrize("kind", ["LCMScheduler", "TCDScheduler"])
@pytest.mark.parametrize("kw_set", [
    {"timesteps": [999, 759, 499, 259]},
    {"timesteps": [999, 700, 333, 20], "strength": 0.5},
    {"num_inference_steps": 4, "strength": 0.6},
    {"num_inference_steps": 6, "original_inference_steps": 30},
], ids=["custom", "custom_strength", "strength", "original_steps"])
def test_set_timesteps_options_match_diffusers(kind, kw_set):
    _loop(*both({"_class_name": kind}), kw_set, eta=0.4 if kind == "TCDScheduler" else None)


def test_begin_index_and_denoised_outputs():
    ours, theirs = both(LCM)
    _loop(ours, theirs, {"num_inference_steps": 6}, start=2)
    assert ours.step_index == theirs.step_index == 6
    # the consistency estimate of the last step is kept, as diffusers' `denoised`
    for s in (ours, theirs):
        s.set_timesteps(2)
    x, t = initial_sample(), theirs.timesteps[1]
    ours.set_begin_index(1)
    theirs.set_begin_index(1)
    out_o = ours.step(fake_model(x, t), t, x)
    out_t = theirs.step(fake_model(x, t), t, x)
    torch.testing.assert_close(ours.denoised, out_t.denoised, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(out_o, out_t.prev_sample, rtol=RTOL, atol=ATOL)
    tcd_o, tcd_t = both({"_class_name": "TCDScheduler"})
    for s in (tcd_o, tcd_t):
        s.set_timesteps(3)
    t = tcd_t.timesteps[0]
    tcd_o.step(fake_model(x, t), t, x, eta=0.5, generator=torch.manual_seed(0))
    out_t = tcd_t.step(fake_model(x, t), t, x, eta=0.5, generator=torch.manual_seed(0))
    torch.testing.assert_close(tcd_o.pred_noised_sample, out_t.pred_noised_sample, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", ["LCMScheduler", "TCDScheduler"])
def test_config_roundtrip_and_add_noise(kind):
    cfg = {**ANIMATELCM, "_class_name": kind, "original_inference_steps": 40, "timestep_scaling": 8.0}
    ours, theirs = both(cfg)
    out = ours.to_diffusers_config()
    assert out["_class_name"] == kind
    for key in ours.config.field_names():
        assert out[key] == theirs.config[key], key
    assert set(ours.config.field_names()) == set(theirs.config) - {"_class_name", "_diffusers_version"} - {
        k for k in theirs.config if k.startswith("_")}
    x0, noise, t = initial_sample(1), initial_sample(2), torch.tensor([5, 900])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), rtol=0, atol=0)
    # a DDIM config moved to LCM takes LCM's own defaults for the keys the file did not have
    ddim = vs.DDIMScheduler.from_config({"_class_name": "DDIMScheduler", "beta_schedule": "linear"})
    moved_o = getattr(vs, kind).from_config(ddim.to_diffusers_config())
    moved_t = getattr(diffusers, kind).from_config(diffusers.DDIMScheduler.from_config(
        {"beta_schedule": "linear"}).config)
    assert moved_o.config.original_inference_steps == moved_t.config.original_inference_steps == 50
    assert moved_o.config.beta_start == moved_t.config.beta_start


def test_errors_are_actionable():
    s = vs.LCMScheduler()
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(initial_sample(), 999, initial_sample())
    with pytest.raises(ValueError, match="exactly one"):
        s.set_timesteps()
    with pytest.raises(ValueError, match="original_inference_steps=50"):
        s.set_timesteps(60)
    with pytest.raises(ValueError, match="descending"):
        s.set_timesteps(timesteps=[500, 700])
    with pytest.raises(ValueError, match="beta_schedule"):
        vs.LCMScheduler(beta_schedule="sigmoid")
    with pytest.raises(ValueError, match="eta"):
        t = vs.TCDScheduler()
        t.set_timesteps(2)
        t.step(initial_sample(), t.timesteps[0], initial_sample(), eta=1.5)
    assert vs.scheduler_class("lcm") is vs.LCMScheduler and vs.scheduler_class("TCD") is vs.TCDScheduler
