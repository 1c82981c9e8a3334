"""DDIM (arXiv 2010.02502): deterministic at eta=0, DDPM-like noise at eta=1.

ModelScope / Zeroscope and I2VGen-XL ship this scheduler. Matches diffusers' ``DDIMScheduler``
including its quirk that the previous timestep is always ``t - T // n``, whatever the spacing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..random import randn_tensor
from .common import SAMPLER_CHOICES, AlphaBarScheduler, BetaScheduleConfig, Generators, clip_x0, x0_and_eps


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

    choices = SAMPLER_CHOICES


class DDIMScheduler(AlphaBarScheduler):
    """Tables, set_timesteps and add_noise are AlphaBarScheduler's; DDIM adds its step."""

    config_class = DDIMConfig
    diffusers_name = "DDIMScheduler"

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, eta: float = 0.0,
             generator: Generators = None) -> torch.Tensor:
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
