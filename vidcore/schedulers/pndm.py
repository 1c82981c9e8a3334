"""PNDM / PLMS (Liu et al., arXiv 2202.09778): pseudo linear multistep sampling on the DDIM transfer.

Stable Diffusion 1.x repos (runwayml/stable-diffusion-v1-5 and its fine-tunes) ship this scheduler with
``skip_prk_steps=True``: the linear multistep (Adams-Bashforth) method from the first step, warmed up by one
trapezoid (Heun) step, which is why the second timestep appears twice in ``timesteps`` (n + 1 model calls).
With ``skip_prk_steps=False`` the first three intervals are pseudo Runge-Kutta (RK4, four calls each).

Every step moves x along the "transfer" of eq. (9): the DDIM update given an epsilon estimate. The
estimate is the newest network output, or a combination of the last ones. The scheduler therefore keeps
the recent outputs (like DPM-Solver); ``set_timesteps`` clears them. Matches diffusers' ``PNDMScheduler``
op for op, including its quirk that the step after t is always t - T // n, whatever the spacing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .common import AlphaBarScheduler, Generators, LegacyBetaScheduleConfig, spaced_timesteps


@dataclass(frozen=True)
class PNDMConfig(LegacyBetaScheduleConfig):
    skip_prk_steps: bool = False
    set_alpha_to_one: bool = False
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0

    rescale_betas_zero_snr = False  # not an option of this sampler (read by make_betas)


class PNDMScheduler(AlphaBarScheduler):
    config_class = PNDMConfig
    diffusers_name = "PNDMScheduler"

    def __init__(self, config: PNDMConfig | None = None, **options):
        super().__init__(config, **options)
        self.num_rk_calls = 0
        self._clear_history()

    def _clear_history(self) -> None:
        self.counter = 0  # model calls consumed since set_timesteps
        self.ets: list[torch.Tensor] = []  # epsilon estimates at the last grid points, newest last
        self._x_from: torch.Tensor | None = None  # sample where the current multi-call step started
        self._rk_sum = 0  # running RK4 weighted sum of epsilons

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """The model-call timesteps: with ``skip_prk_steps`` the grid with its second point repeated; otherwise
        12 RK4 calls over the first three intervals (at t, the midpoint twice, the end), then the grid."""
        cfg = self.config
        n, T = num_inference_steps, cfg.num_train_timesteps
        grid = spaced_timesteps(cfg, n)  # descending
        if cfg.skip_prk_steps:
            calls = np.concatenate([grid[:1], grid[1:2], grid[1:]])
            self.num_rk_calls = 0
        else:
            if n < 4:
                raise ValueError(f"PNDMScheduler with skip_prk_steps=False needs num_inference_steps >= 4, got {n}")
            half = T // n // 2
            rk = [[grid[k], grid[k + 1] + half, grid[k + 1] + half, grid[k + 1]] for k in range(3)]
            calls = np.concatenate([np.array(rk).reshape(-1), grid[3:]])
            self.num_rk_calls = 12
        self.num_inference_steps = n
        self.timesteps = torch.from_numpy(calls.astype(np.int64)).to(device)
        self._begin_index = None
        self._clear_history()

    # ---------------------------------------------------------------------------------- the transfer

    def _transfer(self, x: torch.Tensor, t: int, t_next: int, model_output: torch.Tensor) -> torch.Tensor:
        """Eq. (9): x_t -> x_{t_next} given the network output (epsilon, or v converted to epsilon)."""
        a_t = self.alphas_cumprod[t]
        a_next = self._alpha_prod(t_next)
        eps = model_output
        if self.config.prediction_type == "v_prediction":
            eps = a_t**0.5 * model_output + (1 - a_t) ** 0.5 * x
        denom = a_t * (1 - a_next) ** 0.5 + (a_t * (1 - a_t) * a_next) ** 0.5
        return (a_next / a_t) ** 0.5 * x - (a_next - a_t) * eps / denom

    # ---------------------------------------------------------------------------------- sampling

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, eta: float = 0.0,
             generator: Generators = None) -> torch.Tensor:
        """Consume the model output at ``timestep`` (one of ``timesteps``, in order) and return the next sample.
        ``eta`` and ``generator`` are accepted for a uniform pipeline interface and ignored (PNDM is deterministic)."""
        self._require_timesteps()
        if self.counter < self.num_rk_calls:
            out = self._rk_step(model_output, int(timestep), sample)
        else:
            out = self._lms_step(model_output, int(timestep), sample)
        self.counter += 1
        return out

    def _rk_step(self, e: torch.Tensor, t: int, sample: torch.Tensor) -> torch.Tensor:
        """Call 4k + j of the RK4 warm-up: each call steps from the interval's start with the newest estimate;
        the fourth uses the RK4 average (e0 + 2 e1 + 2 e2 + e3) / 6."""
        phase = self.counter % 4
        half = self.config.num_train_timesteps // self.num_inference_steps // 2
        t_next = t - (half if phase % 2 == 0 else 0)
        t_from = int(self.timesteps[self.counter - phase])
        if phase == 0:
            self._rk_sum = self._rk_sum + 1 / 6 * e
            self.ets.append(e)
            self._x_from = sample
        elif phase in (1, 2):
            self._rk_sum = self._rk_sum + 1 / 3 * e
        else:
            e = self._rk_sum + 1 / 6 * e
            self._rk_sum = 0
        return self._transfer(self._x_from, t_from, t_next, e)

    def _lms_step(self, e: torch.Tensor, t: int, sample: torch.Tensor) -> torch.Tensor:
        """Adams-Bashforth of order len(history) (up to 4) from t to t - T // n. Without the RK warm-up, the
        second call re-runs the first step with the trapezoid average of its two ends' estimates."""
        if self.num_rk_calls and len(self.ets) < 3:
            raise ValueError("PNDMScheduler: the RK warm-up (12 calls) must run before the multistep phase")
        ratio = self.config.num_train_timesteps // self.num_inference_steps
        t_next = t - ratio
        if self.counter == 1 and not self.num_rk_calls:  # trapezoid correction of the first step
            t, t_next = t + ratio, t
            eps = (e + self.ets[-1]) / 2
            sample, self._x_from = self._x_from, None
            return self._transfer(sample, t, t_next, eps)
        self.ets = self.ets[-3:] + [e]
        h = self.ets
        if len(h) == 1:
            eps = e
            self._x_from = sample
        elif len(h) == 2:
            eps = (3 * h[-1] - h[-2]) / 2
        elif len(h) == 3:
            eps = (23 * h[-1] - 16 * h[-2] + 5 * h[-3]) / 12
        else:
            eps = (1 / 24) * (55 * h[-1] - 59 * h[-2] + 37 * h[-3] - 9 * h[-4])
        return self._transfer(sample, t, t_next, eps)
