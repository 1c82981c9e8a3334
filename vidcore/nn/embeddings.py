"""Timestep embeddings: sinusoidal features and the two-layer MLP that lifts them."""

from __future__ import annotations

import math

import torch
from torch import nn

from .frame_hooks import frame_start


def sinusoidal_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, shift: float = 0.0,
                         max_period: float = 10000.0) -> torch.Tensor:
    """(n,) timesteps -> (n, dim) float32 features; cos first when ``flip_sin_to_cos``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - shift))
    angles = t[:, None].float() * freqs[None]
    sin, cos = torch.sin(angles), torch.cos(angles)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


def timestep_features(timestep, batch: int, dim: int, device, flip_sin_to_cos: bool = True,
                      shift: float = 0.0) -> torch.Tensor:
    """Sinusoidal features of a scalar or ``(batch,)`` timestep (callers pass either) -> (batch, dim) float32."""
    t = torch.as_tensor(timestep, device=device)
    if t.ndim == 0:
        t = t[None]
    return sinusoidal_embedding(t.expand(batch), dim, flip_sin_to_cos, shift)


class TimestepMLP(nn.Module):
    """Linear -> SiLU -> Linear, with an optional projected condition added first (LCM-style)."""

    def __init__(self, in_dim: int, hidden_dim: int, cond_dim: int | None = None, out_dim: int | None = None):
        super().__init__()
        self.cond_proj = nn.Linear(cond_dim, in_dim, bias=False) if cond_dim else None
        self.linear_1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(hidden_dim, out_dim or hidden_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is not None and self.cond_proj is not None:
            x = x + self.cond_proj(cond)
        return self.linear_2(self.act(self.linear_1(x)))


class SinusoidalPositions(nn.Module):
    """A fixed sine/cosine table over frame positions, added to per-frame tokens (AnimateDiff's motion
    modules add it before each temporal attention).

    ``pe[0, p, 2i] = sin(p * w_i)`` and ``pe[0, p, 2i + 1] = cos(p * w_i)`` with ``w_i = 10000^(-2i/dim)``.
    The table is a persistent buffer of shape ``(1, max_len, dim)`` because diffusers' checkpoints carry it.
    """

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        rates = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim)
        pe[0, :, 0::2] = torch.sin(position * rates)
        pe[0, :, 1::2] = torch.cos(position * rates[: dim // 2])
        self.register_buffer("pe", pe)

    @property
    def max_len(self) -> int:
        return self.pe.shape[1]

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        # x: (b f) n c -> the same with pe[f] added to every token of frame f
        start = frame_start(num_frames)  # > 0 for later frame slices under frame parallelism
        if start + num_frames > self.max_len:
            raise ValueError(f"{start + num_frames} frames is more than this temporal module's {self.max_len} positions "
                             f"(motion_max_seq_length / frame_positions); use at most {self.max_len} frames per window")
        n, tokens, c = x.shape
        pe = self.pe[0, start:start + num_frames].to(x.dtype)  # f c
        return (x.view(n // num_frames, num_frames, tokens, c) + pe[None, :, None]).view(n, tokens, c)
