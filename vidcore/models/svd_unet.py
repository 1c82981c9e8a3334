"""Stable Video Diffusion UNet (diffusers' ``UNetSpatioTemporalConditionModel``).

An SD-style UNet whose res blocks are :class:`SpatioTemporalResBlock` (2D res block + temporal res
block, alpha-blended) and whose transformers are :class:`SpatioTemporalTransformer` (spatial block +
temporal block with a frame-index embedding, alpha-blended). Conditioning: the CLIP image embedding
(one token) through cross-attention, and ``added_time_ids`` = (fps - 1, motion_bucket_id,
noise_aug_strength) through sinusoidal features and an MLP added to the time embedding.

Layout: the model takes and returns ``b f c h w`` latents (SVD's order); inside, ``(b f) c h w``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..nn.checkpointing import GradientCheckpointingMixin
from ..nn.cpu_bf16 import fp32_compute
from ..nn.embeddings import TimestepMLP, sinusoidal_embedding, timestep_features
from ..nn.processors import AttentionProcessorMixin
from ..nn.resnet import SpatioTemporalResBlock
from ..nn.resample import Downsample, Upsample
from ..nn.transformer import SpatioTemporalTransformer
from .config_utils import DiffusersConfig
from .options import ForwardChunkingMixin, GroupOffloadMixin, LayerwiseCastingMixin
from .pretrained import PretrainedMixin
from .unet_layout import unet_levels, walk

DOWN_TYPES = ("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal")
UP_TYPES = ("CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal")


@dataclass(frozen=True)
class SVDUNetConfig(DiffusersConfig):
    diffusers_class, label = "UNetSpatioTemporalConditionModel", "SVD UNet config"

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

    def validate(self) -> None:
        self.check_blocks(DOWN_TYPES, UP_TYPES)
        nested = any(isinstance(t, tuple) for t in self.per_level("transformer_layers_per_block"))
        if isinstance(self.cross_attention_dim, tuple) or nested:
            raise ValueError("SVD UNet config: per-block cross_attention_dim / nested transformer_layers_per_block "
                             "are not supported")


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


class SVDUNet(PretrainedMixin, ForwardChunkingMixin, GroupOffloadMixin, AttentionProcessorMixin,
              LayerwiseCastingMixin, GradientCheckpointingMixin, nn.Module):
    """``forward(sample b f c h w, timestep, encoder_hidden_states b m d, added_time_ids b 3) -> b f c_out h w``."""

    def __init__(self, config: SVDUNetConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        ch = cfg.block_out_channels
        temb = 4 * ch[0]
        heads = cfg.per_level("num_attention_heads")
        tlayers = cfg.per_level("transformer_layers_per_block")
        ctx = cfg.cross_attention_dim

        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepMLP(ch[0], temb)
        self.add_embedding = TimestepMLP(cfg.projection_class_embeddings_input_dim, temb)

        down, up = unet_levels(ch, cfg.per_level("layers_per_block"))
        self.down_blocks = nn.ModuleList()
        for lv, kind in zip(down, cfg.down_block_types):
            attn = kind == "CrossAttnDownBlockSpatioTemporal"
            self.down_blocks.append(STBlock(lv.in_channels, lv.out_channels, temb, lv.layers, 1e-6 if attn else 1e-5,
                                            heads[lv.index] if attn else None, tlayers[lv.index], ctx,
                                            downsample=lv.resample))
        self.mid_block = MidSTBlock(ch[-1], temb, heads[-1], tlayers[-1], ctx)
        # diffusers builds every up block with eps 1e-6 (get_up_block drops resnet_eps here)
        self.up_blocks = nn.ModuleList(
            STBlock(lv.in_channels, lv.out_channels, temb, lv.layers, 1e-6,
                    heads[lv.index] if kind == "CrossAttnUpBlockSpatioTemporal" else None, tlayers[lv.index], ctx,
                    skip_channels=lv.skip_channels, upsample=lv.resample)
            for lv, kind in zip(up, cfg.up_block_types)
        )

        self.conv_norm_out = nn.GroupNorm(32, ch[0], eps=1e-5)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    @fp32_compute
    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                added_time_ids: torch.Tensor) -> torch.Tensor:
        # sample: b f c h w ; encoder_hidden_states: b m d ; added_time_ids: b k
        b, f = sample.shape[:2]
        feats = timestep_features(timestep, b, self.config.block_out_channels[0], sample.device)
        temb = self.time_embedding(feats.to(sample.dtype))
        ids = sinusoidal_embedding(added_time_ids.flatten(), self.config.addition_time_embed_dim)
        temb = temb + self.add_embedding(ids.reshape(b, -1).to(temb.dtype))
        temb = temb.repeat_interleave(f, dim=0)  # (b f) d
        context = encoder_hidden_states.repeat_interleave(f, dim=0)  # (b f) m d

        def layer(block, i, x):
            return block.layer(i, x, temb, context, f)

        x = walk(self, self.conv_in(sample.flatten(0, 1)), layer, lambda x: self.mid_block(x, temb, context, f))
        x = self.conv_out(F.silu(self.conv_norm_out(x)))
        return rearrange(x, "(b f) c h w -> b f c h w", f=f)
