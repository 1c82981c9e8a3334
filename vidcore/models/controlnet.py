"""ControlNet for Stable Diffusion 1.x / 2.x (diffusers' ``ControlNetModel``; lllyasviel's ControlNet).

A trainable copy of the SD UNet's encoder half reads the noisy latents plus an image condition (a pose
skeleton, Canny edges, ...) and returns one residual per UNet skip feature and one for the mid block; the
UNet adds them (``UNet2D.forward(down_block_additional_residuals=..., mid_block_additional_residual=...)``).

    condition b 3 H W --conditioning embedding (conv stack, /8)--+
    latents   b 4 h w --conv_in---------------------------------(+)--> down levels --> mid block
                  every skip feature --1x1 zero conv--> down residual i ; mid --1x1 zero conv--> mid residual

The down levels and the mid block are UNet2D's own blocks (:class:`~vidcore.models.unet2d.Block2D`,
:class:`~vidcore.models.unet2d.MidBlock2D`), built from the same config, so a ControlNet's encoder has
exactly the names and shapes of the UNet it was copied from.

Residual scaling: every residual is multiplied by ``conditioning_scale``; with ``guess_mode`` the scales
instead grow geometrically from 0.1 (first skip) to 1.0 (mid block), times ``conditioning_scale``; models
with ``global_pool_conditions`` (the "shuffle" ControlNet) average each residual over its pixels.

Layout: ``n c h w`` (``n`` = batch, or batch x frames for video pipelines).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.checkpointing import GradientCheckpointingMixin, block_runner
from ..nn.embeddings import TimestepMLP, timestep_features
from ..nn.layerwise_casting import layer_dtype
from ..nn.processors import AttentionProcessorMixin
from .config_utils import DiffusersConfig
from .options import AttentionSlicingMixin, FusedQKVMixin, GroupOffloadMixin, LayerwiseCastingMixin
from .pretrained import PretrainedMixin
from .unet2d import DOWN_TYPES, Block2D, MidBlock2D, UNet2D, UNet2DConfig
from .unet_layout import down_path, unet_levels

# diffusers ControlNetModel options outside the SD1.x/SD2.x ControlNets, with the only value vidcore accepts.
_FIXED_OPTIONS = {
    "num_attention_heads": None,
    "class_embed_type": None,
    "num_class_embeds": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "resnet_time_scale_shift": "default",
    "projection_class_embeddings_input_dim": None,
}
CHANNEL_ORDERS = ("rgb", "bgr")


@dataclass(frozen=True)
class ControlNetConfig(DiffusersConfig):
    diffusers_class, label = "ControlNetModel", "ControlNet config"
    fixed_options = _FIXED_OPTIONS
    fixed_reason = "vidcore's ControlNet covers the Stable Diffusion 1.x/2.x ControlNets"

    in_channels: int = 4
    conditioning_channels: int = 3
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    only_cross_attention: bool | tuple[bool, ...] = False
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1280
    transformer_layers_per_block: int | tuple[int, ...] = 1
    attention_head_dim: int | tuple[int, ...] = 8  # the head count per level (diffusers' naming)
    use_linear_projection: bool = False  # checkpoint layout only (1x1 conv vs linear projections)
    upcast_attention: bool = False
    controlnet_conditioning_channel_order: str = "rgb"
    conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256)
    global_pool_conditions: bool = False

    @classmethod
    def diffusers_values(cls, config: dict) -> dict:
        values = super().diffusers_values(config)
        if "mid_block_type" in values and values["mid_block_type"] is None:
            raise ValueError("ControlNet config: mid_block_type=None is not supported")
        if values.get("conditioning_embedding_out_channels", ()) is None:
            values.pop("conditioning_embedding_out_channels")
        return values

    def unet_config(self) -> UNet2DConfig:
        """The UNet2D config whose encoder half this ControlNet copies (up blocks mirror the down blocks)."""
        ups = tuple("CrossAttnUpBlock2D" if t == "CrossAttnDownBlock2D" else "UpBlock2D"
                    for t in reversed(self.down_block_types))
        shared = {f.name: getattr(self, f.name) for f in fields(UNet2DConfig) if hasattr(self, f.name)}
        return UNet2DConfig(**{**shared, "up_block_types": ups, "out_channels": self.in_channels})

    def validate(self) -> None:
        if not isinstance(self.layers_per_block, int):
            raise ValueError(f"ControlNet config: layers_per_block must be one int, got {self.layers_per_block!r}")
        if not isinstance(self.cross_attention_dim, int):
            raise ValueError(f"ControlNet config: cross_attention_dim must be one int, got {self.cross_attention_dim!r}")
        for t in self.down_block_types:
            if t not in DOWN_TYPES:
                raise ValueError(f"ControlNet config: unknown down block type {t!r}; supported: {DOWN_TYPES}")
        if self.controlnet_conditioning_channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"ControlNet config: controlnet_conditioning_channel_order must be one of "
                             f"{CHANNEL_ORDERS}, got {self.controlnet_conditioning_channel_order!r}")
        if len(self.conditioning_embedding_out_channels) < 1:
            raise ValueError("ControlNet config: conditioning_embedding_out_channels needs at least one entry")
        self.unet_config().validate()


class ConditioningEmbedding(nn.Module):
    """Image condition b c H W -> b c0 H/2^k W/2^k features: a 3x3 conv, then per width step a 3x3 conv
    and a stride-2 3x3 conv (SiLU after each), then a 3x3 output conv (zero-initialised in training)."""

    def __init__(self, in_channels: int, out_channels: int, widths: tuple[int, ...]):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for cin, cout in zip(widths[:-1], widths[1:]):
            self.blocks.append(nn.Conv2d(cin, cin, 3, padding=1))
            self.blocks.append(nn.Conv2d(cin, cout, 3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv_in(x))
        for conv in self.blocks:
            h = F.silu(conv(h))
        return self.conv_out(h)


class ControlNetOutput(NamedTuple):
    """``down_block_res_samples``: one residual per UNet skip feature (n c h w each); ``mid_block_res_sample``."""

    down_block_res_samples: tuple[torch.Tensor, ...]
    mid_block_res_sample: torch.Tensor


def residual_channels(model: nn.Module) -> tuple[list[int], int]:
    """(channels of every down-path feature, mid-block channels) of a UNet2D or ControlNet, from its modules."""
    down = [model.conv_in.out_channels]
    for block in model.down_blocks:
        down += [res.conv2.out_channels for res in block.resnets]
        if block.downsample is not None:
            down.append(block.downsample.conv.out_channels)
    return down, model.mid_block.resnets[-1].conv2.out_channels


class ControlNet(PretrainedMixin, AttentionProcessorMixin, AttentionSlicingMixin, FusedQKVMixin, GroupOffloadMixin,
                 LayerwiseCastingMixin, GradientCheckpointingMixin, nn.Module):
    """``forward(sample n c h w, timestep, encoder_hidden_states n m d, controlnet_cond n 3 H W)`` ->
    :class:`ControlNetOutput` (H, W = 8 h, 8 w for SD's conditioning embedding)."""

    def __init__(self, config: ControlNetConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        ucfg = cfg.unet_config()
        ch, heads = ucfg.block_out_channels, ucfg.heads()
        t_layers = ucfg.per_level("transformer_layers_per_block")
        down, _ = unet_levels(ch, ucfg.per_level("layers_per_block"))
        temb = 4 * ch[0]
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepMLP(ch[0], temb)
        self.controlnet_cond_embedding = ConditioningEmbedding(cfg.conditioning_channels, ch[0],
                                                               cfg.conditioning_embedding_out_channels)
        self.down_blocks = nn.ModuleList(
            Block2D(lv.in_channels, lv.out_channels, temb, lv.layers, ucfg, heads[lv.index], cfg.cross_attention_dim,
                    t_layers[lv.index], kind == "CrossAttnDownBlock2D", downsample=lv.resample)
            for lv, kind in zip(down, cfg.down_block_types)
        )
        self.mid_block = MidBlock2D(ch[-1], temb, ucfg, heads[-1], cfg.cross_attention_dim, t_layers[-1])
        # zero convs: one 1x1 conv per skip feature, one for the mid block
        down, mid = residual_channels(self)
        self.controlnet_down_blocks = nn.ModuleList(nn.Conv2d(c, c, 1) for c in down)
        self.controlnet_mid_block = nn.Conv2d(mid, mid, 1)

    @property
    def dtype(self) -> torch.dtype:
        return layer_dtype(self.conv_in)

    def check_compatible(self, unet: UNet2D) -> None:
        """Raise a ValueError unless this ControlNet's residuals fit ``unet`` (skip count and widths, latent and
        text widths)."""
        mine, theirs = residual_channels(self), residual_channels(unet)
        problems = []
        if mine != theirs:
            problems.append(f"residual channels (skips, mid) {mine} vs the UNet's {theirs}")
        if self.config.in_channels != unet.config.in_channels:
            problems.append(f"in_channels {self.config.in_channels} vs the UNet's {unet.config.in_channels}")
        ctx = unet.config.per_level("cross_attention_dim")
        if any(c != self.config.cross_attention_dim for c in ctx):
            problems.append(f"cross_attention_dim {self.config.cross_attention_dim} vs the UNet's "
                            f"{unet.config.cross_attention_dim}")
        if problems:
            raise ValueError("controlnet does not fit the unet (was it trained for another base model?): "
                             + "; ".join(problems))

    def time_embed(self, timestep, batch: int, device) -> torch.Tensor:
        cfg = self.config
        feats = timestep_features(timestep, batch, cfg.block_out_channels[0], device, cfg.flip_sin_to_cos, cfg.freq_shift)
        return self.time_embedding(feats.to(self.dtype))

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                controlnet_cond: torch.Tensor, conditioning_scale: float = 1.0, guess_mode: bool = False) -> ControlNetOutput:
        # sample: n c h w ; encoder_hidden_states: n m d ; controlnet_cond: n c_cond (8h) (8w)
        if controlnet_cond.shape[0] != sample.shape[0]:
            raise ValueError(f"controlnet_cond has {controlnet_cond.shape[0]} images for a batch of {sample.shape[0]}")
        if controlnet_cond.shape[1] != self.config.conditioning_channels:
            raise ValueError(f"controlnet_cond has {controlnet_cond.shape[1]} channels; this ControlNet takes "
                             f"{self.config.conditioning_channels}")
        if self.config.controlnet_conditioning_channel_order == "bgr":
            controlnet_cond = controlnet_cond.flip(1)
        temb = self.time_embed(timestep, sample.shape[0], sample.device)
        hint = self.controlnet_cond_embedding(controlnet_cond)
        h = self.conv_in(sample)
        if hint.shape[-2:] != h.shape[-2:]:
            raise ValueError(f"controlnet_cond of size {tuple(controlnet_cond.shape[-2:])} embeds to "
                             f"{tuple(hint.shape[-2:])}, but the latents are {tuple(h.shape[-2:])}: the condition "
                             f"image must be the generated image's size")
        h = h + hint

        run = block_runner(self)
        h, skips = down_path(self.down_blocks, h, lambda block, i, x: block.layer(i, x, temb, encoder_hidden_states),
                             run=run)
        h = run(self.mid_block, h, temb, encoder_hidden_states)
        return self.residuals(skips, h, conditioning_scale, guess_mode)

    def residuals(self, skips: list[torch.Tensor], h: torch.Tensor, conditioning_scale: float,
                  guess_mode: bool) -> ControlNetOutput:
        """The zero convs on the skip features and the mid-block output, scaled (see the module docstring)."""
        down = [zero(s) for zero, s in zip(self.controlnet_down_blocks, skips)]
        mid = self.controlnet_mid_block(h)
        if guess_mode and not self.config.global_pool_conditions:
            scales = torch.logspace(-1, 0, len(down) + 1, device=h.device) * conditioning_scale  # 0.1 .. 1
            down = [r * s for r, s in zip(down, scales)]
            mid = mid * scales[-1]
        else:
            down = [r * conditioning_scale for r in down]
            mid = mid * conditioning_scale
        if self.config.global_pool_conditions:
            down = [r.mean(dim=(2, 3), keepdim=True) for r in down]
            mid = mid.mean(dim=(2, 3), keepdim=True)
        return ControlNetOutput(tuple(down), mid)


class MultiControlNet(LayerwiseCastingMixin, nn.Module):
    """Several ControlNets on one UNet (diffusers' ``MultiControlNetModel``): each sees its own condition
    images at its own scale, and their residuals are summed."""

    def __init__(self, nets):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        if len(self.nets) < 2:
            raise ValueError("MultiControlNet takes two or more ControlNets (use the ControlNet itself for one)")

    @property
    def dtype(self) -> torch.dtype:
        return self.nets[0].dtype

    def check_compatible(self, unet) -> None:
        for net in self.nets:
            net.check_compatible(unet)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                controlnet_cond: list[torch.Tensor], conditioning_scale: list[float],
                guess_mode: bool = False) -> ControlNetOutput:
        down, mid = None, None
        for net, cond, scale in zip(self.nets, controlnet_cond, conditioning_scale, strict=True):
            d, m = net(sample, timestep, encoder_hidden_states, cond, conditioning_scale=scale, guess_mode=guess_mode)
            down = list(d) if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        return ControlNetOutput(tuple(down), mid)
