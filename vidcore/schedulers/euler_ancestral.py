"""Euler ancestral (k-diffusion's ``sample_euler_ancestral``): an Euler step down to sigma_down, then fresh
noise of std sigma_up, where sigma_down^2 + sigma_up^2 = sigma_next^2 (the DDPM posterior split, eta = 1).

timbrooks/instruct-pix2pix ships this scheduler. The tables (sigmas, timesteps, init_noise_sigma,
scale_model_input, add_noise) are Euler's with linear interpolation and no Karras sigmas, so this class
reuses :class:`EulerDiscreteScheduler` and only replaces the step. Matches diffusers'
``EulerAncestralDiscreteScheduler``: one ``randn`` of the model output's shape per step from the given
generator, also on the last step where sigma_up is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..random import randn_tensor
from .common import Generators, LegacyBetaScheduleConfig
from .euler import EulerDiscreteScheduler


@dataclass(frozen=True)
class EulerAncestralDiscreteConfig(LegacyBetaScheduleConfig):
    prediction_type: str = "epsilon"
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False

    # Euler options this sampler does not have, at the values its tables use (not fields: never written out)
    interpolation_type = "linear"
    use_karras_sigmas = False
    sigma_min = None
    sigma_max = None
    timestep_type = "discrete"
    final_sigmas_type = "zero"


class EulerAncestralDiscreteScheduler(EulerDiscreteScheduler):
    config_class = EulerAncestralDiscreteConfig
    diffusers_name = "EulerAncestralDiscreteScheduler"

    def __init__(self, config: EulerAncestralDiscreteConfig | None = None, **options):
        super().__init__(config, **options)
        self.timesteps = self.timesteps.double()  # before set_timesteps diffusers keeps these in float64

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Spaced timesteps (float32) and their sigmas plus a final 0; resets the step and begin indices."""
        super().set_timesteps(num_inference_steps, device)

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor, eta: float = 0.0,
             generator: Generators = None) -> torch.Tensor:
        """sigma_i -> sigma_{i+1}: Euler to sigma_down, plus sigma_up * N(0, I) drawn from `generator`.
        `eta` is accepted for a uniform pipeline interface and ignored (this sampler is eta = 1)."""
        i, sample = self._begin_step(timestep, sample)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        x0 = self._to_x0(model_output, sample, sigma, sigma)  # no churn: sigma_hat = sigma

        sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        prev = sample + (sample - x0) / sigma * (sigma_down - sigma)
        noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
        prev = prev + noise * sigma_up
        self._step_index += 1
        return prev.to(model_output.dtype)
