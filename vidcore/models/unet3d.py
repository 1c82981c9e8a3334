"""ModelScope / Zeroscope text-to-video UNet (diffusers' ``UNet3DConditionModel``).

A 2D Stable Diffusion UNet run on frames folded into the batch, where every res block is followed
by a temporal convolution stack and every spatial transformer by a temporal transformer; a
temporal transformer (``transformer_in``) also runs right after ``conv_in``.

Layout: the model takes and returns ``b c f h w`` latents; inside, frames live in the batch,
``(b f) c h w``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..nn.checkpointing import GradientCheckpointingMixin, block_runner
from ..nn.cpu_bf16 import fp32_compute
from ..nn.embeddings import TimestepMLP, timestep_features
from ..nn.processors import AttentionProcessorMixin
from ..nn.resnet import ResBlock2D, TemporalConv
from ..nn.resample import Downsample, Upsample
from ..nn.transformer import SpatialTransformer, TemporalTransformer
from .config_utils import DiffusersConfig
from .freeu import FreeU
from .options import GroupOffloadMixin, LayerwiseCastingMixin, UNetOptionsMixin
from .pretrained import PretrainedMixin
from .unet_layout import unet_levels, walk

DOWN_TYPES = ("CrossAttnDownBlock3D", "DownBlock3D")
UP_TYPES = ("CrossAttnUpBlock3D", "UpBlock3D")


@dataclass(frozen=True)
class UNet3DConfig(DiffusersConfig):
    diffusers_class, label = "UNet3DConditionModel", "UNet3D config"

    in_channels: int = 4
    out_channels: int = 4
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",)
    up_block_types: tuple[str, ...] = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1024
    # diffusers' naming bug: this is the per-head width (64), heads = channels // 64.
    attention_head_dim: int | tuple[int, ...] = 64
    time_cond_proj_dim: int | None = None
    sample_size: int | None = None
    # vidcore extension, not in diffusers' UNet3DConditionModel (None = ModelScope): a fixed sinusoidal
    # frame-position table of this many frames added before every temporal attention, as AnimateDiff's
    # motion modules do. ModelScope's temporal attention has no positions, so a small model trained from
    # scratch cannot tell the first frame from the last and never learns the direction words (the demo).
    frame_positions: int | None = None

    @classmethod
    def diffusers_values(cls, config: dict) -> dict:
        if config.get("num_attention_heads") is not None:
            raise ValueError("UNet3D config: 'num_attention_heads' is not supported (ModelScope configs set "
                             "'attention_head_dim', the per-head width)")
        return super().diffusers_values(config)

    def validate(self) -> None:
        self.check_blocks(DOWN_TYPES, UP_TYPES)

    def to_diffusers_config(self) -> dict:
        out = super().to_diffusers_config()
        if out["frame_positions"] is None:  # vidcore's extension: absent from ModelScope / diffusers configs
            del out["frame_positions"]
        return out


class Block3D(nn.Module):
    """One UNet level: ``layers`` x (res block, temporal conv[, spatial + temporal transformer]).

    Up blocks concatenate a skip connection before each res block (``skip_channels``).
    """

    def __init__(self, in_channels: int, out_channels: int, temb: int, layers: int, cfg: UNet3DConfig,
                 head_dim: int, attention: bool, skip_channels: tuple[int, ...] = (),
                 downsample: bool = False, upsample: bool = False):
        super().__init__()
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        heads = out_channels // head_dim
        self.resnets = nn.ModuleList()
        for i in range(layers):
            cin = (in_channels if i == 0 else out_channels) + (skip_channels[i] if skip_channels else 0)
            self.resnets.append(ResBlock2D(cin, out_channels, temb, g, eps))
        self.temp_convs = nn.ModuleList(TemporalConv(out_channels, g) for _ in range(layers))
        self.attentions = nn.ModuleList(
            SpatialTransformer(out_channels, heads, head_dim, cfg.cross_attention_dim, g) for _ in range(layers if attention else 0)
        )
        self.temp_attentions = nn.ModuleList(
            TemporalTransformer(out_channels, heads, head_dim, g, max_positions=cfg.frame_positions)
            for _ in range(layers if attention else 0)
        )
        self.downsample = Downsample(out_channels, padding=cfg.downsample_padding) if downsample else None
        self.upsample = Upsample(out_channels) if upsample else None

    def layer(self, i: int, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = self.temp_convs[i](self.resnets[i](x, temb), num_frames)
        if self.attentions:
            x = self.attentions[i](x, context)
            x = self.temp_attentions[i](x, num_frames)
        return x


class MidBlock3D(nn.Module):
    """res -> tconv -> [spatial transformer -> temporal transformer -> res -> tconv]."""

    def __init__(self, channels: int, temb: int, cfg: UNet3DConfig, head_dim: int):
        super().__init__()
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        heads = channels // head_dim
        self.resnets = nn.ModuleList(
            ResBlock2D(channels, channels, temb, g, eps, output_scale_factor=cfg.mid_block_scale_factor) for _ in range(2)
        )
        self.temp_convs = nn.ModuleList(TemporalConv(channels, g) for _ in range(2))
        self.attentions = nn.ModuleList([SpatialTransformer(channels, heads, head_dim, cfg.cross_attention_dim, g)])
        self.temp_attentions = nn.ModuleList([TemporalTransformer(channels, heads, head_dim, g,
                                                                  max_positions=cfg.frame_positions)])

    def forward(self, x, temb, context, num_frames):
        x = self.temp_convs[0](self.resnets[0](x, temb), num_frames)
        x = self.temp_attentions[0](self.attentions[0](x, context), num_frames)
        return self.temp_convs[1](self.resnets[1](x, temb), num_frames)


class UNet3D(PretrainedMixin, UNetOptionsMixin, GroupOffloadMixin, AttentionProcessorMixin, LayerwiseCastingMixin,
             GradientCheckpointingMixin, nn.Module):
    """ModelScope's video UNet. ``forward(sample b c f h w, timestep, encoder_hidden_states b m d) -> b c f h w``."""

    def __init__(self, config: UNet3DConfig, conv_in_channels: int | None = None):
        super().__init__()
        config.validate()
        self.config = cfg = config
        ch = cfg.block_out_channels
        temb = ch[0] * 4
        head_dims = cfg.per_level("attention_head_dim")
        self.conv_in = nn.Conv2d(conv_in_channels or cfg.in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepMLP(ch[0], temb, cfg.time_cond_proj_dim)
        self.transformer_in = TemporalTransformer(ch[0], 8, head_dims[0], cfg.norm_num_groups,
                                                 max_positions=cfg.frame_positions)

        down, up = unet_levels(ch, cfg.per_level("layers_per_block"))
        self.down_blocks = nn.ModuleList(
            Block3D(lv.in_channels, lv.out_channels, temb, lv.layers, cfg, head_dims[lv.index],
                    kind == "CrossAttnDownBlock3D", downsample=lv.resample)
            for lv, kind in zip(down, cfg.down_block_types)
        )
        self.mid_block = MidBlock3D(ch[-1], temb, cfg, head_dims[-1])
        self.up_blocks = nn.ModuleList(
            Block3D(lv.in_channels, lv.out_channels, temb, lv.layers, cfg, head_dims[lv.index],
                    kind == "CrossAttnUpBlock3D", skip_channels=lv.skip_channels, upsample=lv.resample)
            for lv, kind in zip(up, cfg.up_block_types)
        )

        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, ch[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)
        self.freeu: FreeU | None = None

    # -- forward ------------------------------------------------------------------------------
    def time_features(self, t, batch: int, device) -> torch.Tensor:
        """Scalar or (batch,) values -> (batch, c0) sinusoidal features in the model dtype."""
        return timestep_features(t, batch, self.config.block_out_channels[0], device).to(self.dtype)

    def time_embed(self, timestep, batch: int, device, cond=None) -> torch.Tensor:
        return self.time_embedding(self.time_features(timestep, batch, device), cond)

    @fp32_compute
    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                timestep_cond: torch.Tensor | None = None,
                down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
                mid_block_additional_residual: torch.Tensor | None = None) -> torch.Tensor:
        # sample: b c f h w ; encoder_hidden_states: b m d
        temb = self.time_embed(timestep, sample.shape[0], sample.device, timestep_cond)
        return self.backbone(sample, temb, encoder_hidden_states, down_block_additional_residuals,
                             mid_block_additional_residual)

    def backbone(self, sample: torch.Tensor, temb: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 down_block_additional_residuals=None, mid_block_additional_residual=None) -> torch.Tensor:
        """Everything after the embeddings: sample b c f h w, temb b d, context b m d -> b c_out f h w."""
        f = sample.shape[2]
        temb = temb.repeat_interleave(f, dim=0)  # (b f) d
        context = encoder_hidden_states  # b m d: shared by each video's frames (see nn.attention.Attention)

        x = self.conv_in(rearrange(sample, "b c f h w -> (b f) c h w"))
        x = block_runner(self)(self.transformer_in, x, f)

        def layer(block, i, x):
            return block.layer(i, x, temb, context, f)

        x = walk(self, x, layer, lambda x: self.mid_block(x, temb, context, f), down_block_additional_residuals,
                 mid_block_additional_residual)
        x = self.conv_out(F.silu(self.conv_norm_out(x)))
        return rearrange(x, "(b f) c h w -> b c f h w", f=f)
