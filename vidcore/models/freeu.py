"""FreeU (Si et al., 2023): re-weight UNet decoder features at inference, no training.

In the two lowest-resolution up blocks, the first half of the backbone channels is scaled by
``b`` and the skip features' lowest spatial frequencies are scaled by ``s``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FreeU:
    s1: float
    s2: float
    b1: float
    b2: float


def low_frequency_scale(x: torch.Tensor, scale: float, threshold: int = 1) -> torch.Tensor:
    """Scale the centred ``2*threshold`` square of the 2D spectrum of ``x`` (n c h w) by ``scale``."""
    spec = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    h, w = spec.shape[-2:]
    mask = torch.ones(spec.shape[-2:], device=x.device)
    mask[h // 2 - threshold: h // 2 + threshold, w // 2 - threshold: w // 2 + threshold] = scale
    spec = torch.fft.ifftshift(spec * mask, dim=(-2, -1))
    return torch.fft.ifftn(spec, dim=(-2, -1)).real.to(x.dtype)


def apply_freeu(params: FreeU, level: int, x: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply FreeU at up-block ``level`` (0 = lowest resolution); other levels pass through."""
    if level > 1:
        return x, skip
    b, s = (params.b1, params.s1) if level == 0 else (params.b2, params.s2)
    half = x.shape[1] // 2
    x = torch.cat([x[:, :half] * b, x[:, half:]], dim=1)
    return x, low_frequency_scale(skip, s)
