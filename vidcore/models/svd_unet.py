"""Stable Video Diffusion UNet (diffusers' ``UNetSpatioTemporalConditionModel``).

An SD-style UNet whose res blocks are :class:`SpatioTemporalResBlock` (2D res block + temporal res
block, alpha-blended) and whose transformers are :class:`SpatioTemporalTransformer` (spatial block +
temporal block with a frame-index embedding, alpha-blended). Conditioning: the CLIP image embedding
(one token) through cross-attention, and ``added_time_ids`` = (fps - 1, motion_bucket_id,
noise_aug_strength) through sinusoidal features and an MLP added to the time embedding.

Layout: the model takes and returns ``b f c h w`` latents (SVD's order); inside, ``(b f) c h w``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..nn.embeddings import TimestepMLP, sinusoidal_embedding
from ..nn.resnet import SpatioTemporalResBlock
from ..nn.sampling import Downsample, Upsample
from ..nn.transformer import SpatioTemporalTransformer
from .options import ForwardChunkingMixin

DOWN_TYPES = ("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal")
UP_TYPES = ("CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal")


def _per_block(value, n: int) -> tuple:
    return (value,) * n if isinstance(value, int) else tuple(value)


@dataclass(frozen=True)
class SVDUNetConfig:
    in_channels: int = 8
    out_channels: int = 4
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",)
    up_block_types: tuple[str, ...] = ("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    addition_time_embed_dim: int = 256
    projection_class_embeddings_input_dim: int = 768
    layers_per_block: int | tuple[int, ...] = 2
    cross_attention_dim: int | tuple[int, ...] = 1024
    transformer_layers_per_block: int | tuple = 1
    num_attention_heads: int | tuple[int, ...] = (5, 10, 20, 20)
    num_frames: int = 25
    sample_size: int | None = None

    @classmethod
    def from_diffusers_config(cls, config: dict) -> "SVDUNetConfig":
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in known}
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(f"SVD UNet config: {n} block_out_channels but {len(self.down_block_types)} down and "
                             f"{len(self.up_block_types)} up block types")
        bad = [t for t in self.down_block_types if t not in DOWN_TYPES] + [t for t in self.up_block_types if t not in UP_TYPES]
        if bad:
            raise ValueError(f"SVD UNet config: unknown block types {bad}; supported: {DOWN_TYPES + UP_TYPES}")
        if isinstance(self.cross_attention_dim, tuple) or any(isinstance(t, tuple) for t in _per_block(self.transformer_layers_per_block, n)):
            raise ValueError("SVD UNet config: per-block cross_attention_dim / nested transformer_layers_per_block "
                             "are not supported")

    def to_diffusers_config(self) -> dict:
        out = {f.name: (list(v) if isinstance(v, tuple) else v) for f in fields(self) for v in [getattr(self, f.name)]}
        return {"_class_name": "UNetSpatioTemporalConditionModel", **out}


class STBlock(nn.Module):
    """One UNet level: ``layers`` x (spatio-temporal res block[, spatio-temporal transformer]).

    Up blocks concatenate a skip connection before each res block (``skip_channels``)."""

    def __init__(self, cin: int, cout: int, temb: int, layers: int, eps: float, heads: int | None,
                 transformer_layers: int, context_dim: int, skip_channels: tuple[int, ...] = (),
                 downsample: bool = False, upsample: bool = False):
        super().__init__()
        self.resnets = nn.ModuleList(
            SpatioTemporalResBlock((cin if i == 0 else cout) + (skip_channels[i] if skip_channels else 0), cout, temb, eps)
            for i in range(layers)
        )
        self.attentions = nn.ModuleList(
            SpatioTemporalTransformer(cout, heads, cout // heads, context_dim, transformer_layers)
            for _ in range(layers if heads else 0)
        )
        self.downsample = Downsample(cout, padding=1) if downsample else None
        self.upsample = Upsample(cout) if upsample else None

    def layer(self, i: int, x, temb, context, num_frames: int):
        x = self.resnets[i](x, temb, num_frames)
        return self.attentions[i](x, context, num_frames) if self.attentions else x


class MidSTBlock(nn.Module):
    """res -> spatio-temporal transformer -> res."""

    def __init__(self, channels: int, temb: int, heads: int, transformer_layers: int, context_dim: int):
        super().__init__()
        self.resnets = nn.ModuleList(SpatioTemporalResBlock(channels, channels, temb, 1e-5) for _ in range(2))
        self.attentions = nn.ModuleList(
            [SpatioTemporalTransformer(channels, heads, channels // heads, context_dim, transformer_layers)]
        )

    def forward(self, x, temb, context, num_frames: int):
        x = self.attentions[0](self.resnets[0](x, temb, num_frames), context, num_frames)
        return self.resnets[1](x, temb, num_frames)


class SVDUNet(ForwardChunkingMixin, nn.Module):
    """``forward(sample b f c h w, timestep, encoder_hidden_states b m d, added_time_ids b 3) -> b f c_out h w``."""

    def __init__(self, config: SVDUNetConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        ch = cfg.block_out_channels
        n = len(ch)
        temb = 4 * ch[0]
        heads = _per_block(cfg.num_attention_heads, n)
        layers = _per_block(cfg.layers_per_block, n)
        tlayers = _per_block(cfg.transformer_layers_per_block, n)
        ctx = cfg.cross_attention_dim

        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepMLP(ch[0], temb)
        self.add_embedding = TimestepMLP(cfg.projection_class_embeddings_input_dim, temb)

        self.down_blocks = nn.ModuleList()
        skips = [ch[0]]
        for i, kind in enumerate(cfg.down_block_types):
            last = i == n - 1
            attn = kind == "CrossAttnDownBlockSpatioTemporal"
            self.down_blocks.append(STBlock(ch[max(i - 1, 0)], ch[i], temb, layers[i], 1e-6 if attn else 1e-5,
                                            heads[i] if attn else None, tlayers[i], ctx, downsample=not last))
            skips += [ch[i]] * layers[i] + ([] if last else [ch[i]])

        self.mid_block = MidSTBlock(ch[-1], temb, heads[-1], tlayers[-1], ctx)

        self.up_blocks = nn.ModuleList()
        prev = ch[-1]
        for i, kind in enumerate(cfg.up_block_types):
            j = n - 1 - i
            count = layers[j] + 1
            block_skips = tuple(skips.pop() for _ in range(count))
            attn = kind == "CrossAttnUpBlockSpatioTemporal"
            # diffusers builds every up block with eps 1e-6 (get_up_block drops resnet_eps here)
            self.up_blocks.append(STBlock(prev, ch[j], temb, count, 1e-6, heads[j] if attn else None, tlayers[j], ctx,
                                          skip_channels=block_skips, upsample=i < n - 1))
            prev = ch[j]

        self.conv_norm_out = nn.GroupNorm(32, ch[0], eps=1e-5)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                added_time_ids: torch.Tensor) -> torch.Tensor:
        # sample: b f c h w ; encoder_hidden_states: b m d ; added_time_ids: b k
        b, f, _, h, w = sample.shape
        t = torch.as_tensor(timestep, device=sample.device)
        t = (t[None] if t.ndim == 0 else t).expand(b)
        temb = self.time_embedding(sinusoidal_embedding(t, self.config.block_out_channels[0]).to(sample.dtype))
        ids = sinusoidal_embedding(added_time_ids.flatten(), self.config.addition_time_embed_dim)
        temb = temb + self.add_embedding(ids.reshape(b, -1).to(temb.dtype))
        temb = temb.repeat_interleave(f, dim=0)  # (b f) d
        context = encoder_hidden_states.repeat_interleave(f, dim=0)  # (b f) m d

        up_factor = 2 ** (len(self.up_blocks) - 1)
        odd_size = h % up_factor != 0 or w % up_factor != 0
        x = self.conv_in(sample.flatten(0, 1))
        skips = [x]
        for block in self.down_blocks:
            for i in range(len(block.resnets)):
                x = block.layer(i, x, temb, context, f)
                skips.append(x)
            if block.downsample is not None:
                x = block.downsample(x)
                skips.append(x)
        x = self.mid_block(x, temb, context, f)
        for block in self.up_blocks:
            for i in range(len(block.resnets)):
                x = block.layer(i, torch.cat([x, skips.pop()], dim=1), temb, context, f)
            if block.upsample is not None:
                x = block.upsample(x, skips[-1].shape[-2:] if odd_size else None)
        x = self.conv_out(F.silu(self.conv_norm_out(x)))
        return rearrange(x, "(b f) c h w -> b f c h w", f=f)
