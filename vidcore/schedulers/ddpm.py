"""DDPM (arXiv 2006.11239): ancestral sampling from the posterior q(x_{t-1} | x_t, x0).

Used mostly for ``add_noise`` (training, SVD/I2VGen image-noise augmentation); ``step`` matches
diffusers' ``DDPMScheduler`` for the fixed variance types.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..random import randn_tensor
from .common import SAMPLER_CHOICES, AlphaBarScheduler, BetaScheduleConfig, Generators, clip_x0, x0_and_eps

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

    choices = {**SAMPLER_CHOICES, "variance_type": VARIANCE_TYPES}


class DDPMScheduler(AlphaBarScheduler):
    """Tables, set_timesteps and add_noise are AlphaBarScheduler's; DDPM adds its step."""

    config_class = DDPMConfig
    diffusers_name = "DDPMScheduler"

    def previous_timestep(self, t: int) -> int:
        """The next entry of the schedule (-1 after the last); t - 1 before set_timesteps."""
        if self.num_inference_steps is None:
            return t - 1
        index = int((self.timesteps.cpu() == t).nonzero()[0, 0])
        return int(self.timesteps[index + 1]) if index + 1 < len(self.timesteps) else -1

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, eta: float = 0.0,
             generator: Generators = None) -> torch.Tensor:
        """Posterior mean (eq. 7) plus fixed-variance noise for t > 0. `eta` is accepted for a uniform
        pipeline interface and ignored (DDPM is always fully stochastic)."""
        t = int(timestep)
        prev_t = self.previous_timestep(t)
        a_t = self.alphas_cumprod[t]
        a_prev = self._alpha_prod(prev_t)
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
