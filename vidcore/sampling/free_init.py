"""FreeInit: re-initialise the noise from the low frequencies of a first sample (Wu et al., "FreeInit: Bridging
Initialization Gap in Video Diffusion Models", ECCV 2024, arXiv:2312.07537).

Why: video models are trained on noised real videos, whose low spatio-temporal frequencies are never fully
destroyed by the forward process, but sampling starts from white noise. FreeInit samples once, diffuses the
result back to the start of the schedule with the *same* initial noise, keeps that latent's low frequencies
(3D FFT over frames, height and width) and takes its high frequencies from fresh noise, then samples again;
``num_iters`` rounds in all, so the cost is ``num_iters`` times one video (``use_fast_sampling``: round ``k`` of
``n`` runs ``k/n`` of the steps, "coarse-to-fine").

The filter and the re-noising follow diffusers' ``FreeInitMixin`` (same argument names, same random draws), so
AnimateDiff with FreeInit equals diffusers seed for seed. Two choices where diffusers has no counterpart:
sigma samplers (Euler, DPM-Solver, SVD's EDM) re-noise as ``x0 + sigma_0 * noise`` at the schedule's first sigma
and draw the fresh noise at that scale (diffusers looks timestep T-1 up in the schedule, which only some
schedules hold); and video-to-video re-noises to its strength-trimmed first timestep, where its rounds start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..random import randn_tensor

FILTER_METHODS = ("butterworth", "gaussian", "ideal")


@dataclass(frozen=True)
class FreeInitConfig:
    """``enable_free_init``'s settings (diffusers' names and defaults)."""

    num_iters: int = 3
    use_fast_sampling: bool = False
    method: str = "butterworth"
    order: int = 4
    spatial_stop_frequency: float = 0.25
    temporal_stop_frequency: float = 0.25

    def __post_init__(self):
        if not isinstance(self.num_iters, int) or isinstance(self.num_iters, bool) or self.num_iters < 1:
            raise ValueError(f"num_iters must be an integer >= 1, got {self.num_iters!r}")
        if self.method not in FILTER_METHODS:
            raise ValueError(f"method must be one of {FILTER_METHODS}, got {self.method!r}")
        if not self.order > 0:
            raise ValueError(f"order must be positive, got {self.order!r}")
        for name in ("spatial_stop_frequency", "temporal_stop_frequency"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")

    def steps(self, num_inference_steps: int, round_index: int) -> int:
        """Steps of round ``round_index`` (0-based): all, or ``(k+1)/n`` of them with fast sampling."""
        if not self.use_fast_sampling:
            return num_inference_steps
        return max(1, int(num_inference_steps / self.num_iters * (round_index + 1)))


def low_pass_filter(frames: int, height: int, width: int, method: str = "butterworth", order: float = 4,
                    spatial_stop_frequency: float = 0.25, temporal_stop_frequency: float = 0.25,
                    device=None) -> torch.Tensor:
    """``f h w`` float32 weights in [0, 1] over fftshift-ed frequencies (the centre is frequency 0).

    ``d2`` is the squared normalised distance from the centre, the temporal axis stretched by
    ``d_s / d_t``: butterworth ``1 / (1 + (d2 / d_s^2)^order)``, gaussian ``exp(-d2 / (2 d_s^2))``, ideal
    ``d2 <= 2 d_s`` (the original FreeInit code's cut-off, kept for parity). A zero stop frequency passes nothing.
    """
    if method not in FILTER_METHODS:
        raise ValueError(f"method must be one of {FILTER_METHODS}, got {method!r}")
    d_s, d_t = float(spatial_stop_frequency), float(temporal_stop_frequency)
    if d_s == 0 or d_t == 0:
        return torch.zeros(frames, height, width, device=device)

    def axis(n: int) -> torch.Tensor:  # 2 i / n - 1 for i in 0..n-1, in float64 as the reference computes
        return 2 * torch.arange(n, dtype=torch.float64) / n - 1

    t = (d_s / d_t * axis(frames))[:, None, None]
    d2 = t**2 + axis(height)[None, :, None] ** 2 + axis(width)[None, None, :] ** 2  # f h w
    if method == "butterworth":
        mask = 1 / (1 + (d2 / d_s**2) ** order)
    elif method == "gaussian":
        mask = torch.exp(-d2 / (2 * d_s**2))
    else:
        mask = (d2 <= d_s * 2).double()
    return mask.float().to(device)


def mix_frequencies(x: torch.Tensor, noise: torch.Tensor, low_pass: torch.Tensor) -> torch.Tensor:
    """Low frequencies of ``x`` plus high frequencies of ``noise``; FFT over the last three dims (``f h w``)."""
    dims = (-3, -2, -1)

    def spectrum(v):
        return torch.fft.fftshift(torch.fft.fftn(v, dim=dims), dim=dims)

    mixed = spectrum(x) * low_pass + spectrum(noise) * (1 - low_pass)
    return torch.fft.ifftn(torch.fft.ifftshift(mixed, dim=dims), dim=dims).real


def renoise(scheduler, x0: torch.Tensor, initial_noise: torch.Tensor, timestep: int | None = None) -> tuple:
    """(``x0`` diffused back to the start with ``initial_noise``, the scale of fresh noise), both float32.

    Alpha-bar samplers (DDIM, DDPM, PNDM, LCM ...) use ``add_noise`` at ``timestep`` (default the last training
    timestep, as diffusers); sigma samplers add ``sigma_0 * initial_noise / init_noise_sigma`` (the unit noise of
    the first draw at the sigma the run starts from)."""
    from ..schedulers.common import SigmaScheduler

    if isinstance(scheduler, SigmaScheduler):
        sigma = float(scheduler.sigmas[scheduler.begin_index or 0])  # video-to-video: where the trimmed run starts
        unit = initial_noise / scheduler.init_noise_sigma
        return (x0 + sigma * unit).float(), sigma
    if timestep is None:
        timestep = scheduler.config.num_train_timesteps - 1
    steps = torch.full((x0.shape[0],), int(timestep), dtype=torch.long, device=x0.device)
    return scheduler.add_noise(x0, initial_noise, steps).float(), 1.0


class FreeInitMixin:
    """``pipe.enable_free_init(...)`` / ``pipe.disable_free_init()`` and the loop hook the pipelines call.

    A pipeline composes it and runs its sampling through :meth:`free_init_denoise`; with FreeInit off that is
    one plain run of the loop, so outputs are unchanged."""

    _free_init: FreeInitConfig | None = None

    def enable_free_init(self, num_iters: int = 3, use_fast_sampling: bool = False, method: str = "butterworth",
                         order: int = 4, spatial_stop_frequency: float = 0.25, temporal_stop_frequency: float = 0.25):
        """FreeInit (:mod:`vidcore.sampling.free_init`): ``num_iters`` sampling rounds, each after the first
        starting from the low frequencies of the previous result re-noised. ``method``: "butterworth" (of
        ``order``), "gaussian" or "ideal"; stop frequencies are normalised to [0, 1]."""
        self._free_init = FreeInitConfig(num_iters, use_fast_sampling, method, order, spatial_stop_frequency,
                                         temporal_stop_frequency)

    def disable_free_init(self) -> None:
        self._free_init = None

    @property
    def free_init_enabled(self) -> bool:
        return self._free_init is not None

    def free_init_denoise(self, latents: torch.Tensor, num_inference_steps: int,
                          schedule: Callable[[int], torch.Tensor], denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                          generator=None, frames_dim: int = 2, timesteps: torch.Tensor | None = None,
                          stop: Callable[[], bool] | None = None) -> torch.Tensor:
        """Run ``denoise(latents, timesteps)`` once (FreeInit off: on ``timesteps``, or ``schedule(n)`` when not
        given), or once per FreeInit round on ``schedule(steps)`` (which sets the scheduler's timesteps and returns
        those to run), re-initialising the latents between rounds. ``frames_dim``: 2 for ``b c f h w`` latents,
        1 for SVD's ``b f c h w``. ``stop()``: True once the call was interrupted (no further round starts)."""
        config = self._free_init
        if config is None:
            return denoise(latents, schedule(num_inference_steps) if timesteps is None else timesteps)
        initial = latents.detach().clone()
        for round_index in range(config.num_iters):
            if round_index > 0 and stop is not None and stop():
                break
            round_timesteps = schedule(config.steps(num_inference_steps, round_index))
            if round_index > 0:
                latents = self._free_init_restart(latents, initial, round_timesteps, generator, frames_dim)
            latents = denoise(latents, round_timesteps)
        return latents

    def free_init_renoise_timestep(self, timesteps: torch.Tensor) -> int | None:
        """Where alpha-bar samplers re-noise for a round running ``timesteps``: None is the last training
        timestep (text-to-video, as diffusers); video-to-video pipelines return their first timestep."""
        return None

    def _free_init_restart(self, x0, initial, timesteps, generator, frames_dim):
        """The next round's latents: low frequencies of ``x0`` re-noised, high ones from fresh noise."""
        config = self._free_init
        moved = frames_dim != 2  # the filter works on ... f h w: bring frames before height
        if moved:
            x0, initial = x0.movedim(frames_dim, 2), initial.movedim(frames_dim, 2)
        z_t, scale = renoise(self.scheduler, x0, initial, self.free_init_renoise_timestep(timesteps))
        fresh = randn_tensor(tuple(x0.shape), generator=generator, device=x0.device, dtype=torch.float32)
        f, h, w = x0.shape[-3:]
        mask = low_pass_filter(f, h, w, config.method, config.order, config.spatial_stop_frequency,
                               config.temporal_stop_frequency, device=x0.device)
        out = mix_frequencies(z_t, fresh * scale, mask).to(x0.dtype)
        return out.movedim(2, frames_dim) if moved else out


__all__ = ["FILTER_METHODS", "FreeInitConfig", "FreeInitMixin", "low_pass_filter", "mix_frequencies", "renoise"]
