"""Trajectory Consistency Distillation sampling (Zheng et al., arXiv 2402.19159): LCM's few-step grid with a
"strategic stochastic" step whose randomness is set by ``gamma`` (the ``eta`` argument of ``step``,
0.3 by default as in diffusers; a pipeline passes its own ``eta``).

One step from t to the next scheduled timestep t' first moves the model's (x0, eps) estimate to the
intermediate timestep ``s = floor((1 - gamma) * t')``:

    x_s = sqrt(a_s) * x0 + sqrt(1 - a_s) * eps

and, for gamma > 0 and all but the last step, forward-diffuses it back up to t' with fresh noise:
``sqrt(a_t' / a_s) * x_s + sqrt(1 - a_t' / a_s) * z``. gamma = 0 is deterministic (DDIM-like), gamma = 1
lands on the clean estimate and re-noises it (LCM-like). Matches diffusers' ``TCDScheduler`` draw for draw.

The grid is LCM's (:class:`~vidcore.schedulers.lcm.ConsistencyScheduler`), except that an explicit
``original_inference_steps`` argument to ``set_timesteps`` makes every training timestep below
``num_train_timesteps * strength`` a candidate. As in diffusers, TCD's config has LCM's keys; its step
neither clips nor thresholds x0 (``clip_sample`` / ``thresholding`` are stored, not applied) and
``timestep_spacing`` / ``steps_offset`` / ``timestep_scaling`` do not change the sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..random import randn_tensor
from .common import Generators, x0_and_eps
from .lcm import ConsistencyScheduler, LCMConfig


@dataclass(frozen=True)
class TCDConfig(LCMConfig):
    """diffusers' TCDScheduler keys and defaults (the same as LCMScheduler's)."""


class TCDScheduler(ConsistencyScheduler):
    config_class = TCDConfig
    diffusers_name = "TCDScheduler"

    def _origin_grid(self, original_inference_steps: int | None, strength: float) -> np.ndarray:
        if original_inference_steps is None:
            return super()._origin_grid(None, strength)
        return np.arange(0, int(self.config.num_train_timesteps * strength))

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, eta: float = 0.3,
             generator: Generators = None) -> torch.Tensor:
        """x_t -> x_{t'} by the TCD step with gamma = ``eta`` in [0, 1]; the intermediate x_s is kept as
        ``self.pred_noised_sample``."""
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"TCDScheduler: eta (gamma) must be between 0 and 1, got {eta}")
        i, next_t = self._start_step(timestep)
        next_t = 0 if next_t is None else next_t
        # computed as diffusers does, on a float32 tensor, so the floor lands on the same integer
        s = int(torch.floor((1 - eta) * torch.tensor(next_t)).long())
        a_t = self.alphas_cumprod[int(timestep)]
        a_next = self._alpha_prod(next_t)
        a_s = self.alphas_cumprod[s]

        x0, eps = x0_and_eps(self.config.prediction_type, model_output, sample, a_t)
        x_s = a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps
        self.pred_noised_sample = x_s

        if eta > 0 and i != self.num_inference_steps - 1:
            noise = randn_tensor(model_output.shape, generator, model_output.device, x_s.dtype)
            prev = (a_next / a_s).sqrt() * x_s + (1 - a_next / a_s).sqrt() * noise
        else:
            prev = x_s
        self._step_index += 1
        return prev
