"""Stable Video Diffusion's VAE (diffusers' ``AutoencoderKLTemporalDecoder``), plus spatial tiling.

The encoder is Stable Diffusion's KL encoder (:class:`~vidcore.models.vae.Encoder`) + ``quant_conv``
and works per image. The decoder is temporal: every res block is a :class:`SpatioTemporalResBlock`
(2D res block, then a Conv3d(3x1x1) res block over frames, mixed by a learned alpha), and a final
``time_conv_out`` Conv3d(3x1x1) runs over frames on the RGB output. There is no ``post_quant_conv``.

Layout: ``decode(z, num_frames)`` takes ``(b f) 4 h w`` latents, frames of one video consecutive,
and returns ``(b f) 3 8h 8w``, exactly as diffusers.

Tiling (diffusers has none for this model, issue #9958): :meth:`AutoencoderKLTemporalDecoder.enable_tiling`
splits the latents spatially into overlapping square tiles, decodes each tile with *all* its frames
(so the temporal convolutions see every frame), and blends the seams with linear ramps. A tiled
decode is not bit-identical to an untiled one: the mid-block attention is global over the tile and
every GroupNorm takes its statistics over the tile (and, in the temporal blocks, over all frames of
the tile), so pixels see a slightly different context. See ``tests/test_svd_vae.py`` for the
measured difference.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..nn.attention import SpatialSelfAttention
from ..nn.checkpointing import GradientCheckpointingMixin, block_runner
from ..nn.cpu_bf16 import fp32_compute
from ..nn.layerwise_casting import layer_dtype
from ..nn.resnet import SpatioTemporalResBlock
from ..nn.resample import Upsample
from .options import FusedQKVMixin, GroupOffloadMixin, LayerwiseCastingMixin
from .pretrained import PretrainedMixin
from .vae import AutoencoderKLConfig, DiagonalGaussian, Encoder, tiled_apply

# diffusers' AutoencoderKLTemporalDecoder.__init__ defaults: what a config.json without a key means.
# They are *not* the released model (the dataclass defaults below are); hub configs list every key.
_DIFFUSERS_DEFAULTS = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                           block_out_channels=(64,), layers_per_block=1, latent_channels=4, sample_size=32,
                           scaling_factor=0.18215, force_upcast=True)
GROUPS = 32  # diffusers hard-codes 32 groups in every norm of this model (encoder included)


@dataclass(frozen=True)
class AutoencoderKLTemporalDecoderConfig:
    """Defaults: stabilityai/stable-video-diffusion-img2vid(-xt) ``vae/config.json``."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    sample_size: int = 768
    scaling_factor: float = 0.18215
    force_upcast: bool = True

    @classmethod
    def from_diffusers_config(cls, config: dict) -> "AutoencoderKLTemporalDecoderConfig":
        """Keys missing from ``config`` take diffusers' constructor defaults, as diffusers would."""
        known = {f.name for f in fields(cls)}
        values = {**_DIFFUSERS_DEFAULTS,
                  **{k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in known}}
        if isinstance(values["sample_size"], tuple):
            values["sample_size"] = values["sample_size"][0]
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or any(t != "DownEncoderBlock2D" for t in self.down_block_types):
            raise ValueError(f"AutoencoderKLTemporalDecoder config: down_block_types must be {n} x "
                             f"'DownEncoderBlock2D' (one per block_out_channels), got {list(self.down_block_types)}")
        if any(c % GROUPS for c in self.block_out_channels):
            raise ValueError(f"AutoencoderKLTemporalDecoder config: block_out_channels {list(self.block_out_channels)} "
                             f"must be multiples of {GROUPS} (the model's GroupNorm groups)")
        if self.layers_per_block < 1:
            raise ValueError(f"AutoencoderKLTemporalDecoder config: layers_per_block must be >= 1, got {self.layers_per_block}")

    def to_diffusers_config(self) -> dict:
        out = {f.name: (list(v) if isinstance(v, tuple) else v) for f in fields(self) for v in [getattr(self, f.name)]}
        return {"_class_name": "AutoencoderKLTemporalDecoder", **out}

    @property
    def spatial_scale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def encoder_config(self) -> AutoencoderKLConfig:
        return AutoencoderKLConfig(in_channels=self.in_channels, block_out_channels=self.block_out_channels,
                                   layers_per_block=self.layers_per_block, latent_channels=self.latent_channels,
                                   norm_num_groups=GROUPS, down_block_types=self.down_block_types,
                                   up_block_types=("UpDecoderBlock2D",) * len(self.block_out_channels))


def _st_resblock(cin: int, cout: int) -> SpatioTemporalResBlock:
    # diffusers: eps 1e-6, temporal_eps 1e-5, merge_factor 0.0, merge_strategy "learned",
    # switch_spatial_to_temporal_mix=True. "learned" ignores image_only_indicator (which decode
    # sets to zeros anyway), so the mix is (1 - sigmoid(m)) * spatial + sigmoid(m) * temporal.
    return SpatioTemporalResBlock(cin, cout, None, eps=1e-6, temporal_eps=1e-5, alpha=0.0, switch=True)


class TemporalMidBlock(nn.Module):
    """diffusers' ``MidBlockTemporalDecoder``: res -> single-head self-attention -> res.

    diffusers builds ``layers_per_block`` res blocks and one attention but runs only
    ``resnets[0]``, then (attention, ``resnets[1]``) if a second res block exists: with one layer
    the attention is built (and loaded) but unused, and res blocks past the second are never run.
    """

    def __init__(self, channels: int, layers: int):
        super().__init__()
        self.resnets = nn.ModuleList(_st_resblock(channels, channels) for _ in range(layers))
        self.attentions = nn.ModuleList([SpatialSelfAttention(channels, GROUPS, eps=1e-6)])

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        # x: (b f) c h w
        x = self.resnets[0](x, None, num_frames)
        if len(self.resnets) > 1:
            x = self.resnets[1](self.attentions[0](x), None, num_frames)
        return x


class TemporalUpBlock(nn.Module):
    """diffusers' ``UpBlockTemporalDecoder``: ``layers`` spatio-temporal res blocks, then 2x upsample."""

    def __init__(self, cin: int, cout: int, layers: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(_st_resblock(cin if i == 0 else cout, cout) for i in range(layers))
        self.upsample = Upsample(cout) if upsample else None

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        for r in self.resnets:
            x = r(x, None, num_frames)
        return self.upsample(x) if self.upsample is not None else x


class TemporalDecoder(GradientCheckpointingMixin, nn.Module):
    """latents (b f) L h w -> images (b f) 3 8h 8w; frames of a video are mixed by the temporal blocks. Gradient
    checkpointing: the mid block and each up block."""

    def __init__(self, cfg: AutoencoderKLTemporalDecoderConfig):
        super().__init__()
        ch = cfg.block_out_channels[::-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        self.mid_block = TemporalMidBlock(ch[0], cfg.layers_per_block)
        self.up_blocks = nn.ModuleList(
            TemporalUpBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, i < len(ch) - 1) for i in range(len(ch))
        )
        self.conv_norm_out = nn.GroupNorm(GROUPS, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], cfg.out_channels, 3, padding=1)
        self.time_conv_out = nn.Conv3d(cfg.out_channels, cfg.out_channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        run = block_runner(self)
        x = run(self.mid_block, self.conv_in(z), num_frames)
        x = x.to(next(itertools.chain(self.up_blocks.parameters(), self.up_blocks.buffers())).dtype)
        for block in self.up_blocks:
            x = run(block, x, num_frames)
        x = self.conv_out(F.silu(self.conv_norm_out(x)))  # (b f) 3 H W
        video = self.time_conv_out(rearrange(x, "(b f) c h w -> b c f h w", f=num_frames))
        return rearrange(video, "b c f h w -> (b f) c h w")


class AutoencoderKLTemporalDecoder(PretrainedMixin, FusedQKVMixin, GroupOffloadMixin, LayerwiseCastingMixin,
                                   GradientCheckpointingMixin, nn.Module):
    """SVD's VAE: ``encode(x (n 3 H W)) -> DiagonalGaussian``; ``decode(z ((b f) L h w), num_frames)``
    -> ``(b f) 3 H W`` (latents already divided by ``scaling_factor``)."""

    def __init__(self, config: AutoencoderKLTemporalDecoderConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        self.encoder = Encoder(cfg.encoder_config())
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.decoder = TemporalDecoder(cfg)
        self.use_tiling = False
        self.tile_latent_size = cfg.sample_size // cfg.spatial_scale
        self.tile_overlap = 0.25

    @property
    def dtype(self) -> torch.dtype:
        return layer_dtype(self.encoder.conv_in)

    # -- tiling ---------------------------------------------------------------------------------
    def enable_tiling(self, tile_latent_size: int | None = None, overlap: float = 0.25) -> None:
        """Decode latents larger than ``tile_latent_size`` (default ``sample_size / 8``, 96 for SVD)
        in square tiles of that many latent pixels overlapping by ``overlap`` of a tile, each tile
        with all its frames; seams are blended with linear ramps. Not bit-identical to an untiled
        decode (the mid-block attention and GroupNorms see one tile); latents that fit in one tile
        decode exactly as without tiling."""
        size = self.config.sample_size // self.config.spatial_scale if tile_latent_size is None else tile_latent_size
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"tile_latent_size must be a positive int (latent pixels), got {tile_latent_size!r}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1) (a fraction of the tile), got {overlap!r}")
        self.use_tiling, self.tile_latent_size, self.tile_overlap = True, size, overlap

    def disable_tiling(self) -> None:
        self.use_tiling = False

    # -- encode / decode ------------------------------------------------------------------------
    @fp32_compute
    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        # x: n 3 H W in [-1, 1], each image encoded on its own
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    @fp32_compute
    def decode(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        # z: (b f) L h w -> (b f) 3 H W
        if not isinstance(num_frames, int) or num_frames < 1 or z.shape[0] % num_frames:
            raise ValueError(f"decode: num_frames must be a positive int dividing the batch of {z.shape[0]} latents "
                             f"((b f) layout, frames of a video consecutive), got {num_frames!r}")
        decode = lambda t: self.decoder(t, num_frames)  # noqa: E731
        tile = self.tile_latent_size
        if self.use_tiling and max(z.shape[-2:]) > tile:
            overlap = int(tile * self.tile_overlap)
            scale = self.config.spatial_scale
            return tiled_apply(z, decode, tile, tile - overlap, (tile - overlap) * scale, overlap * scale,
                               cover_end=True)
        return decode(z)

    @fp32_compute
    def forward(self, x: torch.Tensor, sample_posterior: bool = False, generator: torch.Generator | None = None,
                num_frames: int = 1) -> torch.Tensor:
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator) if sample_posterior else posterior.mode(), num_frames)
