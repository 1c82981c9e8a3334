"""SparseCtrl (Guo et al., "SparseCtrl: Adding Sparse Controls to Text-to-Video Diffusion Models",
arXiv:2311.16933; diffusers' ``SparseControlNetModel``): a ControlNet for AnimateDiff that takes control images
for a few frames only (a scribble or an RGB keyframe at frame 0, say) and spreads them over the video.

It is :class:`~vidcore.models.controlnet.ControlNet` (the SD encoder half, zero convs, residual scaling) with
three changes:

* a motion module after every down-level layer (AnimateDiff's temporal transformer with frame positions but a
  single self-attention per block), so the sparse condition propagates across frames inside the ControlNet;
* the noisy latents are not read (zeros go in, as the released models were trained): the ControlNet sees only
  the condition and the timestep and text;
* the condition of every frame is its control image (zeros where none is given) plus a mask channel saying
  which frames have one (``concat_conditioning_mask``); the RGB variant takes VAE latents of the keyframes and
  embeds them with one (zero-initialised) 3x3 conv (``use_simplified_condition_embedding``), the scribble
  variant the usual conv stack on pixels.

Layout: ``sample`` ``b c f h w``; ``controlnet_cond`` ``b c f H W`` (H = h for the RGB variant, 8 h for
scribbles); ``conditioning_mask`` ``b 1 f H W``; residuals per frame ``(b f) c h w``, as the UNet takes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from ..nn.checkpointing import block_runner
from ..nn.embeddings import timestep_features
from ..nn.transformer import TemporalTransformer
from .config_utils import DiffusersConfig
from .controlnet import ControlNet, ControlNetConfig, ControlNetOutput
from .unet_layout import down_path

MOTION_TYPES = {"CrossAttnDownBlockMotion": "CrossAttnDownBlock2D", "DownBlockMotion": "DownBlock2D"}
_FIXED_OPTIONS = {"transformer_layers_per_mid_block": None, "resnet_time_scale_shift": "default",
                  "only_cross_attention": False}


@dataclass(frozen=True)
class SparseControlNetConfig(DiffusersConfig):
    diffusers_class, label = "SparseControlNetModel", "SparseControlNet config"
    fixed_options = _FIXED_OPTIONS
    fixed_reason = "vidcore's SparseControlNet covers the released SparseCtrl models"

    in_channels: int = 4
    conditioning_channels: int = 4  # without the mask channel
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlockMotion",) * 3 + ("DownBlockMotion",)
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 768
    transformer_layers_per_block: int | tuple[int, ...] = 1
    temporal_transformer_layers_per_block: int | tuple[int, ...] = 1
    attention_head_dim: int | tuple[int, ...] = 8  # the head count per level (diffusers' naming)
    num_attention_heads: int | tuple[int, ...] | None = None  # wins over attention_head_dim when given
    use_linear_projection: bool = False  # checkpoint layout only (1x1 conv vs linear projections)
    upcast_attention: bool = False
    conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256)
    global_pool_conditions: bool = False
    controlnet_conditioning_channel_order: str = "rgb"
    motion_max_seq_length: int = 32
    motion_num_attention_heads: int | tuple[int, ...] = 8
    concat_conditioning_mask: bool = True
    use_simplified_condition_embedding: bool = True

    def controlnet_config(self) -> ControlNetConfig:
        """The ControlNet whose spatial blocks and zero convs this model has (motion blocks as their 2D kind)."""
        unknown = [t for t in self.down_block_types if t not in MOTION_TYPES]
        if unknown:
            raise ValueError(f"{self.label}: unknown down block types {unknown}; supported: {sorted(MOTION_TYPES)}")
        heads = self.num_attention_heads if self.num_attention_heads is not None else self.attention_head_dim
        return ControlNetConfig(
            in_channels=self.in_channels,
            conditioning_channels=self.conditioning_channels + int(self.concat_conditioning_mask),
            flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift,
            down_block_types=tuple(MOTION_TYPES[t] for t in self.down_block_types),
            block_out_channels=tuple(self.block_out_channels), layers_per_block=self.layers_per_block,
            downsample_padding=self.downsample_padding, mid_block_scale_factor=self.mid_block_scale_factor,
            act_fn=self.act_fn, norm_num_groups=self.norm_num_groups, norm_eps=self.norm_eps,
            cross_attention_dim=self.cross_attention_dim, transformer_layers_per_block=self.transformer_layers_per_block,
            attention_head_dim=heads, use_linear_projection=self.use_linear_projection,
            upcast_attention=self.upcast_attention,
            controlnet_conditioning_channel_order=self.controlnet_conditioning_channel_order,
            conditioning_embedding_out_channels=tuple(self.conditioning_embedding_out_channels),
            global_pool_conditions=self.global_pool_conditions)

    def validate(self) -> None:
        self.controlnet_config().validate()
        for name in ("temporal_transformer_layers_per_block", "motion_num_attention_heads"):
            self.per_level(name, len(self.block_out_channels), ints=True)
        if self.motion_max_seq_length < 1:
            raise ValueError(f"{self.label}: motion_max_seq_length must be >= 1, got {self.motion_max_seq_length}")


class SparseControlNet(ControlNet):
    """``forward(sample b c f h w, timestep, encoder_hidden_states, controlnet_cond b c f H W,
    conditioning_mask b 1 f H W)`` -> :class:`~vidcore.models.controlnet.ControlNetOutput` per frame."""

    def __init__(self, config: SparseControlNetConfig):
        config.validate()
        super().__init__(config.controlnet_config())
        self.config = cfg = config
        ch = cfg.block_out_channels
        if cfg.use_simplified_condition_embedding:  # RGB keyframes as VAE latents: one conv
            self.controlnet_cond_embedding = nn.Conv2d(cfg.conditioning_channels + int(cfg.concat_conditioning_mask),
                                                       ch[0], 3, padding=1)
        heads = cfg.per_level("motion_num_attention_heads", len(ch))
        layers = cfg.per_level("temporal_transformer_layers_per_block", len(ch))
        self.motion_modules = nn.ModuleList(  # [level][layer], after each res block (+ spatial transformer)
            nn.ModuleList(TemporalTransformer(ch[i], heads[i], ch[i] // heads[i], cfg.norm_num_groups, layers[i],
                                              max_positions=cfg.motion_max_seq_length, second_attention=False)
                          for _ in range(cfg.layers_per_block))
            for i in range(len(ch)))

    @property
    def max_frames(self) -> int:
        return self.config.motion_max_seq_length

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                controlnet_cond: torch.Tensor, conditioning_mask: torch.Tensor | None = None,
                conditioning_scale: float = 1.0, guess_mode: bool = False) -> ControlNetOutput:
        # sample: b c f h w ; encoder_hidden_states: (b f) m d or b m d ; controlnet_cond: b' c f H W (b' 1 or b)
        if sample.ndim != 5:
            raise ValueError(f"SparseControlNet takes latents shaped (batch, channels, frames, height, width), got "
                             f"{tuple(sample.shape)}")
        b, _, f, h, w = sample.shape
        if f > self.max_frames:
            raise ValueError(f"{f} frames exceed the SparseControlNet's motion_max_seq_length={self.max_frames}")
        cfg = self.config
        if cfg.concat_conditioning_mask:
            if conditioning_mask is None:
                raise ValueError("this SparseControlNet takes a conditioning_mask (which frames have a condition)")
            controlnet_cond = torch.cat([controlnet_cond, conditioning_mask], dim=1)
        if controlnet_cond.shape[1] != self.controlnet_config_channels:
            raise ValueError(f"controlnet_cond has {controlnet_cond.shape[1]} channels (with the mask); this "
                             f"SparseControlNet takes {self.controlnet_config_channels}")
        if controlnet_cond.shape[2] != f or controlnet_cond.shape[0] not in (1, b):
            raise ValueError(f"controlnet_cond of shape {tuple(controlnet_cond.shape)} does not fit {b} videos of "
                             f"{f} frames")
        if cfg.controlnet_conditioning_channel_order == "bgr":
            controlnet_cond = controlnet_cond.flip(1)
        feats = timestep_features(timestep, b, cfg.block_out_channels[0], sample.device, cfg.flip_sin_to_cos,
                                  cfg.freq_shift)
        temb = self.time_embedding(feats.to(self.dtype)).repeat_interleave(f, dim=0)  # (b f) d
        if encoder_hidden_states.shape[0] == b and b != b * f:
            encoder_hidden_states = encoder_hidden_states.repeat_interleave(f, dim=0)  # (b f) m d
        # the released models were trained with the noisy latents zeroed (the original code's
        # set_noisy_sample_input_to_zero; diffusers does the same): the sample only gives the shape
        x = self.conv_in(torch.zeros_like(rearrange(sample, "b c f h w -> (b f) c h w")))
        hint = self.controlnet_cond_embedding(rearrange(controlnet_cond, "b c f h w -> (b f) c h w"))
        if hint.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"controlnet_cond of size {tuple(controlnet_cond.shape[-2:])} embeds to "
                             f"{tuple(hint.shape[-2:])}, but the latents are {tuple(x.shape[-2:])}")
        x = rearrange(x, "(b f) c h w -> b f c h w", f=f) + rearrange(hint, "(b f) c h w -> b f c h w", f=f)
        x = rearrange(x, "b f c h w -> (b f) c h w")

        def mixer(part: str, level: int, layer: int, x: torch.Tensor) -> torch.Tensor:
            return self.motion_modules[level][layer](x, f)

        run = block_runner(self)
        x, skips = down_path(self.down_blocks, x,
                             lambda block, i, y: block.layer(i, y, temb, encoder_hidden_states), mixer, run=run)
        x = run(self.mid_block, x, temb, encoder_hidden_states)
        return self.residuals(skips, x, conditioning_scale, guess_mode)

    @property
    def controlnet_config_channels(self) -> int:
        return self.config.conditioning_channels + int(self.config.concat_conditioning_mask)


__all__ = ["SparseControlNet", "SparseControlNetConfig"]


def add_missing_position_tables(state: dict, config: SparseControlNetConfig, original: bool = False) -> dict:
    """``state`` with the motion modules' frame-position tables added when the file has none at all.

    Why: diffusers' single-file conversion drops these tables (they are fixed sinusoids it recomputes), so some
    hub conversions lack them; any other missing key is left for the loader to report. ``original``: the keys
    in the original SparseCtrl layout instead of diffusers'."""
    from ..nn.embeddings import SinusoidalPositions

    block = ("{p}.temporal_transformer.transformer_blocks.{k}.attention_blocks.0.pos_encoder.pe" if original
             else "{p}.transformer_blocks.{k}.pos_embed.pe")
    if any(k.endswith(".pos_encoder.pe" if original else ".pos_embed.pe") for k in state):
        return state
    layers = config.per_level("temporal_transformer_layers_per_block", len(config.block_out_channels))
    out = dict(state)
    for i, channels in enumerate(config.block_out_channels):
        table = SinusoidalPositions(channels, config.motion_max_seq_length).pe
        for j in range(config.layers_per_block):
            for k in range(layers[i]):
                out[block.format(p=f"down_blocks.{i}.motion_modules.{j}", k=k)] = table
    return out
