"""Stable Diffusion's 2D KL autoencoder (diffusers' ``AutoencoderKL``), with batch slicing and tiling.

Video pipelines fold frames into the batch: ``(b f) 3 H W <-> (b f) 4 H/8 W/8``. Slicing decodes one
image at a time; tiling runs the encoder/decoder on overlapping tiles and blends the seams with
linear ramps, so memory stays flat at any resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.attention import SpatialSelfAttention
from ..nn.checkpointing import GradientCheckpointingMixin, block_runner
from ..nn.cpu_bf16 import fp32_compute
from ..nn.layerwise_casting import layer_dtype
from ..nn.resnet import ResBlock2D
from ..nn.resample import Downsample, Upsample
from .options import FusedQKVMixin, GroupOffloadMixin, LayerwiseCastingMixin
from .pretrained import PretrainedMixin


@dataclass(frozen=True)
class AutoencoderKLConfig:
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int = 768
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 4
    act_fn: str = "silu"

    @classmethod
    def from_diffusers_config(cls, config: dict) -> "AutoencoderKLConfig":
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in known}
        if isinstance(values.get("sample_size"), tuple):
            values["sample_size"] = values["sample_size"][0]
        if "block_out_channels" in values and "down_block_types" not in values:
            values["down_block_types"] = ("DownEncoderBlock2D",) * len(values["block_out_channels"])
            values["up_block_types"] = ("UpDecoderBlock2D",) * len(values["block_out_channels"])
        cfg = cls(**values)
        bad = [t for t in cfg.down_block_types if t != "DownEncoderBlock2D"] + [t for t in cfg.up_block_types if t != "UpDecoderBlock2D"]
        if bad or cfg.act_fn != "silu":
            raise ValueError(f"AutoencoderKL config: unsupported block types {bad} or act_fn {cfg.act_fn!r}")
        return cfg

    def to_diffusers_config(self) -> dict:
        out = {f.name: (list(v) if isinstance(v, tuple) else v) for f in fields(self) for v in [getattr(self, f.name)]}
        return {"_class_name": "AutoencoderKL", **out}


class MidBlock2D(nn.Module):
    """res -> single-head self-attention -> res, without time embedding."""

    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList(ResBlock2D(channels, channels, None, groups, 1e-6) for _ in range(2))
        self.attentions = nn.ModuleList([SpatialSelfAttention(channels, groups)] if attention else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class EncoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(ResBlock2D(cin if i == 0 else cout, cout, None, groups, 1e-6) for i in range(layers))
        self.downsample = Downsample(cout, padding=0) if downsample else None

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        return self.downsample(x) if self.downsample is not None else x


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(ResBlock2D(cin if i == 0 else cout, cout, None, groups, 1e-6) for i in range(layers))
        self.upsample = Upsample(cout) if upsample else None

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        return self.upsample(x) if self.upsample is not None else x


class Encoder(GradientCheckpointingMixin, nn.Module):
    """images n 3 H W -> moments n 2L H/2^k W/2^k (mean and log-variance). Gradient checkpointing (set through
    the autoencoder): each down block and the mid block."""

    def __init__(self, cfg: AutoencoderKLConfig):
        super().__init__()
        ch, g = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            EncoderBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, g, i < len(ch) - 1) for i in range(len(ch))
        )
        self.mid_block = MidBlock2D(ch[-1], g, cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x):
        run = block_runner(self)
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = run(block, x)
        return self.conv_out(F.silu(self.conv_norm_out(run(self.mid_block, x))))


class Decoder(GradientCheckpointingMixin, nn.Module):
    """latents n L h w -> images n 3 8h 8w. Gradient checkpointing: the mid block and each up block."""

    def __init__(self, cfg: AutoencoderKLConfig):
        super().__init__()
        ch, g = cfg.block_out_channels[::-1], cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        self.mid_block = MidBlock2D(ch[0], g, cfg.mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            DecoderBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, g, i < len(ch) - 1) for i in range(len(ch))
        )
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z):
        run = block_runner(self)
        x = run(self.mid_block, self.conv_in(z))
        x = x.to(layer_dtype(self.up_blocks[0].resnets[0].conv1))  # mid block may run upcast
        for block in self.up_blocks:
            x = run(block, x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class DiagonalGaussian:
    """The encoder's posterior N(mean, exp(logvar)); ``sample`` draws with an explicit generator."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        from ..random import randn_tensor

        noise = randn_tensor(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean


def _blend(a: torch.Tensor, b: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """Overwrite the first ``extent`` rows/cols of ``b`` (along ``dim``) with a linear ramp from ``a``'s last ones."""
    extent = min(a.shape[dim], b.shape[dim], extent)
    if extent == 0:
        return b
    w = torch.arange(extent, device=b.device, dtype=torch.float32) / extent
    shape = [1] * b.ndim
    shape[dim] = extent
    w = w.view(shape).to(b.dtype)
    head = b.narrow(dim, 0, extent)
    head.copy_(a.narrow(dim, a.shape[dim] - extent, extent) * (1 - w) + head * w)
    return b


class AutoencoderKL(PretrainedMixin, FusedQKVMixin, GroupOffloadMixin, LayerwiseCastingMixin, GradientCheckpointingMixin,
                    nn.Module):
    """KL autoencoder with ``encode`` -> :class:`DiagonalGaussian` and ``decode`` -> images in [-1, 1]."""

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        self.config = cfg = config
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        L = cfg.latent_channels
        self.quant_conv = nn.Conv2d(2 * L, 2 * L, 1) if cfg.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(L, L, 1) if cfg.use_post_quant_conv else None
        self.use_slicing = False
        self.use_tiling = False
        self.tile_sample_min_size = cfg.sample_size
        self.tile_latent_min_size = int(cfg.sample_size / 2 ** (len(cfg.block_out_channels) - 1))
        self.tile_overlap_factor = 0.25

    @property
    def dtype(self) -> torch.dtype:
        return layer_dtype(self.encoder.conv_in)

    def enable_slicing(self) -> None:
        """Encode/decode one batch element at a time (frames are batch elements in video pipelines)."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(self, tile_sample_min_size: int | None = None, overlap: float | None = None) -> None:
        """Process images larger than ``tile_sample_min_size`` pixels in overlapping, blended tiles."""
        self.use_tiling = True
        if tile_sample_min_size is not None:
            self.tile_sample_min_size = tile_sample_min_size
            self.tile_latent_min_size = int(tile_sample_min_size / 2 ** (len(self.config.block_out_channels) - 1))
        if overlap is not None:
            self.tile_overlap_factor = overlap

    def disable_tiling(self) -> None:
        self.use_tiling = False

    # -- encode ---------------------------------------------------------------------------------
    def _encode_one(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(x)
        return self.quant_conv(moments) if self.quant_conv is not None else moments

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(x.shape[-2:]) > self.tile_sample_min_size:
            return self._tiled(x, self._encode_one, self.tile_sample_min_size, self.tile_latent_min_size)
        return self._encode_one(x)

    @fp32_compute
    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        # x: n 3 H W in [-1, 1]
        if self.use_slicing and x.shape[0] > 1:
            return DiagonalGaussian(torch.cat([self._encode(part) for part in x.split(1)]))
        return DiagonalGaussian(self._encode(x))

    # -- decode ---------------------------------------------------------------------------------
    def _decode_one(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(z.shape[-2:]) > self.tile_latent_min_size:
            return self._tiled(z, self._decode_one, self.tile_latent_min_size, self.tile_sample_min_size)
        return self._decode_one(z)

    @fp32_compute
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        # z: n L h w (already divided by scaling_factor) -> n 3 8h 8w
        if self.use_slicing and z.shape[0] > 1:
            return torch.cat([self._decode(part) for part in z.split(1)])
        return self._decode(z)

    @fp32_compute
    def forward(self, x: torch.Tensor, sample_posterior: bool = False, generator=None) -> torch.Tensor:
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator) if sample_posterior else posterior.mode())

    # -- tiling ---------------------------------------------------------------------------------
    def _tiled(self, x: torch.Tensor, fn, tile_in: int, tile_out: int) -> torch.Tensor:
        """Run ``fn`` on overlapping ``tile_in`` tiles; blend ``tile_out`` outputs over a quarter overlap,
        with diffusers' tile arithmetic so tiled outputs match seed for seed."""
        extent = int(tile_out * self.tile_overlap_factor)
        return tiled_apply(x, fn, tile_in, int(tile_in * (1 - self.tile_overlap_factor)), tile_out - extent, extent)


def _tile_starts(size: int, tile: int, stride: int, cover_end: bool) -> list[int]:
    if not cover_end:
        return list(range(0, size, stride))
    starts = [0]
    while starts[-1] + tile < size:
        starts.append(starts[-1] + stride)
    return starts


def tiled_apply(x: torch.Tensor, fn, tile_in: int, stride_in: int, keep: int, extent: int,
                cover_end: bool = False) -> torch.Tensor:
    """Run ``fn`` on overlapping square tiles of ``x`` (``n c H W``) and stitch the outputs.

    Tiles of ``tile_in`` pixels start every ``stride_in`` pixels along H and W. Each output tile is
    blended with its already-blended upper and left neighbours over ``extent`` output pixels
    (:func:`_blend`, a linear ramp), then cropped to its first ``keep`` output pixels, in diffusers'
    order. ``cover_end=False`` is diffusers' layout (a tile starts at every stride below the size,
    so the last ones can be slivers); ``cover_end=True`` stops once a tile reaches the edge and keeps
    that last tile whole (no sliver tiles; the caller must use ``keep = stride_in * scale``).
    """
    rows_at = _tile_starts(x.shape[2], tile_in, stride_in, cover_end)
    cols_at = _tile_starts(x.shape[3], tile_in, stride_in, cover_end)
    rows = [[fn(x[:, :, i:i + tile_in, j:j + tile_in]) for j in cols_at] for i in rows_at]
    last_i, last_j = len(rows) - 1, len(rows[0]) - 1
    out_rows = []
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            if i > 0:
                _blend(rows[i - 1][j], tile, extent, dim=2)
            if j > 0:
                _blend(row[j - 1], tile, extent, dim=3)
        h = None if cover_end and i == last_i else keep
        out_rows.append(torch.cat([t[:, :, :h, :None if cover_end and j == last_j else keep]
                                   for j, t in enumerate(row)], dim=3))
    return torch.cat(out_rows, dim=2)
