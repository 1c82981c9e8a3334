"""Samplers built from diffusers ``scheduler_config.json`` files, matching diffusers step for step.

    from vidcore.schedulers import from_config
    scheduler = from_config("path/to/model/scheduler")             # reads _class_name
    scheduler = from_config(cfg_dict, timestep_spacing="trailing")   # with overrides
    pndm = from_config({"_class_name": "PNDMScheduler", "skip_prk_steps": True})  # SD1.5's PLMS
    dpm = DPMSolverMultistepScheduler.from_config(scheduler.to_diffusers_config())  # switch sampler
    lcm = LCMScheduler.from_config(scheduler.to_diffusers_config(), beta_schedule="linear")  # AnimateLCM
"""

from __future__ import annotations

from pathlib import Path

from .common import Scheduler, SchedulerConfig, read_config
from .ddim import DDIMConfig, DDIMScheduler
from .ddpm import DDPMConfig, DDPMScheduler
from .dpm_solver import DPMSolverMultistepConfig, DPMSolverMultistepScheduler
from .euler import EulerDiscreteConfig, EulerDiscreteScheduler
from .euler_ancestral import EulerAncestralDiscreteConfig, EulerAncestralDiscreteScheduler
from .lcm import LCMConfig, LCMScheduler
from .pndm import PNDMConfig, PNDMScheduler
from .tcd import TCDConfig, TCDScheduler

SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.diffusers_name: cls
    for cls in (DDIMScheduler, DPMSolverMultistepScheduler, DDPMScheduler, EulerDiscreteScheduler,
                EulerAncestralDiscreteScheduler, PNDMScheduler, LCMScheduler, TCDScheduler)
}
# short names beyond "<ClassName> minus 'Scheduler'" (lower-case keys)
SHORT_NAMES: dict[str, str] = {
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "eulerancestral": "EulerAncestralDiscreteScheduler",
}


def scheduler_class(name: str) -> type[Scheduler]:
    """Class for a diffusers class name ("DDIMScheduler") or its bare form ("DDIM", "ddim")."""
    key = name.lower().removesuffix("scheduler")
    if key in SHORT_NAMES:
        return SCHEDULERS[SHORT_NAMES[key]]
    for full, cls in SCHEDULERS.items():
        if key == full.lower().removesuffix("scheduler"):
            return cls
    supported = ", ".join(SCHEDULERS)
    raise ValueError(
        f"unsupported scheduler type {name!r}; supported: {supported} "
        "(or without 'Scheduler'; 'Euler' and 'Euler-A' also work)"
    )


def from_config(config: dict | str | Path, **overrides) -> Scheduler:
    """Build the scheduler named by the config's ``_class_name``; keyword overrides replace config values."""
    cfg = read_config(config)
    if "_class_name" not in cfg:
        raise ValueError(f"scheduler config has no '_class_name'; supported: {', '.join(SCHEDULERS)}")
    return scheduler_class(cfg["_class_name"]).from_config(cfg, **overrides)


def stored_or_fallback(config: dict | str | Path, fallback, note: str = "") -> Scheduler:
    """The scheduler a pipeline stored (:func:`from_config`), or ``fallback(config dict)`` when vidcore does not
    implement that class (e.g. LMS), with a log message naming both (``note`` is appended to it)."""
    import logging

    try:
        return from_config(config)
    except (ValueError, NotImplementedError) as err:
        scheduler = fallback(read_config(config))
        logging.getLogger(__name__).warning("the stored scheduler is not usable in vidcore (%s); using %s%s",
                                            str(err).split(";")[0], type(scheduler).__name__, note)
        return scheduler


__all__ = [
    "SCHEDULERS",
    "DDIMConfig",
    "DDIMScheduler",
    "DDPMConfig",
    "DDPMScheduler",
    "DPMSolverMultistepConfig",
    "DPMSolverMultistepScheduler",
    "EulerAncestralDiscreteConfig",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteConfig",
    "EulerDiscreteScheduler",
    "LCMConfig",
    "LCMScheduler",
    "PNDMConfig",
    "PNDMScheduler",
    "Scheduler",
    "SchedulerConfig",
    "TCDConfig",
    "TCDScheduler",
    "from_config",
    "stored_or_fallback",
    "read_config",
    "scheduler_class",
]
