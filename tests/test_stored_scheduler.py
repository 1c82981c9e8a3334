"""A stored scheduler vidcore does not implement (LMS, as some SD1.5 repos ship) falls back per pipeline family,
with a log line naming both."""

from __future__ import annotations

import json
import logging

from vidcore.pipelines.animatediff import stored_scheduler
from vidcore.pipelines.text2video_zero import sd_scheduler
from vidcore.schedulers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler

BASE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "steps_offset": 1}


def write(tmp_path, name):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"_class_name": name, **BASE}))
    return path


def test_supported_scheduler_is_used_as_stored(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert type(sd_scheduler(write(tmp_path, "PNDMScheduler"))) is PNDMScheduler
        assert type(stored_scheduler(write(tmp_path, "PNDMScheduler"))) is PNDMScheduler
    assert not caplog.records


def test_unsupported_scheduler_falls_back_with_a_log_line(tmp_path, caplog):
    lms = write(tmp_path, "LMSDiscreteScheduler")
    with caplog.at_level(logging.WARNING):
        sd = sd_scheduler(lms)
        ad = stored_scheduler(lms)
        euler_like = sd_scheduler(write(tmp_path, "EulerUnknownScheduler"))
    assert type(sd) is DDIMScheduler and sd.config.beta_schedule == "scaled_linear"  # built from the stored config
    assert type(ad) is DDIMScheduler and ad.config.beta_schedule == "linear"  # AnimateDiff's recommended settings
    assert type(euler_like) is EulerDiscreteScheduler
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and all("LMSDiscreteScheduler" in m or "EulerUnknownScheduler" in m for m in messages)
    assert "using DDIMScheduler built from its config" in messages[0]
    assert "using DDIMScheduler with AnimateDiff's recommended settings" in messages[1]
