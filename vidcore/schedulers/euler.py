"""Euler (Karras et al., arXiv 2206.00364, Algorithm 2) on the variance-exploding sigma scale.

Stable Video Diffusion ships this scheduler (Karras sigmas from 700 down to 0.002, v-prediction,
"continuous" timesteps 0.25 * ln(sigma) fed to the UNet). The sample lives at x = x0 + sigma * eps, so
the model sees ``x / sqrt(sigma^2 + 1)`` (``scale_model_input``) and each step is one Euler step of
dx/dsigma = (x - x0) / sigma, optionally "churned" (sigma raised to sigma_hat with fresh noise first).

Matches diffusers' ``EulerDiscreteScheduler`` op for op: same float32/float64 mix in the tables, sigmas
kept on the CPU, the step index found from the first timestep (or ``set_begin_index``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..random import randn_tensor
from .common import (
    SAMPLER_CHOICES,
    BetaScheduleConfig,
    Generators,
    SigmaScheduler,
    find_timestep,
    karras_sigmas,
    sigma_to_t,
    spaced_timesteps,
)


@dataclass(frozen=True)
class EulerDiscreteConfig(BetaScheduleConfig):
    prediction_type: str = "epsilon"
    interpolation_type: str = "linear"
    use_karras_sigmas: bool = False
    sigma_min: float | None = None
    sigma_max: float | None = None
    timestep_spacing: str = "linspace"
    timestep_type: str = "discrete"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False
    final_sigmas_type: str = "zero"

    unsupported = {
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_flow_sigmas": False,
    }
    aliases = {"prediction_type": {"original_sample": "sample"}}

    choices = {
        **SAMPLER_CHOICES,
        "interpolation_type": ("linear", "log_linear"),
        "timestep_type": ("discrete", "continuous"),
        "final_sigmas_type": ("zero", "sigma_min"),
    }

    def __post_init__(self):
        if self.trained_betas is None and self.beta_schedule == "sigmoid":
            raise NotImplementedError("EulerDiscreteScheduler: beta_schedule='sigmoid' is not implemented "
                                      "(diffusers rejects it too); use linear, scaled_linear or squaredcos_cap_v2")
        super().__post_init__()


class EulerDiscreteScheduler(SigmaScheduler):
    config_class = EulerDiscreteConfig
    diffusers_name = "EulerDiscreteScheduler"

    def __init__(self, config: EulerDiscreteConfig | None = None, **options):
        super().__init__(config, **options)
        cfg = self.config
        sigmas = self._train_sigmas().flip(0)
        if self._continuous:
            self.timesteps = 0.25 * sigmas.log()
        else:
            self.timesteps = torch.from_numpy(
                np.linspace(0, cfg.num_train_timesteps - 1, cfg.num_train_timesteps, dtype=float)[::-1].copy()
            ).to(torch.float32)
        self.sigmas = torch.cat([sigmas, torch.zeros(1)])

    # ---------------------------------------------------------------------------------- tables

    @property
    def _continuous(self) -> bool:
        """EDM-style conditioning: the UNet gets 0.25 * ln(sigma) instead of a training timestep."""
        return self.config.timestep_type == "continuous" and self.config.prediction_type == "v_prediction"

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """Std of the starting noise: sigma_max, or sqrt(sigma_max^2 + 1) with "leading" spacing (a 0-d
        float32 tensor, as diffusers returns, so latents are scaled identically)."""
        max_sigma = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return max_sigma
        return (max_sigma**2 + 1) ** 0.5

    def _spaced_timesteps(self, n: int) -> np.ndarray:
        cfg = self.config
        if cfg.timestep_spacing == "linspace":  # unlike DDIM, not rounded to integers
            return np.linspace(0, cfg.num_train_timesteps - 1, n, dtype=np.float32)[::-1].copy()
        return spaced_timesteps(cfg, n).astype(np.float32)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        *,
        timesteps: list[float] | None = None,
        sigmas: list[float] | None = None,
    ) -> None:
        """Build the schedule from a step count, or from custom ``timesteps`` (no Karras, no continuous
        timesteps) or custom ``sigmas`` (n + 1 values including the final one, as SVD's ``sigmas=``).
        Resets the step and begin indices."""
        cfg = self.config
        if timesteps is not None and sigmas is not None:
            raise ValueError("pass only one of `timesteps` or `sigmas`")
        if num_inference_steps is None and timesteps is None and sigmas is None:
            raise ValueError("pass one of `num_inference_steps`, `timesteps` or `sigmas`")
        if num_inference_steps is not None and (timesteps is not None or sigmas is not None):
            raise ValueError("pass only one of `num_inference_steps`, `timesteps` or `sigmas`")
        if timesteps is not None and cfg.use_karras_sigmas:
            raise ValueError("custom `timesteps` cannot be used with use_karras_sigmas=True")
        if timesteps is not None and self._continuous:
            raise ValueError("custom `timesteps` cannot be used with timestep_type='continuous' and v_prediction")

        if num_inference_steps is None:
            num_inference_steps = len(timesteps) if timesteps is not None else len(sigmas) - 1
        self.num_inference_steps = num_inference_steps

        log_sigmas = np.log(self._train_sigmas().numpy())  # float32 table
        if sigmas is not None:
            sigmas = np.array(sigmas).astype(np.float32)
            timesteps = sigma_to_t(sigmas[:-1], log_sigmas)
        else:
            if timesteps is not None:
                timesteps = np.array(timesteps).astype(np.float32)
            else:
                timesteps = self._spaced_timesteps(num_inference_steps)
            train = self._train_sigmas().numpy()
            if cfg.interpolation_type == "linear":
                sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
            else:  # log_linear: n + 1 sigmas evenly spaced in log sigma (diffusers' quirk kept)
                sigmas = torch.linspace(np.log(train[-1]), np.log(train[0]), num_inference_steps + 1).exp().numpy()
            if cfg.use_karras_sigmas:
                lo = cfg.sigma_min if cfg.sigma_min is not None else sigmas[-1].item()
                hi = cfg.sigma_max if cfg.sigma_max is not None else sigmas[0].item()
                sigmas = karras_sigmas(lo, hi, num_inference_steps)
                timesteps = sigma_to_t(sigmas, log_sigmas)
            sigmas = np.concatenate([sigmas, [self._final_sigma()]]).astype(np.float32)

        sigmas = torch.from_numpy(sigmas).to(dtype=torch.float32, device=device)
        if self._continuous:
            self.timesteps = (0.25 * sigmas[:-1].log()).to(device=device)
        else:
            self.timesteps = torch.from_numpy(np.asarray(timesteps).astype(np.float32)).to(device=device)
        self._step_index = None
        self._begin_index = None
        self.sigmas = sigmas.to("cpu")  # stepped on the CPU, as diffusers does

    # ---------------------------------------------------------------------------------- indices

    def index_for_timestep(self, timestep, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Position of `timestep` in the schedule (see find_timestep)."""
        index = find_timestep(self.timesteps if schedule_timesteps is None else schedule_timesteps, timestep)
        if index is None:
            raise ValueError(f"timestep {float(timestep)} is not in the schedule; pass one of `scheduler.timesteps`")
        return index

    def _begin_step(self, timestep, sample: torch.Tensor) -> tuple[int, torch.Tensor]:
        """Shared start of Euler's and Euler-ancestral's step: reject an enumerate() index for `timestep`,
        find the step index on the first call, and return it with the sample in float32 (as diffusers steps)."""
        if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise ValueError(
                f"{type(self).__name__}.step() takes one of `scheduler.timesteps` (a float), not an integer "
                "index such as one from enumerate(timesteps)"
            )
        if self._step_index is None:
            self._init_step_index(timestep)
        return self._step_index, sample.to(torch.float32)

    # ---------------------------------------------------------------------------------- sampling

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """x / sqrt(sigma^2 + 1): the variance-preserving input the network was trained on."""
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self._step_index]
        return sample / ((sigma**2 + 1) ** 0.5)

    def _to_x0(self, model_output: torch.Tensor, sample: torch.Tensor, sigma, sigma_hat) -> torch.Tensor:
        """x0 from the network output at sigma (raised to sigma_hat by churn; equal without it)."""
        prediction = self.config.prediction_type
        if prediction == "sample":
            return model_output
        if prediction == "epsilon":
            return sample - sigma_hat * model_output
        # v_prediction: x0 = c_skip x + c_out v with c_skip = 1/(sigma^2+1), c_out = -sigma/sqrt(sigma^2+1)
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor, eta: float = 0.0,
             generator: Generators = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
             s_noise: float = 1.0) -> torch.Tensor:
        """One Euler step sigma_i -> sigma_{i+1}. With s_churn > 0 and s_tmin <= sigma <= s_tmax, sigma is
        first raised to sigma_hat = sigma (1 + gamma) by adding s_noise * N(0, I) from `generator`.
        `eta` is accepted for a uniform pipeline interface and ignored."""
        i, sample = self._begin_step(timestep, sample)
        sigma = self.sigmas[i]

        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            sample = sample + noise * s_noise * (sigma_hat**2 - sigma**2) ** 0.5

        x0 = self._to_x0(model_output, sample, sigma, sigma_hat)
        derivative = (sample - x0) / sigma_hat
        dt = self.sigmas[i + 1] - sigma_hat
        prev = sample + derivative * dt
        self._step_index += 1
        return prev.to(model_output.dtype)

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x0 + sigma * noise at the schedule's sigma. After ``set_begin_index`` (img2img / video2video)
        the current (or begin) step's sigma is used, as diffusers does; otherwise each timestep is looked up."""
        return original + noise * self._noise_sigmas(original, timesteps)
