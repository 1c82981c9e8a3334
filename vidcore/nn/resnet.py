"""Residual blocks: the 2D res block and ModelScope's temporal convolution stack."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .frame_hooks import frame_handler
from .group_offload import onloaded
from .row_chunks import in_row_chunks


class ResBlock2D(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time embedding added between; 1x1 shortcut if widths differ."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, groups: int,
                 eps: float = 1e-5, dropout: float = 0.0, output_scale_factor: float = 1.0):
        super().__init__()
        self.row_chunk: int | None = None  # FreeNoise split inference (vidcore.nn.row_chunks)
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.output_scale_factor = output_scale_factor

    @in_row_chunks
    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        # x: n c h w ; temb: n c_t
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = x + h
        return out if self.output_scale_factor == 1.0 else out / self.output_scale_factor


def frame_conv(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """A (3, 1, 1) Conv3d over frames, run as a Conv2d on ``b c f (h w)``.

    Same weights and result; CPU PyTorch has no fast fp32 Conv3d path, so this is 1.3-2x faster there.
    Under frame parallelism (``nn.frame_hooks``) the neighbouring processes' edge frames are used.
    """
    handler = frame_handler()
    with onloaded(conv):  # the conv's weights are read, not called: under group offload, onload them here
        if handler is not None:
            return handler.frame_conv(conv, x)
        b, _, f, h, w = x.shape
        out = F.conv2d(x.reshape(b, x.shape[1], f, h * w), conv.weight.squeeze(-1), conv.bias, padding=(1, 0))
    return out.view(b, -1, f, h, w)


class FrameConv3d(nn.Conv3d):
    """A (3, 1, 1) ``nn.Conv3d`` whose call runs :func:`frame_conv`: the layers call it as a module, so forward
    hooks on it (layerwise casting's upcast) wrap the computation that reads its weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return frame_conv(self, x)


def video_norm(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """GroupNorm on ``b c f h w``: statistics span all frames of each video (all processes' frames
    under frame parallelism)."""
    handler = frame_handler()
    if handler is None:
        return norm(x)
    with onloaded(norm):  # the handler reads the norm's weights
        return handler.group_norm(norm, x)


class TemporalConvLayer(nn.Module):
    """One GroupNorm -> SiLU -> Dropout -> Conv3d(3x1x1) step over frames."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float):
        super().__init__()
        self.norm = nn.GroupNorm(groups, in_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv = FrameConv3d(in_channels, out_channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.dropout(F.silu(video_norm(self.norm, x))))


class TemporalConv(nn.Module):
    """ModelScope's temporal mixer: four norm/act/conv3d(k=3 over frames) steps plus a residual.

    GroupNorm statistics span all frames of a video (the norm sees ``b c f h w``).
    """

    def __init__(self, channels: int, groups: int, dropout: float = 0.1):
        super().__init__()
        self.layers = nn.ModuleList(
            TemporalConvLayer(channels, channels, groups, dropout if i else 0.0) for i in range(4)
        )

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        # (b f) c h w -> b c f h w
        video = rearrange(x, "(b f) c h w -> b c f h w", f=num_frames)
        h = video
        for layer in self.layers:
            h = layer(h)
        return rearrange(video + h, "b c f h w -> (b f) c h w")


class TemporalResBlock(nn.Module):
    """SVD's temporal res block on ``b c f h w``: two GroupNorm-SiLU-Conv3d(3x1x1) steps over frames,
    the per-frame time embedding added between them."""

    def __init__(self, channels: int, temb_channels: int | None, eps: float, groups: int = 32):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels, eps=eps)
        self.conv1 = FrameConv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
        self.time_emb_proj = nn.Linear(temb_channels, channels) if temb_channels else None
        self.norm2 = nn.GroupNorm(groups, channels, eps=eps)
        self.conv2 = FrameConv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        # x: b c f h w ; temb: b f c_t
        h = self.conv1(F.silu(video_norm(self.norm1, x)))
        if self.time_emb_proj is not None and temb is not None:
            h = h + rearrange(self.time_emb_proj(F.silu(temb)), "b f c -> b c f 1 1")
        return x + self.conv2(F.silu(video_norm(self.norm2, h)))


class AlphaBlender(nn.Module):
    """``a * spatial + (1 - a) * temporal`` with a learned ``a = sigmoid(mix_factor)``.

    ``switch`` swaps the roles (SVD's VAE decoder mixes ``1 - a`` of the spatial path)."""

    def __init__(self, alpha: float = 0.5, switch: bool = False):
        super().__init__()
        self.mix_factor = nn.Parameter(torch.tensor([alpha]))
        self.switch = switch

    def forward(self, spatial: torch.Tensor, temporal: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(self.mix_factor).to(spatial.dtype)
        if self.switch:
            a = 1.0 - a
        return a * spatial + (1.0 - a) * temporal


class SpatioTemporalResBlock(nn.Module):
    """SVD's res block: a 2D res block per frame, then a temporal res block, blended by a learned alpha."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, eps: float,
                 temporal_eps: float | None = None, alpha: float = 0.5, switch: bool = False):
        super().__init__()
        self.spatial_res_block = ResBlock2D(in_channels, out_channels, temb_channels, 32, eps)
        self.temporal_res_block = TemporalResBlock(out_channels, temb_channels, temporal_eps or eps)
        self.time_mixer = AlphaBlender(alpha, switch)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None, num_frames: int) -> torch.Tensor:
        # x: (b f) c h w ; temb: (b f) c_t
        spatial = rearrange(self.spatial_res_block(x, temb), "(b f) c h w -> b c f h w", f=num_frames)
        t = None if temb is None else rearrange(temb, "(b f) c -> b f c", f=num_frames)
        mixed = self.time_mixer(spatial, self.temporal_res_block(spatial, t))
        return rearrange(mixed, "b c f h w -> (b f) c h w")
