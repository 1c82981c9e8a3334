"""AnimateDiff: a motion adapter (temporal transformers) inserted into a Stable Diffusion UNet.

A :class:`MotionAdapter` holds one motion module per UNet layer: ``layers`` per down level,
``layers + 1`` per up level and optionally one after the mid block's transformer (v2 adapters).
Each motion module is a :class:`~vidcore.nn.transformer.TemporalTransformer`: GroupNorm over all
frames, two self-attentions over the frames at every pixel (a sinusoidal frame-position table added
before each) and a GEGLU feed-forward, with a residual around the whole module.

:class:`UNetMotion` runs a :class:`~vidcore.models.unet2d.UNet2D` on frames folded into the batch
and calls the adapter's module after every (res block[, spatial transformer]) layer. It references
the UNet and the adapter instead of copying their weights, so base models and adapters can be swapped
freely (``UNetMotion(other_unet, adapter)`` costs no memory).

Layout: ``b c f h w`` latents in and out; ``(b f) c h w`` inside.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..nn.checkpointing import GradientCheckpointingMixin
from ..nn.cpu_bf16 import fp32_compute
from ..nn.frame_hooks import frame_handler, frame_start
from ..nn.group_offload import onloaded
from ..nn.layerwise_casting import layer_dtype
from ..nn.processors import AttentionProcessorMixin
from ..nn.transformer import TemporalTransformer
from .config_utils import DiffusersConfig
from .ip_adapter import image_prompt_context
from .options import AttentionSlicingMixin, FusedQKVMixin, GroupOffloadMixin, LayerwiseCastingMixin
from .pretrained import PretrainedMixin, UNetMotionPretrainedMixin
from .unet2d import UNet2D

MOTION_ORIGINAL_DESCRIPTION = "AnimateDiff motion module (guoyww/AnimateDiff mm_sd_v15_v2.ckpt, v3_sd15_mm.ckpt)"


@dataclass(frozen=True)
class MotionAdapterConfig(DiffusersConfig):
    diffusers_class, label = "MotionAdapter", "MotionAdapter config"

    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    motion_layers_per_block: int | tuple[int, ...] = 2
    motion_transformer_layers_per_block: int | tuple[int, ...] = 1
    motion_mid_block_layers_per_block: int = 1
    motion_transformer_layers_per_mid_block: int | tuple[int, ...] = 1
    motion_num_attention_heads: int | tuple[int, ...] = 8
    motion_norm_num_groups: int = 32
    motion_max_seq_length: int = 32
    use_motion_mid_block: bool = True
    conv_in_channels: int | None = None  # PIA: the adapter brings its own wider conv_in

    def mid_transformer_layers(self) -> tuple[int, ...]:
        return self.per_level("motion_transformer_layers_per_mid_block", self.motion_mid_block_layers_per_block,
                              "mid-block motion layers")

    def validate(self) -> None:
        for name in ("motion_layers_per_block", "motion_transformer_layers_per_block", "motion_num_attention_heads"):
            self.per_level(name, ints=True)
        self.mid_transformer_layers()
        for ch in self.block_out_channels:
            if ch % self.motion_norm_num_groups:
                raise ValueError(f"MotionAdapter config: {ch} channels do not split into "
                                 f"motion_norm_num_groups={self.motion_norm_num_groups} groups")
        if self.motion_max_seq_length < 1:
            raise ValueError(f"MotionAdapter config: motion_max_seq_length must be >= 1, got {self.motion_max_seq_length}")


def motion_module(channels: int, heads: int, layers: int, cfg: MotionAdapterConfig) -> TemporalTransformer:
    """One AnimateDiff motion module: a temporal transformer with frame positions, ``channels`` wide."""
    return TemporalTransformer(channels, heads, channels // heads, cfg.motion_norm_num_groups, layers,
                               max_positions=cfg.motion_max_seq_length)


class MotionAdapter(PretrainedMixin, FusedQKVMixin, LayerwiseCastingMixin, nn.Module):
    """The motion modules of an AnimateDiff checkpoint, grouped like the UNet levels they plug into.

    ``down_blocks[i][j]``: after layer ``j`` of down level ``i``; ``up_blocks[i][j]``: after layer ``j`` of
    up block ``i`` (deepest first, as the UNet's ``up_blocks``); ``mid_block[0]``: after the mid block's
    transformer (None for v1/v3 adapters); ``conv_in``: PIA's input convolution (or None).
    """

    single_file_component = "motion_adapter"  # from_single_file: an original motion-module file

    def __init__(self, config: MotionAdapterConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        ch = cfg.block_out_channels
        layers = cfg.per_level("motion_layers_per_block")
        t_layers = cfg.per_level("motion_transformer_layers_per_block")
        heads = cfg.per_level("motion_num_attention_heads")
        self.conv_in = nn.Conv2d(cfg.conv_in_channels, ch[0], 3, padding=1) if cfg.conv_in_channels else None
        self.down_blocks = nn.ModuleList(
            nn.ModuleList(motion_module(ch[i], heads[i], t_layers[i], cfg) for _ in range(layers[i]))
            for i in range(len(ch))
        )
        self.mid_block = nn.ModuleList(
            motion_module(ch[-1], heads[-1], n, cfg) for n in cfg.mid_transformer_layers()
        ) if cfg.use_motion_mid_block else None
        self.up_blocks = nn.ModuleList(
            nn.ModuleList(motion_module(ch[lvl], heads[lvl], t_layers[lvl], cfg) for _ in range(layers[lvl] + 1))
            for lvl in reversed(range(len(ch)))
        )

    @property
    def max_frames(self) -> int:
        return self.config.motion_max_seq_length

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the modules compute in (their compute dtype when layerwise cast)."""
        return layer_dtype(next(m for m in self.modules() if isinstance(m, nn.Linear)))

    def frame_window_length(self) -> int | None:
        """The frames per attention window when FreeNoise windows the motion modules, else None."""
        for module in self.modules():
            if isinstance(module, TemporalTransformer):
                settings = getattr(module.transformer_blocks[0].frame_windows, "settings", None)
                return None if settings is None else settings.context_length
        return None

    def module_for(self, part: str, level: int, layer: int) -> TemporalTransformer | None:
        """The motion module that follows ``layer`` of ``part`` ("down" | "mid" | "up") ``level``."""
        if part == "mid":
            return None if self.mid_block is None else self.mid_block[layer]
        return (self.down_blocks if part == "down" else self.up_blocks)[level][layer]

    def forward(self, *args, **kwargs):
        raise TypeError("a MotionAdapter is not run on its own: wrap a UNet2D with UNetMotion(unet, adapter)")


def unet_family(config) -> str:
    """"SDXL" for a UNet2D config with SDXL's micro-conditioning, else "SD1.5" (the SD 1.x/2.x UNets)."""
    return "SDXL" if getattr(config, "addition_embed_type", None) == "text_time" else "SD1.5"


def adapter_family(config: MotionAdapterConfig) -> str:
    """"SDXL" for an adapter with three levels (SDXL's 320, 640, 1280: guoyww's sdxl-beta), else "SD1.5" (four)."""
    return "SDXL" if len(config.block_out_channels) == 3 else "SD1.5"


def check_compatible(unet: UNet2D, adapter: MotionAdapter) -> None:
    """Raise a ValueError naming the mismatch when ``adapter`` cannot be inserted into ``unet``."""
    u, a = unet.config, adapter.config
    if tuple(u.block_out_channels) != tuple(a.block_out_channels) and unet_family(u) != adapter_family(a):
        fix = ("use an SDXL base model (e.g. stabilityai/stable-diffusion-xl-base-1.0) with AnimateDiffSDXLPipeline"
               if adapter_family(a) == "SDXL" else
               "use an SDXL motion adapter (guoyww/animatediff-motion-adapter-sdxl-beta) with an SDXL base model")
        raise ValueError(f"motion adapter block_out_channels {tuple(a.block_out_channels)} do not match the UNet's "
                         f"{tuple(u.block_out_channels)}: an {adapter_family(a)} motion adapter cannot animate an "
                         f"{unet_family(u)} UNet; {fix}")
    if tuple(u.block_out_channels) != tuple(a.block_out_channels):
        raise ValueError(f"motion adapter block_out_channels {tuple(a.block_out_channels)} do not match the UNet's "
                         f"{tuple(u.block_out_channels)}: the adapter was trained for another base model family "
                         "(e.g. an SD1.5 adapter needs an SD1.5-family UNet)")
    if u.per_level("layers_per_block") != a.per_level("motion_layers_per_block"):
        raise ValueError(f"motion adapter motion_layers_per_block {a.motion_layers_per_block!r} does not match the "
                         f"UNet's layers_per_block {u.layers_per_block!r}")
    mid_layers = len(unet.mid_block.attentions)
    if adapter.mid_block is not None and len(adapter.mid_block) != mid_layers:
        raise ValueError(f"motion adapter has {len(adapter.mid_block)} mid-block motion layers "
                         f"(motion_mid_block_layers_per_block) but the UNet's mid block has {mid_layers} transformer(s)")
    if a.conv_in_channels:
        if a.conv_in_channels <= u.in_channels:
            raise ValueError(f"motion adapter conv_in_channels={a.conv_in_channels} must exceed the UNet's "
                             f"in_channels={u.in_channels} (PIA: UNet latents + mask + image latents)")
        if u.conv_in_kernel != 3:
            raise ValueError(f"a motion adapter with its own conv_in needs a UNet with conv_in_kernel=3, "
                             f"got {u.conv_in_kernel}")


class UNetMotion(UNetMotionPretrainedMixin, AttentionProcessorMixin, AttentionSlicingMixin, FusedQKVMixin,
                 GroupOffloadMixin, LayerwiseCastingMixin, GradientCheckpointingMixin, nn.Module):
    """AnimateDiff's video UNet: ``unet`` with ``adapter``'s motion modules after every layer.

    ``forward(sample b c f h w, timestep, encoder_hidden_states, ...) -> b c_out f h w``.
    ``encoder_hidden_states`` is either ``b m d`` (one prompt per video, repeated over frames here)
    or ``(b f) m d`` (per-frame prompts, as diffusers' AnimateDiff pipelines pass it). ControlNet
    residuals are per frame: ``(b f) c h w``.

    The UNet and the adapter are referenced, not copied: ``self.unet`` / ``self.adapter`` are the very
    modules passed in (same parameters, same storage). Differences from diffusers'
    ``UNetMotionModel.from_unet2d``: the motion modules' GroupNorm uses the adapter's
    ``motion_norm_num_groups`` (diffusers uses the UNet's ``norm_num_groups``; both are 32 in every
    released model), and the timestep features follow the UNet's ``flip_sin_to_cos``/``freq_shift``
    (diffusers fixes them to True/0, the SD values).

    Gradient checkpointing is read by the UNet's level walk, which also runs the motion modules (its ``mixer``):
    enabling it here sets it on ``self.unet`` (shared: the UNet checkpoints wherever it runs).
    """

    def __init__(self, unet: UNet2D, adapter: MotionAdapter):
        super().__init__()
        if not isinstance(unet, UNet2D):
            raise TypeError(f"UNetMotion needs a vidcore UNet2D, got {type(unet).__name__}")
        if not isinstance(adapter, MotionAdapter):
            raise TypeError(f"UNetMotion needs a vidcore MotionAdapter, got {type(adapter).__name__}")
        check_compatible(unet, adapter)
        self.unet = unet
        self.adapter = adapter

    @property
    def config(self):
        return self.unet.config

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def in_channels(self) -> int:
        return self.adapter.config.conv_in_channels or self.unet.config.in_channels

    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float) -> None:
        self.unet.enable_freeu(s1, s2, b1, b2)

    def disable_freeu(self) -> None:
        self.unet.disable_freeu()

    def enable_forward_chunking(self, chunk_size: int | None = None, dim: int = 0) -> None:
        self.unet.enable_forward_chunking(chunk_size, dim)
        for module in self.adapter.modules():
            if hasattr(module, "chunk_size"):
                module.chunk_size, module.chunk_dim = chunk_size or 1, dim

    def disable_forward_chunking(self) -> None:
        self.unet.disable_forward_chunking()
        for module in self.adapter.modules():
            if hasattr(module, "chunk_size"):
                module.chunk_size = None

    def conv_in(self, x: torch.Tensor) -> torch.Tensor:
        """The UNet's conv_in; with a PIA adapter, its conv_in's extra input channels are added on top."""
        if self.adapter.conv_in is None:
            return self.unet.conv_in(x)
        c = self.unet.config.in_channels
        with onloaded(self.adapter.conv_in):  # its weights are read, not called
            extra = F.conv2d(x[:, c:], self.adapter.conv_in.weight[:, c:], None, padding=1)
        return self.unet.conv_in(x[:, :c]) + extra

    @staticmethod
    def _motion_scale(motion_scale, b: int, f: int, sample: torch.Tensor):
        """None (unscaled), 0 (modules off), or the per-row scale ``(b f) 1 1 1`` of the motion residuals."""
        if motion_scale is None:
            return None
        if not isinstance(motion_scale, torch.Tensor):
            value = float(motion_scale)
            return None if value == 1.0 else 0 if value == 0.0 else torch.full((b * f, 1, 1, 1), value,
                                                                               device=sample.device)
        scale = motion_scale.flatten().to(device=sample.device, dtype=torch.float32)
        # decided on all the frames, so that frame-parallel ranks agree on running the modules
        if bool((scale == 1).all()):
            return None
        if bool((scale == 0).all()):
            return 0
        if scale.numel() != f:
            if frame_handler() is None:
                raise ValueError(f"motion_scale must be a number or hold one value per frame ({f}), got "
                                 f"{scale.numel()} values")
            scale = scale[frame_start(f): frame_start(f) + f]  # frame parallel: this rank's frames of the window
        return scale.repeat(b).view(b * f, 1, 1, 1)

    @fp32_compute
    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                timestep_cond: torch.Tensor | None = None,
                down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
                mid_block_additional_residual: torch.Tensor | None = None, image_embeds=None,
                added_cond_kwargs: dict | None = None,
                motion_scale: float | torch.Tensor | None = None) -> torch.Tensor:
        """``image_embeds``: with IP-Adapters loaded into the UNet, one image-encoder output per adapter and video
        (diffusers' ``added_cond_kwargs["image_embeds"]``); every frame of a video sees its video's image tokens.
        ``motion_scale`` (a number, or one per frame: a tensor of ``f`` values; under frame-parallel sampling the
        whole window's values, of which the rank takes its frames) multiplies every motion module's residual, as
        AnimateDiff-Evolved's motion scale: 0 turns the motion modules off (the SD UNet on each frame alone), above
        1 exaggerates motion. None runs them unscaled."""
        # sample: b c f h w ; encoder_hidden_states: b m d or (b f) m d
        # added_cond_kwargs (SDXL UNets): text_embeds b d, time_ids b 6 (one per video, shared by its frames)
        if sample.ndim != 5:
            raise ValueError(f"UNetMotion takes latents shaped (batch, channels, frames, height, width), got "
                             f"{tuple(sample.shape)}")
        b, c, f, h, w = sample.shape
        if c != self.in_channels:
            raise ValueError(f"sample has {c} channels, this UNetMotion takes {self.in_channels}")
        if f > self.adapter.max_frames and self.adapter.frame_window_length() is None:
            raise ValueError(f"num_frames={f} exceeds the motion adapter's motion_max_seq_length="
                             f"{self.adapter.max_frames}; generate at most {self.adapter.max_frames} frames at a "
                             "time (longer videos need a sliding context window or enable_free_noise)")
        if encoder_hidden_states.shape[0] in (b, b * f):
            # b m d is shared by each video's frames without being repeated (see nn.attention.Attention)
            context = encoder_hidden_states
        else:
            raise ValueError(f"encoder_hidden_states batch {encoder_hidden_states.shape[0]} must be the video batch "
                             f"({b}) or batch x frames ({b * f})")
        if image_embeds is not None:
            context = image_prompt_context(self.unet, context, image_embeds)
        temb = self.unet.time_embed(timestep, b, sample.device, timestep_cond, added_cond_kwargs)
        temb = temb.repeat_interleave(f, dim=0)

        scale = self._motion_scale(motion_scale, b, f, sample)
        off = isinstance(scale, int)  # motion scale 0: skip the modules (exactly the per-frame SD UNet)

        def mixer(part: str, level: int, layer: int, x: torch.Tensor) -> torch.Tensor:
            module = self.adapter.module_for(part, level, layer)
            if module is None or off:
                return x
            if scale is None:
                return module(x, f)
            return x + scale.to(x.dtype) * (module(x, f) - x)  # (b f) c h w; the module adds its residual to x

        x = self.conv_in(self.unet.prepare_input(rearrange(sample, "b c f h w -> (b f) c h w")))
        x = self.unet.body(x, temb, context, down_block_additional_residuals, mid_block_additional_residual, mixer)
        return rearrange(self.unet.head(x), "(b f) c h w -> b c f h w", f=f)
