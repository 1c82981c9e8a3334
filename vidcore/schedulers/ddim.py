"""DDIM (arXiv 2010.02502): deterministic at eta=0, DDPM-like noise at eta=1.

ModelScope / Zeroscope and I2VGen-XL ship this scheduler. Matches diffusers' ``DDIMScheduler``
including its quirk that the previous timestep is always ``t - T // n``, whatever the spacing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..random import randn_tensor
from .common import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    Scheduler,
    BetaScheduleConfig,
    add_noise_vp,
    check_choice,
    clip_x0,
    make_betas,
    spaced_timesteps,
    x0_and_eps,
)


@dataclass(frozen=True)
class DDIMConfig(BetaScheduleConfig):
    clip_sample: bool = True
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    clip_sample_range: float = 1.0
    sample_max_value: float = 1.0
    timestep_spacing: str = "leading"
    rescale_betas_zero_snr: bool = False

    def __post_init__(self):
        check_choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)


class DDIMScheduler(Scheduler):
    config_class = DDIMConfig
    diffusers_name = "DDIMScheduler"

    def __init__(self, config: DDIMConfig | None = None, **options):
        super().__init__(config, **options)
        cfg = self.config
        self.betas = make_betas(cfg)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        # alpha_bar "before" step 0: 1 (clean data) or, as LDM-era models were trained, alpha_bar[0]
        self.final_alpha_cumprod = torch.tensor(1.0) if cfg.set_alpha_to_one else self.alphas_cumprod[0]
        self.timesteps = torch.arange(cfg.num_train_timesteps - 1, -1, -1, dtype=torch.int64)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        cfg = self.config
        steps = spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, num_inference_steps, cfg.steps_offset)
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(steps).to(device)
        self._begin_index = None

    def _alpha_prod(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """x_t -> x_{t-1} by DDIM eq. (12); with eta > 0 adds sigma_t(eta) * N(0, I) drawn from `generator`."""
        self._require_timesteps()
        t = int(timestep)
        prev_t = t - self.config.num_train_timesteps // self.num_inference_steps
        a_t, a_prev = self.alphas_cumprod[t], self._alpha_prod(prev_t)

        x0, eps = x0_and_eps(self.config.prediction_type, model_output, sample, a_t)
        x0 = clip_x0(x0, self.config)

        # eq. (16): sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        std = eta * variance**0.5
        prev = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
        if eta > 0:
            noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            prev = prev + std * noise
        return prev

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x_0) = sqrt(a_t) x_0 + sqrt(1 - a_t) eps, per batch element."""
        return add_noise_vp(self.alphas_cumprod, original, noise, timesteps)

