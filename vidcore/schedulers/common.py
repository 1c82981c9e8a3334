"""Pieces every discrete-time scheduler shares: beta/alpha tables, timestep spacing, x0 recovery,
and the config plumbing that reads diffusers' ``scheduler_config.json``.

The numerics follow diffusers operation for operation (same dtypes, same op order) because the
pipelines must reproduce diffusers' samples seed for seed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(map(repr, allowed))}")


# --------------------------------------------------------------------------------------------
# Noise tables
# --------------------------------------------------------------------------------------------


def cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Glide's cosine schedule: betas chosen so that prod(1 - beta) follows cos^2 (computed in float64
    python floats, stored as float32, exactly as diffusers' ``betas_for_alpha_bar``)."""

    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    n = num_train_timesteps
    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float32)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift/scale sqrt(alpha_bar) so the last step has zero signal (arXiv 2305.08891, Alg. 1)."""
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alpha_bar = root**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def make_betas(cfg) -> torch.Tensor:
    """Training betas (float32) from the usual config fields."""
    n = cfg.num_train_timesteps
    if cfg.trained_betas is not None:
        betas = torch.tensor(cfg.trained_betas, dtype=torch.float32)
    elif cfg.beta_schedule == "linear":
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, n, dtype=torch.float32)
    elif cfg.beta_schedule == "scaled_linear":  # latent diffusion: linear in sqrt(beta)
        betas = torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, n, dtype=torch.float32) ** 2
    elif cfg.beta_schedule == "squaredcos_cap_v2":
        betas = cosine_betas(n)
    elif cfg.beta_schedule == "sigmoid":
        betas = torch.sigmoid(torch.linspace(-6, 6, n)) * (cfg.beta_end - cfg.beta_start) + cfg.beta_start
    else:
        check_choice("beta_schedule", cfg.beta_schedule, BETA_SCHEDULES)
    if cfg.rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def spaced_timesteps(spacing: str, num_train_timesteps: int, num_steps: int, steps_offset: int) -> np.ndarray:
    """Descending int64 timesteps for DDIM/DDPM (Table 2 of arXiv 2305.08891)."""
    if num_steps > num_train_timesteps:
        raise ValueError(
            f"num_inference_steps={num_steps} cannot exceed num_train_timesteps={num_train_timesteps}"
        )
    if spacing == "linspace":
        return np.linspace(0, num_train_timesteps - 1, num_steps).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = num_train_timesteps // num_steps
        return (np.arange(0, num_steps) * ratio).round()[::-1].copy().astype(np.int64) + steps_offset
    if spacing == "trailing":
        ratio = num_train_timesteps / num_steps
        return np.round(np.arange(num_train_timesteps, 0, -ratio)).astype(np.int64) - 1
    check_choice("timestep_spacing", spacing, TIMESTEP_SPACINGS)


# --------------------------------------------------------------------------------------------
# Step helpers
# --------------------------------------------------------------------------------------------


def x0_and_eps(prediction_type: str, model_output, sample, alpha_prod):
    """Recover (x0, epsilon) from what the network predicts, given alpha_bar at the current step."""
    beta_prod = 1 - alpha_prod
    if prediction_type == "epsilon":
        return (sample - beta_prod**0.5 * model_output) / alpha_prod**0.5, model_output
    if prediction_type == "sample":
        return model_output, (sample - alpha_prod**0.5 * model_output) / beta_prod**0.5
    if prediction_type == "v_prediction":
        x0 = alpha_prod**0.5 * sample - beta_prod**0.5 * model_output
        return x0, alpha_prod**0.5 * model_output + beta_prod**0.5 * sample
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (arXiv 2205.11487): clamp each sample to its `ratio` quantile of
    |x0| (at least 1, at most `max_value`) and rescale into [-1, 1]."""
    dtype, shape = x0.dtype, x0.shape
    flat = x0.reshape(shape[0], -1)
    if dtype not in (torch.float32, torch.float64):
        flat = flat.float()  # quantile needs float; clamp lacks CPU half
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(shape).to(dtype)


def clip_x0(x0: torch.Tensor, cfg) -> torch.Tensor:
    if cfg.thresholding:
        return dynamic_threshold(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
    if getattr(cfg, "clip_sample", False):
        return x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
    return x0


def broadcast_to(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """(b,) -> (b, 1, ..., 1) with `ndim` dims, for per-sample coefficients."""
    values = values.flatten()
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def add_noise_vp(alphas_cumprod: torch.Tensor, original, noise, timesteps) -> torch.Tensor:
    """Variance-preserving forward noising shared by DDIM and DDPM (computed in the sample's dtype)."""
    a = alphas_cumprod.to(device=original.device, dtype=original.dtype)[timesteps.to(original.device)]
    return broadcast_to(a**0.5, original.ndim) * original + broadcast_to((1 - a) ** 0.5, original.ndim) * noise


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def read_config(config: dict | str | Path) -> dict:
    """A config dict, a ``scheduler_config.json`` path, or a folder holding one (or ``scheduler/``)."""
    if isinstance(config, dict):
        return dict(config)
    path = Path(config)
    if path.is_dir():
        for candidate in (path / "scheduler_config.json", path / "scheduler" / "scheduler_config.json"):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise FileNotFoundError(f"no scheduler_config.json in {path} or {path / 'scheduler'}")
    if not path.is_file():
        raise FileNotFoundError(f"scheduler config not found: {path}")
    return json.loads(path.read_text())


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    """Base of the frozen per-scheduler configs.

    ``defaulted`` remembers which fields were absent from the source file. diffusers records the same
    thing as ``_use_default_values`` and, when a config moves to another scheduler class, lets the new
    class use its own defaults for those keys (e.g. a ModelScope DDIM config gives DPM-Solver its
    ``linspace`` spacing, not DDIM's ``leading``). We write and honour the same key.
    """

    defaulted: frozenset = dataclasses.field(default=frozenset(), repr=False, compare=False)

    # keys diffusers knows for this class that we do not implement -> their only accepted value
    unsupported: ClassVar[dict[str, Any]] = {}
    # spelling differences diffusers silently maps, e.g. {"algorithm_type": {"deis": "dpmsolver++"}}
    aliases: ClassVar[dict[str, dict]] = {}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "defaulted"]

    @classmethod
    def from_diffusers_config(cls, config: dict, **overrides):
        """Build from a diffusers config dict. Unknown keys are ignored (hub files carry extras such as
        ``skip_prk_steps``); unknown overrides are an error (they are a typo in user code)."""
        names = cls.field_names()
        bad = sorted(set(overrides) - set(names) - set(cls.unsupported))
        if bad:
            raise TypeError(f"{cls.__name__} has no option(s) {bad}; known options: {names}")
        skip = set(config.get("_use_default_values", ()))
        values = {k: v for k, v in config.items() if k in names and k not in skip}
        values.update({k: v for k, v in overrides.items() if k in names})
        for key, ok in cls.unsupported.items():
            given = overrides.get(key, config.get(key, ok) if key not in skip else ok)
            if given != ok:
                raise NotImplementedError(f"{cls.__name__}: {key}={given!r} is not implemented (only {ok!r})")
        for key, table in cls.aliases.items():
            if key in values:
                values[key] = table.get(values[key], values[key])
        if values.get("trained_betas") is not None:
            values["trained_betas"] = tuple(float(b) for b in values["trained_betas"])
        return cls(**values, defaulted=frozenset(set(names) - set(values)))

    def to_diffusers_config(self, class_name: str) -> dict:
        out = {"_class_name": class_name}
        for name in self.field_names():
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        if self.defaulted:
            out["_use_default_values"] = sorted(self.defaulted)
        return out


@dataclasses.dataclass(frozen=True)
class BetaScheduleConfig(SchedulerConfig):
    """The training noise schedule every vidcore sampler is built on (diffusers' defaults); each sampler's
    config adds its own fields after these."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None


class Scheduler:
    """What every scheduler exposes to pipelines (names mirror diffusers)."""

    config_class: ClassVar[type[SchedulerConfig]]
    diffusers_name: ClassVar[str]
    order: ClassVar[int] = 1
    init_noise_sigma: float = 1.0

    def __init__(self, config: SchedulerConfig | None = None, **options):
        if config is None:
            config = self.config_class(**options)
        elif options:
            config = dataclasses.replace(config, **options)
        self.config = config
        # keys of the source file this class has no field for, written back by to_diffusers_config (as
        # diffusers keeps them): SD1.5's PNDM config says clip_sample=False, which matters once moved to DDIM
        self.extra_config: dict[str, Any] = {}
        self.num_inference_steps: int | None = None
        self._begin_index: int | None = None

    @classmethod
    def from_config(cls, config: dict | str | Path | SchedulerConfig, **overrides):
        """Build from a diffusers config (dict or json path). ``_class_name`` is ignored here, so a
        config written for another scheduler can be reused, as with diffusers' ``from_config``."""
        if isinstance(config, SchedulerConfig):
            config = config.to_diffusers_config(cls.diffusers_name)
        config = read_config(config)
        scheduler = cls(cls.config_class.from_diffusers_config(config, **overrides))
        names = set(cls.config_class.field_names()) | set(cls.config_class.unsupported)
        scheduler.extra_config = {k: v for k, v in config.items() if k not in names and not k.startswith("_")}
        return scheduler

    def to_diffusers_config(self) -> dict:
        out = self.config.to_diffusers_config(self.diffusers_name)
        return {**out, **{k: v for k, v in self.extra_config.items() if k not in out}}

    @property
    def num_train_timesteps(self) -> int:
        return self.config.num_train_timesteps

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Index into ``timesteps`` of the first step a pipeline will run (img2img/video2video skip the
        noisiest steps). Reset by ``set_timesteps``."""
        self._begin_index = begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample  # these variance-preserving samplers feed the model x_t unscaled

    def _require_timesteps(self) -> None:
        if self.num_inference_steps is None:
            raise ValueError(f"{type(self).__name__}: call set_timesteps(num_inference_steps) before step()")

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
