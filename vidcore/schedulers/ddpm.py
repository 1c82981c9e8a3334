"""DDPM (arXiv 2006.11239): ancestral sampling from the posterior q(x_{t-1} | x_t, x0).

Used mostly for ``add_noise`` (training, SVD/I2VGen image-noise augmentation); ``step`` matches
diffusers' ``DDPMScheduler`` for the fixed variance types.
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

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large")


@dataclass(frozen=True)
class DDPMConfig(BetaScheduleConfig):
    variance_type: str = "fixed_small"
    clip_sample: bool = True
    prediction_type: str = "epsilon"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    clip_sample_range: float = 1.0
    sample_max_value: float = 1.0
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False

    def __post_init__(self):
        check_choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)
        check_choice("variance_type", self.variance_type, VARIANCE_TYPES)


class DDPMScheduler(Scheduler):
    config_class = DDPMConfig
    diffusers_name = "DDPMScheduler"

    def __init__(self, config: DDPMConfig | None = None, **options):
        super().__init__(config, **options)
        self.betas = make_betas(self.config)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.timesteps = torch.arange(self.config.num_train_timesteps - 1, -1, -1, dtype=torch.int64)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        cfg = self.config
        steps = spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, num_inference_steps, cfg.steps_offset)
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(steps).to(device)
        self._begin_index = None

    def previous_timestep(self, t: int) -> int:
        """The next entry of the schedule (-1 after the last); t - 1 before set_timesteps."""
        if self.num_inference_steps is None:
            return t - 1
        index = int((self.timesteps.cpu() == t).nonzero()[0, 0])
        return int(self.timesteps[index + 1]) if index + 1 < len(self.timesteps) else -1

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Posterior mean (eq. 7) plus fixed-variance noise for t > 0. `eta` is accepted for a uniform
        pipeline interface and ignored (DDPM is always fully stochastic)."""
        t = int(timestep)
        prev_t = self.previous_timestep(t)
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
        alpha_t = a_t / a_prev  # one-step alpha between the two scheduled timesteps
        beta_t = 1 - alpha_t

        x0, _ = x0_and_eps(self.config.prediction_type, model_output, sample, a_t)
        x0 = clip_x0(x0, self.config)
        x0_coeff = (a_prev**0.5 * beta_t) / (1 - a_t)
        xt_coeff = alpha_t**0.5 * (1 - a_prev) / (1 - a_t)
        prev = x0_coeff * x0 + xt_coeff * sample

        if t > 0:
            noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            prev = prev + self._std(a_t, a_prev, beta_t) * noise
        return prev

    def _std(self, a_t, a_prev, beta_t) -> torch.Tensor:
        if self.config.variance_type == "fixed_large":
            return beta_t**0.5
        posterior_var = torch.clamp((1 - a_prev) / (1 - a_t) * beta_t, min=1e-20)
        if self.config.variance_type == "fixed_small_log":
            return torch.exp(0.5 * torch.log(posterior_var))
        return posterior_var**0.5

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x_0) = sqrt(a_t) x_0 + sqrt(1 - a_t) eps, per batch element."""
        return add_noise_vp(self.alphas_cumprod, original, noise, timesteps)
