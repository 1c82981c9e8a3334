"""Timestep embeddings: sinusoidal features and the two-layer MLP that lifts them."""

from __future__ import annotations

import math

import torch
from torch import nn


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
