"""DPM-Solver++ multistep (arXiv 2211.01095), the data-prediction solver Zeroscope users pick.

The sampler works on the sigma table sigma = sqrt((1 - a) / a) and log-SNR lambda = log(alpha / sigma).
Each step converts the network output to x0, keeps the last `solver_order` x0's, and takes a
1st/2nd/3rd-order exponential-integrator step. Multistep history and the step counter live in the
object and are reset by ``set_timesteps``. Matches diffusers' ``DPMSolverMultistepScheduler`` for
algorithm_type dpmsolver++ / sde-dpmsolver++.
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
    dynamic_threshold,
    find_timestep,
    karras_sigmas,
    sigma_to_t,
)


@dataclass(frozen=True)
class DPMSolverMultistepConfig(BetaScheduleConfig):
    solver_order: int = 2
    prediction_type: str = "epsilon"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    algorithm_type: str = "dpmsolver++"
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    use_karras_sigmas: bool = False
    final_sigmas_type: str = "zero"
    lambda_min_clipped: float = -math.inf
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False

    unsupported = {
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_lu_lambdas": False,
        "use_flow_sigmas": False,
        "variance_type": None,
    }
    # diffusers maps DEIS / UniPC names onto DPM-Solver++ when a config is moved between classes
    aliases = {
        "algorithm_type": {"deis": "dpmsolver++"},
        "solver_type": {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"},
    }

    choices = {
        **SAMPLER_CHOICES,
        "algorithm_type": ("dpmsolver++", "sde-dpmsolver++"),
        "solver_type": ("midpoint", "heun"),
        "solver_order": (1, 2, 3),
        "final_sigmas_type": ("zero", "sigma_min"),
    }


def _alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VP coefficients of x_t = alpha x0 + sigma_vp eps from the VE-style sigma = sigma_vp / alpha."""
    alpha = 1 / ((sigma**2 + 1) ** 0.5)
    return alpha, sigma * alpha


class DPMSolverMultistepScheduler(SigmaScheduler):
    config_class = DPMSolverMultistepConfig
    diffusers_name = "DPMSolverMultistepScheduler"

    def __init__(self, config: DPMSolverMultistepConfig | None = None, **options):
        super().__init__(config, **options)
        self.sigmas = self._train_sigmas()
        self._reset_state()

    def _reset_state(self) -> None:
        self.model_outputs: list[torch.Tensor | None] = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None

    def _spaced_timesteps(self, n: int) -> np.ndarray:
        """DPM-Solver's spacing: n+1 points with the t=0 end dropped, up to the lambda clip."""
        cfg, T = self.config, self.config.num_train_timesteps
        log_snr = torch.log(self.alphas_cumprod.sqrt()) - torch.log((1 - self.alphas_cumprod).sqrt())
        last = T - int(torch.searchsorted(torch.flip(log_snr, [0]), cfg.lambda_min_clipped))
        if cfg.timestep_spacing == "linspace":
            return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        if cfg.timestep_spacing == "leading":
            ratio = last // (n + 1)
            steps = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
            return steps + cfg.steps_offset
        ratio = T / n  # trailing
        return np.arange(last, 0, -ratio).round().copy().astype(np.int64) - 1

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Build timesteps and the matching sigma table (one extra final sigma), clear the history."""
        cfg = self.config
        timesteps = self._spaced_timesteps(num_inference_steps)
        train_sigmas = self._train_sigmas().numpy()
        if cfg.use_karras_sigmas:
            sigmas = karras_sigmas(float(train_sigmas[0]), float(train_sigmas[-1]), num_inference_steps)
            timesteps = sigma_to_t(sigmas, np.log(train_sigmas))
            if cfg.beta_schedule != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        else:
            sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [self._final_sigma()]]).astype(np.float32))
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self._reset_state()

    def index_for_timestep(self, timestep, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Position of `timestep` in the schedule (see find_timestep); unknown -> the last step."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.to(schedule.device)
        index = find_timestep(schedule, timestep)
        return len(self.timesteps) - 1 if index is None else index

    def _to_x0(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.prediction_type == "sample":
            x0 = model_output
        else:
            alpha, sigma = _alpha_sigma(self.sigmas[self._step_index])
            if cfg.prediction_type == "epsilon":
                x0 = (sample - sigma * model_output) / alpha
            else:  # v_prediction
                x0 = alpha * sample - sigma * model_output
        if cfg.thresholding:
            x0 = dynamic_threshold(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        return x0

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, eta: float = 0.0,
             generator: Generators = None) -> torch.Tensor:
        """One multistep update. `eta` is accepted for a uniform pipeline interface and ignored (diffusers'
        pipelines never pass it to this scheduler); `generator` feeds the sde-dpmsolver++ noise."""
        self._require_timesteps()
        cfg = self.config
        if self._step_index is None:
            self._init_step_index(timestep)
        i, n = self._step_index, len(self.timesteps)
        short = cfg.lower_order_final and n < 15  # few steps: drop order near the end for stability
        final_first_order = i == n - 1 and (cfg.euler_at_final or short or cfg.final_sigmas_type == "zero")
        final_second_order = i == n - 2 and short

        x0 = self._to_x0(model_output, sample)
        self.model_outputs = self.model_outputs[1:] + [x0]

        sample = sample.to(torch.float32)
        noise = None
        if cfg.algorithm_type == "sde-dpmsolver++":
            noise = randn_tensor(model_output.shape, generator, model_output.device, torch.float32)

        if cfg.solver_order == 1 or self.lower_order_nums < 1 or final_first_order:
            order = 1
        elif cfg.solver_order == 2 or self.lower_order_nums < 2 or final_second_order:
            order = 2
        else:
            order = 3
        prev = self._update(order, sample, noise)

        self.lower_order_nums = min(self.lower_order_nums + 1, cfg.solver_order)
        self._step_index += 1
        return prev.to(model_output.dtype)

    def _update(self, order: int, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """Exponential-integrator step from sigma[i] to sigma[i+1] using the last `order` x0's.

        With h = lambda_t - lambda_s, the ODE step is x_t = (sigma_t/sigma_s) x - alpha_t (e^-h - 1) D0
        plus higher-order corrections D1, D2 built from divided differences of past x0's; the SDE
        variant replaces e^-h by e^-2h terms and injects sigma_t sqrt(1 - e^-2h) noise.
        """
        i = self._step_index
        alpha_t, sigma_t = _alpha_sigma(self.sigmas[i + 1])
        alphas, sigmas = zip(*(_alpha_sigma(self.sigmas[i - k]) for k in range(order)))  # s0, s1, s2
        lam_t = torch.log(alpha_t) - torch.log(sigma_t)
        lams = [torch.log(a) - torch.log(s) for a, s in zip(alphas, sigmas)]
        h = lam_t - lams[0]
        m = self.model_outputs
        D0 = m[-1]
        sde = self.config.algorithm_type == "sde-dpmsolver++"
        heun = self.config.solver_type == "heun"

        if order == 1:
            D1 = D2 = None
        elif order == 2:
            r0 = (lams[0] - lams[1]) / h
            D1 = (1.0 / r0) * (m[-1] - m[-2])
            D2 = None
        else:
            r0, r1 = (lams[0] - lams[1]) / h, (lams[1] - lams[2]) / h
            D1_0, D1_1 = (1.0 / r0) * (m[-1] - m[-2]), (1.0 / r1) * (m[-2] - m[-3])
            D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
            D2 = (1.0 / (r0 + r1)) * (D1_0 - D1_1)
            heun = True  # the third-order formula has a single form

        if not sde:
            phi1 = torch.exp(-h) - 1.0
            x_t = (sigma_t / sigmas[0]) * x - (alpha_t * phi1) * D0
            if D1 is not None:
                x_t = x_t + (alpha_t * (phi1 / h + 1.0)) * D1 if heun else x_t - 0.5 * (alpha_t * phi1) * D1
            if D2 is not None:
                x_t = x_t - (alpha_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5)) * D2
            return x_t

        psi = 1 - torch.exp(-2.0 * h)
        x_t = (sigma_t / sigmas[0] * torch.exp(-h)) * x + (alpha_t * psi) * D0
        if D1 is not None:
            x_t = x_t + (alpha_t * (psi / (-2.0 * h) + 1.0)) * D1 if heun else x_t + 0.5 * (alpha_t * psi) * D1
        if D2 is not None:
            x_t = x_t + (alpha_t * ((psi - 2.0 * h) / (2.0 * h) ** 2 - 0.5)) * D2
        return x_t + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward noising at the schedule's sigma. After ``set_begin_index`` (img2img / video2video)
        the begin step's sigma is used, as diffusers does; otherwise each timestep is looked up."""
        alpha, sigma = _alpha_sigma(self._noise_sigmas(original, timesteps))
        return alpha * original + sigma * noise
