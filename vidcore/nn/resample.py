"""2x spatial down/up sampling convolutions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .row_chunks import in_row_chunks


class Downsample(nn.Module):
    """Stride-2 3x3 conv. ``padding=0`` pads right/bottom by one first (the VAE encoder's variant)."""

    def __init__(self, channels: int, out_channels: int | None = None, padding: int = 1):
        super().__init__()
        self.row_chunk: int | None = None  # FreeNoise split inference (vidcore.nn.row_chunks)
        self.padding = padding
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=padding)

    @in_row_chunks
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest 2x (or to an explicit size, for odd latent sizes) then a 3x3 conv."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.row_chunk: int | None = None  # FreeNoise split inference (vidcore.nn.row_chunks)
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    @in_row_chunks
    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        dtype = x.dtype
        if dtype == torch.bfloat16:  # nearest interpolation of bf16 is not implemented everywhere
            x = x.float()
        x = F.interpolate(x, size=size, mode="nearest") if size is not None else F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x.to(dtype))
