"""Latent Consistency Model sampling (Luo et al., arXiv 2310.04378): few-step (1-8) sampling of a
consistency-distilled model, e.g. AnimateDiff with the AnimateLCM motion adapter and its LCM LoRA.

Timesteps are picked from the distillation grid ``k - 1, 2k - 1, ..., N k - 1`` (``N =
original_inference_steps``, ``k = T // N``): the grid is walked from its noisy end and ``n`` evenly spaced
entries are kept. Each step maps x_t to the consistency estimate

    denoised = c_out(t) * x0(t) + c_skip(t) * x_t,   c_skip = s^2 / (u^2 + s^2),  c_out = u / sqrt(u^2 + s^2)

(``u = t * timestep_scaling``, ``s = 0.5``), then, except on the last step, re-noises it to the next
timestep with fresh Gaussian noise: ``sqrt(a_next) * denoised + sqrt(1 - a_next) * z``. Matches diffusers'
``LCMScheduler`` draw for draw (one ``randn`` of the model output's shape per step but the last).

``timestep_spacing`` and ``steps_offset`` are read and written back (hub configs carry them) but, as in
diffusers, they do not change the LCM grid.

:class:`ConsistencyScheduler` (the grid, custom timesteps, ``strength`` and the step index) is shared with
TCD (:mod:`vidcore.schedulers.tcd`).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..random import randn_tensor
from .common import (
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    AlphaBarScheduler,
    BetaScheduleConfig,
    Generators,
    check_choice,
    clip_x0,
    find_timestep,
    x0_and_eps,
)

logger = logging.getLogger(__name__)

SIGMA_DATA = 0.5  # the data std the consistency boundary condition assumes


@dataclass(frozen=True)
class LCMConfig(BetaScheduleConfig):
    """diffusers' LCMScheduler keys and defaults (latent-diffusion betas, 50-step distillation grid)."""

    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    original_inference_steps: int = 50
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    timestep_spacing: str = "leading"
    timestep_scaling: float = 10.0
    rescale_betas_zero_snr: bool = False

    choices: ClassVar[dict[str, tuple]] = {"prediction_type": PREDICTION_TYPES, "timestep_spacing": TIMESTEP_SPACINGS}

    def __post_init__(self):
        # diffusers builds no sigmoid betas for the consistency samplers; trained_betas bypasses the schedule
        if self.trained_betas is None:
            check_choice("beta_schedule", self.beta_schedule, ("linear", "scaled_linear", "squaredcos_cap_v2"))
        if self.original_inference_steps < 1:
            raise ValueError(f"original_inference_steps must be at least 1, got {self.original_inference_steps}")
        super().__post_init__()


class ConsistencyScheduler(AlphaBarScheduler):
    """Timestep selection and step bookkeeping common to LCM and TCD."""

    def __init__(self, config: LCMConfig | None = None, **options):
        super().__init__(config, **options)
        self.custom_timesteps = False
        self._step_index: int | None = None

    @property
    def step_index(self) -> int | None:
        return self._step_index

    # ---------------------------------------------------------------------------------- tables
    def _origin_grid(self, original_inference_steps: int | None, strength: float) -> np.ndarray:
        """Ascending timesteps the model was distilled on (scaled down by ``strength``)."""
        n = self.config.original_inference_steps if original_inference_steps is None else original_inference_steps
        T = self.config.num_train_timesteps
        if n > T:
            raise ValueError(f"original_inference_steps={n} cannot exceed num_train_timesteps={T}")
        k = T // n
        return np.arange(1, int(n * strength) + 1) * k - 1

    def _check_custom(self, timesteps: list[int], grid: np.ndarray, strength: float, limit: int) -> None:
        T = self.config.num_train_timesteps
        if any(b >= a for a, b in itertools.pairwise(timesteps)):
            raise ValueError(f"timesteps must be strictly descending, got {list(timesteps)}")
        if timesteps[0] >= T:
            raise ValueError(f"timesteps must be below num_train_timesteps={T}, got a first timestep {timesteps[0]}")
        on_grid = set(grid.tolist())
        off = [t for t in timesteps[1:] if t not in on_grid]
        if strength == 1.0 and timesteps[0] != T - 1:
            logger.warning("custom timesteps start at %s, not at num_train_timesteps - 1 = %s; results may be poor",
                           timesteps[0], T - 1)
        if off:
            logger.warning("custom timesteps %s are not on the distillation grid; results may be poor", off)
        if len(timesteps) > limit:
            logger.warning("%d custom timesteps exceed the %d-step distillation grid; results may be poor",
                           len(timesteps), limit)

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      original_inference_steps: int | None = None, timesteps: list[int] | None = None,
                      strength: float = 1.0) -> None:
        """``num_inference_steps`` evenly spaced entries of the distillation grid, or explicit descending
        ``timesteps`` (exactly one of the two). ``strength`` < 1 (video-to-video) shortens the grid, or drops
        the first custom timesteps. Resets the step and begin indices."""
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps")
        grid = self._origin_grid(original_inference_steps, strength)
        limit = self.config.original_inference_steps if original_inference_steps is None else original_inference_steps
        if timesteps is not None:
            timesteps = [int(t) for t in timesteps]
            self._check_custom(timesteps, grid, strength, limit)
            table = np.array(timesteps, dtype=np.int64)
            self.num_inference_steps = len(table)
            self.custom_timesteps = True
            keep = min(int(len(table) * strength), len(table))
            table = table[max(len(table) - keep, 0) * self.order:]
        else:
            T = self.config.num_train_timesteps
            if num_inference_steps > T:
                raise ValueError(f"num_inference_steps={num_inference_steps} cannot exceed num_train_timesteps={T}")
            if len(grid) // num_inference_steps < 1:
                raise ValueError(f"num_inference_steps={num_inference_steps} is more than the {len(grid)} timesteps "
                                 f"of the distillation grid (original_inference_steps={limit} x strength={strength});"
                                 " use fewer steps or a larger strength / original_inference_steps")
            if num_inference_steps > limit:
                raise ValueError(f"num_inference_steps={num_inference_steps} cannot exceed "
                                 f"original_inference_steps={limit}")
            self.num_inference_steps = num_inference_steps
            descending = grid[::-1].copy()
            picks = np.floor(np.linspace(0, len(descending), num=num_inference_steps, endpoint=False)).astype(np.int64)
            table = descending[picks]
        self.timesteps = torch.from_numpy(table).to(device=device, dtype=torch.long)
        self._step_index = None
        self._begin_index = None

    # ---------------------------------------------------------------------------------- steps
    def index_for_timestep(self, timestep, schedule_timesteps: torch.Tensor | None = None) -> int:
        index = find_timestep(self.timesteps if schedule_timesteps is None else schedule_timesteps, timestep)
        if index is None:
            raise ValueError(f"timestep {int(timestep)} is not in the schedule; pass one of `scheduler.timesteps`")
        return index

    def _start_step(self, timestep) -> tuple[int, int | None]:
        """(step index, next scheduled timestep or None on the last entry); finds the index on the first call."""
        self._require_timesteps()
        if self._step_index is None:
            if self._begin_index is not None:
                self._step_index = self._begin_index
            else:
                t = timestep.to(self.timesteps.device) if isinstance(timestep, torch.Tensor) else timestep
                self._step_index = self.index_for_timestep(t)
        i = self._step_index
        return i, (int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else None)


class LCMScheduler(ConsistencyScheduler):
    config_class = LCMConfig
    diffusers_name = "LCMScheduler"

    def boundary_scalings(self, timestep) -> tuple:
        """(c_skip, c_out) of the consistency boundary condition at ``timestep`` (a 0-dim tensor gives
        float32 tensors, a python number python floats, as in diffusers)."""
        u = timestep * self.config.timestep_scaling
        c_skip = SIGMA_DATA**2 / (u**2 + SIGMA_DATA**2)
        c_out = u / (u**2 + SIGMA_DATA**2) ** 0.5
        return c_skip, c_out

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, eta: float = 0.0,
             generator: Generators = None) -> torch.Tensor:
        """x_t -> the consistency estimate re-noised to the next timestep (the estimate itself on the last
        step). The estimate is also kept as ``self.denoised``. ``eta`` is accepted for a uniform pipeline
        interface and ignored (LCM's noise is fixed by the schedule)."""
        i, next_t = self._start_step(timestep)
        a_t = self.alphas_cumprod[int(timestep)]
        # on the last step diffusers looks up the current timestep again; the value is unused there
        a_next = self._alpha_prod(next_t if next_t is not None else int(timestep))

        x0, _ = x0_and_eps(self.config.prediction_type, model_output, sample, a_t)
        x0 = clip_x0(x0, self.config)
        c_skip, c_out = self.boundary_scalings(timestep)
        denoised = c_out * x0 + c_skip * sample
        self.denoised = denoised

        if i != self.num_inference_steps - 1:
            noise = randn_tensor(model_output.shape, generator, model_output.device, denoised.dtype)
            prev = a_next.sqrt() * denoised + (1 - a_next).sqrt() * noise
        else:
            prev = denoised
        self._step_index += 1
        return prev
