"""Stable Diffusion 1.x / 2.x / XL image UNet (diffusers' ``UNet2DConditionModel``, SD-family configs).

conv_in -> down levels [res block (+ spatial transformer)] x layers, downsample -> mid block
(res, transformer, res) -> up levels [concat skip, res block (+ transformer)] x (layers + 1), upsample
-> GroupNorm, SiLU, conv_out. The time embedding (sinusoidal features -> MLP) feeds every res block;
the transformers cross-attend to the text tokens. SDXL is the same network with other settings (three
levels, linear projections, 1/2/10 transformer layers, 2048-wide context) plus one extra conditioning
input, ``addition_embed_type="text_time"``: the pooled text embedding and the sinusoidal features of
the six size/crop micro-conditioning numbers (``time_ids``) go through a second MLP (``add_embedding``)
whose output is added to the time embedding.

Video models reuse this network unchanged: :class:`~vidcore.models.motion.UNetMotion` (AnimateDiff)
runs it on frames folded into the batch and inserts a temporal mixer after every layer through the
``mixer`` hook of :meth:`UNet2D.body`; ControlNet adds its residuals through
``down_block_additional_residuals`` / ``mid_block_additional_residual``.

Layout: ``n c h w`` latents (``n`` = batch, or batch x frames for video models).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.checkpointing import GradientCheckpointingMixin
from ..nn.cpu_bf16 import fp32_compute
from ..nn.embeddings import TimestepMLP, sinusoidal_embedding, timestep_features
from ..nn.processors import AttentionProcessorMixin
from ..nn.resnet import ResBlock2D
from ..nn.resample import Downsample, Upsample
from ..nn.transformer import SpatialTransformer
from .config_utils import DiffusersConfig
from .freeu import FreeU
from .ip_adapter import image_prompt_context
from .options import GroupOffloadMixin, LayerwiseCastingMixin, UNetOptionsMixin
from .pretrained import PretrainedMixin
from .unet_layout import Mixer, unet_levels, walk

DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_TYPES = ("UNetMidBlock2DCrossAttn",)

# diffusers UNet2DConditionModel options outside the SD1.x/SD2.x family, with the only value vidcore
# accepts (their diffusers defaults). Anything else is refused with a message naming the key.
_FIXED_OPTIONS = {
    "num_attention_heads": None,
    "dual_cross_attention": False,
    "class_embed_type": None,
    "num_class_embeds": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "time_embedding_type": "positional",
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
    "reverse_transformer_layers_per_block": None,
}


@dataclass(frozen=True)
class UNet2DConfig(DiffusersConfig):
    diffusers_class, label = "UNet2DConditionModel", "UNet2D config"
    fixed_options = _FIXED_OPTIONS
    fixed_reason = "vidcore's UNet2D covers the Stable Diffusion 1.x/2.x/XL UNet"

    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    only_cross_attention: bool | tuple[bool, ...] = False
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int | tuple[int, ...] = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    dropout: float = 0.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int | tuple[int, ...] = 1280
    transformer_layers_per_block: int | tuple[int, ...] = 1
    # diffusers' naming bug: this is the number of heads per level (SD1.5: 8; SD2: [5, 10, 20, 20]).
    attention_head_dim: int | tuple[int, ...] = 8
    use_linear_projection: bool = False  # only changes the checkpoint layout (1x1 conv vs linear)
    # Accepted for SD2.x configs; the attention backends already accumulate softmax in float32.
    upcast_attention: bool = False
    time_embedding_dim: int | None = None
    time_cond_proj_dim: int | None = None
    # SDXL micro-conditioning: "text_time" adds add_embedding(cat(pooled text, features(time_ids)))
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None  # sinusoidal features per time id
    projection_class_embeddings_input_dim: int | None = None  # pooled text width + 6 x addition_time_embed_dim
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    sample_size: int | tuple[int, ...] | None = None

    @classmethod
    def diffusers_values(cls, config: dict) -> dict:
        values = super().diffusers_values(config)
        if values.get("mid_block_type", "UNetMidBlock2DCrossAttn") is None:
            raise ValueError("UNet2D config: mid_block_type=None (no mid block) is not supported")
        return values

    def heads(self) -> tuple[int, ...]:
        return self.per_level("attention_head_dim")

    def validate(self) -> None:
        self.check_blocks(DOWN_TYPES, UP_TYPES)
        if self.mid_block_type not in MID_TYPES:
            raise ValueError(f"UNet2D config: mid_block_type {self.mid_block_type!r} is not supported; "
                             f"supported: {MID_TYPES}")
        if any(self.per_level("only_cross_attention")):
            raise ValueError("UNet2D config: only_cross_attention=True is not supported")
        for name in ("layers_per_block", "cross_attention_dim", "transformer_layers_per_block"):
            self.per_level(name, ints=True)
        for ch, heads in zip(self.block_out_channels, self.heads()):
            if ch % heads:
                raise ValueError(f"UNet2D config: {ch} channels do not split into {heads} attention heads")
        if self.addition_embed_type not in (None, "text_time"):
            raise ValueError(f"UNet2D config: addition_embed_type={self.addition_embed_type!r} is not supported; "
                             "supported: None, 'text_time' (SDXL)")
        if self.addition_embed_type == "text_time":
            for name in ("addition_time_embed_dim", "projection_class_embeddings_input_dim"):
                if not isinstance(getattr(self, name), int):
                    raise ValueError(f"UNet2D config: addition_embed_type='text_time' needs {name} (an int), "
                                     f"got {getattr(self, name)!r}")
        for k in (self.conv_in_kernel, self.conv_out_kernel):
            if k % 2 == 0:
                raise ValueError(f"UNet2D config: conv kernel sizes must be odd, got {k}")


class Block2D(nn.Module):
    """One UNet level: ``layers`` x (res block[, spatial transformer]), then a down- or upsampler.

    Up blocks concatenate a skip connection before each res block (``skip_channels``).
    """

    def __init__(self, in_channels: int, out_channels: int, temb: int, layers: int, cfg: UNet2DConfig,
                 heads: int, context_dim: int, transformer_layers: int, attention: bool,
                 skip_channels: tuple[int, ...] = (), downsample: bool = False, upsample: bool = False):
        super().__init__()
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        self.resnets = nn.ModuleList()
        for i in range(layers):
            cin = (in_channels if i == 0 else out_channels) + (skip_channels[i] if skip_channels else 0)
            self.resnets.append(ResBlock2D(cin, out_channels, temb, g, eps, cfg.dropout))
        self.attentions = nn.ModuleList(
            SpatialTransformer(out_channels, heads, out_channels // heads, context_dim, g, transformer_layers)
            for _ in range(layers if attention else 0)
        )
        self.downsample = Downsample(out_channels, padding=cfg.downsample_padding) if downsample else None
        self.upsample = Upsample(out_channels) if upsample else None

    def layer(self, i: int, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.resnets[i](x, temb)
        return self.attentions[i](x, context) if self.attentions else x


class MidBlock2D(nn.Module):
    """res -> [spatial transformer -> (mixer) -> res]."""

    def __init__(self, channels: int, temb: int, cfg: UNet2DConfig, heads: int, context_dim: int,
                 transformer_layers: int):
        super().__init__()
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        self.resnets = nn.ModuleList(
            ResBlock2D(channels, channels, temb, g, eps, cfg.dropout, cfg.mid_block_scale_factor) for _ in range(2)
        )
        self.attentions = nn.ModuleList(
            [SpatialTransformer(channels, heads, channels // heads, context_dim, g, transformer_layers)]
        )

    def forward(self, x, temb, context, mixer: Mixer | None = None) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        for j, (attn, res) in enumerate(zip(self.attentions, self.resnets[1:])):
            x = attn(x, context)
            if mixer is not None:
                x = mixer("mid", 0, j, x)
            x = res(x, temb)
        return x


class UNet2D(PretrainedMixin, UNetOptionsMixin, GroupOffloadMixin, AttentionProcessorMixin, LayerwiseCastingMixin,
             GradientCheckpointingMixin, nn.Module):
    """SD / SDXL UNet. ``forward(sample n c h w, timestep, encoder_hidden_states n m d) -> n c_out h w``."""

    def __init__(self, config: UNet2DConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        ch = cfg.block_out_channels
        heads = cfg.heads()
        layers = cfg.per_level("layers_per_block")
        context = cfg.per_level("cross_attention_dim")
        t_layers = cfg.per_level("transformer_layers_per_block")
        temb = cfg.time_embedding_dim or 4 * ch[0]
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], cfg.conv_in_kernel, padding=cfg.conv_in_kernel // 2)
        self.time_embedding = TimestepMLP(ch[0], temb, cfg.time_cond_proj_dim)
        self.add_embedding = (TimestepMLP(cfg.projection_class_embeddings_input_dim, temb)
                              if cfg.addition_embed_type == "text_time" else None)

        down, up = unet_levels(ch, layers)
        self.down_blocks = nn.ModuleList(
            Block2D(lv.in_channels, lv.out_channels, temb, lv.layers, cfg, heads[lv.index], context[lv.index],
                    t_layers[lv.index], kind == "CrossAttnDownBlock2D", downsample=lv.resample)
            for lv, kind in zip(down, cfg.down_block_types)
        )
        self.mid_block = MidBlock2D(ch[-1], temb, cfg, heads[-1], context[-1], t_layers[-1])
        self.up_blocks = nn.ModuleList(
            Block2D(lv.in_channels, lv.out_channels, temb, lv.layers, cfg, heads[lv.index], context[lv.index],
                    t_layers[lv.index], kind == "CrossAttnUpBlock2D", skip_channels=lv.skip_channels,
                    upsample=lv.resample)
            for lv, kind in zip(up, cfg.up_block_types)
        )

        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, ch[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, cfg.conv_out_kernel, padding=cfg.conv_out_kernel // 2)
        self.freeu: FreeU | None = None

    # -- pieces (video models call these) -----------------------------------------------------
    def time_embed(self, timestep, batch: int, device, cond: torch.Tensor | None = None,
                   added_cond_kwargs: dict | None = None) -> torch.Tensor:
        """Scalar or (batch,) timesteps -> (batch, temb) embedding in the model dtype.

        SDXL (``addition_embed_type="text_time"``): ``added_cond_kwargs`` holds ``text_embeds`` (batch, d_pooled)
        and ``time_ids`` (batch, 6); their embedding is added."""
        cfg = self.config
        feats = timestep_features(timestep, batch, cfg.block_out_channels[0], device, cfg.flip_sin_to_cos, cfg.freq_shift)
        emb = self.time_embedding(feats.to(self.dtype), cond)
        if self.add_embedding is not None:
            emb = emb + self.add_embedding(self.micro_conditioning(added_cond_kwargs).to(emb.dtype))
        return emb

    def micro_conditioning(self, added_cond_kwargs: dict | None) -> torch.Tensor:
        """SDXL's extra input: cat(pooled text embedding n d, sinusoidal features of each time id) -> n D."""
        cfg = self.config
        missing = [k for k in ("text_embeds", "time_ids") if k not in (added_cond_kwargs or {})]
        if missing:
            raise ValueError(f"this UNet has addition_embed_type='text_time' (SDXL) and needs added_cond_kwargs "
                             f"with {missing} (pooled text embeddings and the size/crop time ids)")
        text, ids = added_cond_kwargs["text_embeds"], added_cond_kwargs["time_ids"]
        feats = sinusoidal_embedding(ids.flatten(), cfg.addition_time_embed_dim, cfg.flip_sin_to_cos, cfg.freq_shift)
        feats = feats.reshape(text.shape[0], -1)
        if text.shape[1] + feats.shape[1] != cfg.projection_class_embeddings_input_dim:
            raise ValueError(f"added_cond_kwargs: text_embeds width {text.shape[1]} + {feats.shape[1]} time-id "
                             f"features != projection_class_embeddings_input_dim="
                             f"{cfg.projection_class_embeddings_input_dim}")
        return torch.cat([text.to(feats.dtype), feats], dim=-1)

    def prepare_input(self, sample: torch.Tensor) -> torch.Tensor:
        return 2 * sample - 1.0 if self.config.center_input_sample else sample

    def num_skips(self) -> int:
        """How many down-path feature maps ControlNet residuals must provide."""
        return 1 + sum(len(b.resnets) + (b.downsample is not None) for b in self.down_blocks)

    def body(self, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor,
             down_block_additional_residuals=None, mid_block_additional_residual=None,
             mixer: Mixer | None = None) -> torch.Tensor:
        """Everything between conv_in and the output norm: h n c0 h w, temb n d, context n m d -> n c0 h w.

        ``mixer(part, level, layer, x)`` runs after every (res block[, transformer]) layer of the down
        and up paths and after the mid block's transformer (AnimateDiff's motion modules go there)."""
        if (down_block_additional_residuals is None) != (mid_block_additional_residual is None):
            raise ValueError("ControlNet residuals come in pairs: pass both down_block_additional_residuals and "
                             "mid_block_additional_residual, or neither")

        def layer(block, i, x):
            return block.layer(i, x, temb, context)

        return walk(self, h, layer, lambda h: self.mid_block(h, temb, context, mixer), down_block_additional_residuals,
                    mid_block_additional_residual, mixer)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.conv_norm_out(h)))

    # -- forward ------------------------------------------------------------------------------
    @fp32_compute
    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                timestep_cond: torch.Tensor | None = None,
                down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
                mid_block_additional_residual: torch.Tensor | None = None, image_embeds=None,
                added_cond_kwargs: dict | None = None) -> torch.Tensor:
        """``image_embeds``: with IP-Adapters loaded (:mod:`vidcore.models.ip_adapter`), one image-encoder output
        per adapter (diffusers' ``added_cond_kwargs["image_embeds"]``). ``added_cond_kwargs`` (SDXL UNets):
        ``text_embeds`` n d and ``time_ids`` n 6."""
        # sample: n c h w ; encoder_hidden_states: n m d
        if image_embeds is not None:
            encoder_hidden_states = image_prompt_context(self, encoder_hidden_states, image_embeds)
        temb = self.time_embed(timestep, sample.shape[0], sample.device, timestep_cond, added_cond_kwargs)
        h = self.conv_in(self.prepare_input(sample))
        h = self.body(h, temb, encoder_hidden_states, down_block_additional_residuals, mid_block_additional_residual)
        return self.head(h)
