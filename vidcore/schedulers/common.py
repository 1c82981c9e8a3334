"""Pieces every discrete-time scheduler shares: beta/alpha tables, timestep spacing, x0 recovery,
the config plumbing that reads diffusers' ``scheduler_config.json``, and the two scheduler bases
(:class:`AlphaBarScheduler` for DDIM/DDPM/PNDM, :class:`SigmaScheduler` for DPM-Solver/Euler), so that
each scheduler file holds only its own table and step.

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


def spaced_timesteps(cfg, num_steps: int) -> np.ndarray:
    """Descending int64 timesteps by ``cfg.timestep_spacing`` (Table 2 of arXiv 2305.08891), shared by DDIM,
    DDPM, PNDM and Euler's leading/trailing tables."""
    T = cfg.num_train_timesteps
    if num_steps > T:
        raise ValueError(f"num_inference_steps={num_steps} cannot exceed num_train_timesteps={T}")
    if cfg.timestep_spacing == "linspace":
        return np.linspace(0, T - 1, num_steps).round()[::-1].copy().astype(np.int64)
    if cfg.timestep_spacing == "leading":
        ratio = T // num_steps
        return (np.arange(0, num_steps) * ratio).round()[::-1].copy().astype(np.int64) + cfg.steps_offset
    if cfg.timestep_spacing == "trailing":
        ratio = T / num_steps
        return np.round(np.arange(T, 0, -ratio)).astype(np.int64) - 1
    check_choice("timestep_spacing", cfg.timestep_spacing, TIMESTEP_SPACINGS)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (arXiv 2206.00364) eq. 5: uniform steps in sigma^(1/rho)."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + np.linspace(0, 1, n) * (lo - hi)) ** rho


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each sigma: linear interpolation in log-sigma."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    # index of the last table entry <= log_sigma (the table ascends), kept inside [0, len - 2]
    low = np.searchsorted(log_sigmas.astype(np.float64), log_sigma, side="right") - 1
    low = np.clip(low, 0, len(log_sigmas) - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return (1 - w) * low + w * (low + 1)


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
    # keys of the source file this class has no field for, written back by to_diffusers_config (as diffusers keeps
    # them): SD1.5's PNDM config says clip_sample=False, which matters once moved to DDIM (``from_config(config)``)
    extra: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    # keys diffusers knows for this class that we do not implement -> their only accepted value
    unsupported: ClassVar[dict[str, Any]] = {}
    # spelling differences diffusers silently maps, e.g. {"algorithm_type": {"deis": "dpmsolver++"}}
    aliases: ClassVar[dict[str, dict]] = {}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name not in ("defaulted", "extra")]

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
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out


@dataclasses.dataclass(frozen=True)
class BetaScheduleConfig(SchedulerConfig):
    """The training noise schedule every vidcore sampler is built on (diffusers' defaults); each sampler's
    config adds its own fields after these, and names the allowed values of its options in ``choices``."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None

    # option -> allowed values, checked in this order when the config is built (so a typo fails early)
    choices: ClassVar[dict[str, tuple]] = {"beta_schedule": BETA_SCHEDULES}

    def __post_init__(self):
        for name, allowed in self.choices.items():
            check_choice(name, getattr(self, name), allowed)


# the options DDIM, DDPM, DPM-Solver and Euler check alike (each adds its own after these)
SAMPLER_CHOICES = {"beta_schedule": BETA_SCHEDULES, "prediction_type": PREDICTION_TYPES,
                   "timestep_spacing": TIMESTEP_SPACINGS}


@dataclasses.dataclass(frozen=True)
class LegacyBetaScheduleConfig(BetaScheduleConfig):
    """Base of PNDM's and Euler-ancestral's configs: diffusers' older samplers take no sigmoid schedule and
    no "sample" prediction, and do not look at beta_schedule when trained_betas is given."""

    choices: ClassVar[dict[str, tuple]] = {"prediction_type": ("epsilon", "v_prediction"),
                                           "timestep_spacing": TIMESTEP_SPACINGS}

    def __post_init__(self):
        if self.trained_betas is None:
            check_choice("beta_schedule", self.beta_schedule, ("linear", "scaled_linear", "squaredcos_cap_v2"))
        super().__post_init__()


# --------------------------------------------------------------------------------------------
# Scheduler bases
# --------------------------------------------------------------------------------------------

# step()'s `generator`: one generator, one per batch element, or the global RNG
Generators = torch.Generator | list[torch.Generator] | None


class Scheduler:
    """What every scheduler exposes to pipelines (names mirror diffusers), and the training tables
    (betas, alpha_bar, the full descending timestep range) they all start from."""

    config_class: ClassVar[type[BetaScheduleConfig]]
    diffusers_name: ClassVar[str]
    order: ClassVar[int] = 1
    init_noise_sigma: float = 1.0

    def __init__(self, config: BetaScheduleConfig | None = None, **options):
        if config is None:
            config = self.config_class(**options)
        elif options:
            config = dataclasses.replace(config, **options)
        self.config = config
        self.num_inference_steps: int | None = None
        self._begin_index: int | None = None
        self.betas = make_betas(config)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.timesteps = torch.arange(config.num_train_timesteps - 1, -1, -1, dtype=torch.int64)

    @classmethod
    def from_config(cls, config: dict | str | Path | SchedulerConfig, **overrides):
        """Build from a diffusers config (dict or json path). ``_class_name`` is ignored here, so a
        config written for another scheduler can be reused, as with diffusers' ``from_config``."""
        if isinstance(config, SchedulerConfig):
            config = config.to_diffusers_config(cls.diffusers_name)
        config = read_config(config)
        names = set(cls.config_class.field_names()) | set(cls.config_class.unsupported)
        extra = {k: v for k, v in config.items() if k not in names and not k.startswith("_")}
        return cls(dataclasses.replace(cls.config_class.from_diffusers_config(config, **overrides), extra=extra))

    @classmethod
    def from_pretrained(cls, path_or_repo: str | Path, subfolder: str | None = None, revision: str | None = None,
                        token: str | None = None, **overrides):
        """``scheduler_config.json`` of a folder or hub repo id (``subfolder="scheduler"`` for a pipeline), as
        diffusers' ``DDIMScheduler.from_pretrained(repo, subfolder="scheduler", beta_schedule="linear")``;
        keyword overrides replace config values, and ``_class_name`` is ignored (as in :meth:`from_config`)."""
        # files and hub ids are the loading layer's (vidcore.hub), above this one: imported when called, as the
        # model classes' from_pretrained does (tests/test_layers.py UPWARD)
        from .. import hub

        folder = hub.resolve(path_or_repo, subfolder=subfolder, allow_patterns=["scheduler_config.json"],
                             revision=revision, token=token)
        return cls.from_config(hub.load_config(folder, "scheduler_config.json"), **overrides)

    @property
    def extra_config(self) -> dict[str, Any]:
        """The source file's keys this class has no field for (``config.extra``)."""
        return self.config.extra

    def to_diffusers_config(self) -> dict:
        return self.config.to_diffusers_config(self.diffusers_name)

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


class AlphaBarScheduler(Scheduler):
    """DDIM, DDPM and PNDM: they step on alpha_bar at integer timesteps of the spaced table."""

    def __init__(self, config: BetaScheduleConfig | None = None, **options):
        super().__init__(config, **options)
        # alpha_bar "before" step 0: 1 (clean data) or, as LDM-era models were trained, alpha_bar[0]
        one = getattr(self.config, "set_alpha_to_one", True)  # DDPM has no such option: always 1
        self.final_alpha_cumprod = torch.tensor(1.0) if one else self.alphas_cumprod[0]

    def _alpha_prod(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """The spaced integer table (see spaced_timesteps); resets the begin index."""
        steps = spaced_timesteps(self.config, num_inference_steps)
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(steps).to(device)
        self._begin_index = None

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x_0) = sqrt(a_t) x_0 + sqrt(1 - a_t) eps, per batch element (computed in
        the sample's dtype)."""
        a = self.alphas_cumprod.to(device=original.device, dtype=original.dtype)[timesteps.to(original.device)]
        return broadcast_to(a**0.5, original.ndim) * original + broadcast_to((1 - a) ** 0.5, original.ndim) * noise


def find_timestep(schedule: torch.Tensor, timestep) -> int | None:
    """Position of `timestep` in `schedule`, None if absent. With duplicates (Karras rounding, custom
    sigmas) the second match, so a restart in the middle does not repeat a sigma."""
    hits = (schedule == timestep).nonzero()
    if len(hits) == 0:
        return None
    return int(hits[1 if len(hits) > 1 else 0])


class SigmaScheduler(Scheduler):
    """DPM-Solver and Euler: they step along a sigma table sigma = sqrt((1 - a) / a) (one extra final
    sigma) and keep a step index, found from the first timestep they see or from ``set_begin_index``."""

    def __init__(self, config: BetaScheduleConfig | None = None, **options):
        super().__init__(config, **options)
        if self.config.rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2**-24  # zero SNR would make sigma infinite; diffusers uses this floor
        self._step_index: int | None = None

    @property
    def step_index(self) -> int | None:
        return self._step_index

    def repeat_step(self) -> None:
        """Make the next ``step`` take the same sigma interval as the last one (samplers that cross each
        interval twice, such as SVD's bidirectional keyframe sampling)."""
        if not self._step_index:
            raise RuntimeError("repeat_step() needs a step() to repeat")
        self._step_index -= 1

    def _train_sigmas(self) -> torch.Tensor:
        """sigma(t) = sqrt((1 - a_t) / a_t) for t = 0..T-1 (float32, ascending)."""
        return ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5

    def _final_sigma(self) -> float:
        """The sigma appended after the last step: 0, or sigma(t=0) with final_sigmas_type="sigma_min"."""
        if self.config.final_sigmas_type == "sigma_min":
            return float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5)
        return 0.0

    def _init_step_index(self, timestep) -> None:
        if self._begin_index is None:
            if isinstance(timestep, torch.Tensor):
                timestep = timestep.to(self.timesteps.device)
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def _noise_sigmas(self, original: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """add_noise's sigma per batch element, shaped to broadcast over `original`. After ``set_begin_index``
        (img2img / video2video) the current (or begin) step's sigma, as diffusers does; otherwise each
        timestep is looked up."""
        sigmas = self.sigmas.to(device=original.device, dtype=original.dtype)
        if self._begin_index is None:
            schedule = self.timesteps.to(original.device)
            index = [self.index_for_timestep(t, schedule) for t in timesteps.to(original.device)]
        else:
            index = [self._step_index if self._step_index is not None else self._begin_index] * timesteps.shape[0]
        return broadcast_to(sigmas[index], original.ndim)
