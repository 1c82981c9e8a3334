"""I2VGen-XL UNet (diffusers' ``I2VGenXLUNet``): the ModelScope UNet3D plus image conditioning.

What it adds to :class:`~vidcore.models.unet3d.UNet3D`:

* ``conv_in`` takes 8 channels: noisy latents ⊕ image latents, the latter first refined per frame by
  a small conv stack and then across frames by a tiny temporal transformer;
* the cross-attention context is 77 text tokens + 64 tokens from the first frame's image latent
  (conv stack pooled to 8x8) + 4 tokens from the CLIP image embedding;
* an fps embedding (same sinusoidal features as the timestep) is added to the time embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from ..nn.attention import Attention
from ..nn.frame_hooks import frame_handler, frame_start
from ..nn.transformer import FeedForward
from .unet3d import UNet3D, UNet3DConfig


@dataclass(frozen=True)
class I2VGenXLConfig(UNet3DConfig):
    diffusers_class = "I2VGenXLUNet"

    @classmethod
    def from_diffusers_config(cls, config: dict) -> "I2VGenXLConfig":
        # I2VGenXLUNet ignores num_attention_heads (hub configs carry it): attention_head_dim rules.
        return super().from_diffusers_config({k: v for k, v in config.items() if k != "num_attention_heads"})

    def to_diffusers_config(self) -> dict:
        out = super().to_diffusers_config()
        for key in ("downsample_padding", "mid_block_scale_factor", "act_fn", "norm_eps", "time_cond_proj_dim"):
            out.pop(key)
        return out


class ImageLatentTemporalEncoder(nn.Module):
    """LayerNorm -> self-attention over frames -> residual -> GELU feed-forward -> residual."""

    def __init__(self, dim: int, heads: int, head_dim: int, ff_inner: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        self.ff = FeedForward(dim, activation="gelu", inner=ff_inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (b h w) f c
        x = x + self.attn1(self.norm1(x))
        return x + self.ff(x)


class I2VGenXLUNet(UNet3D):
    """``forward(sample b c f h w, timestep, fps, image_latents b c f h w, image_embeddings b d,
    encoder_hidden_states b m d) -> b c f h w``."""

    def __init__(self, config: I2VGenXLConfig):
        if config.norm_eps != 1e-5 or config.downsample_padding != 1 or config.mid_block_scale_factor != 1.0:
            raise ValueError("I2VGen-XL fixes norm_eps=1e-5, downsample_padding=1, mid_block_scale_factor=1")
        c = config.in_channels
        super().__init__(config, conv_in_channels=2 * c)
        ctx = config.cross_attention_dim
        c0 = config.block_out_channels[0]
        temb = 4 * c0
        self.image_latents_proj_in = nn.Sequential(
            nn.Conv2d(4, 4 * c, 3, padding=1), nn.SiLU(),
            nn.Conv2d(4 * c, 4 * c, 3, padding=1), nn.SiLU(),
            nn.Conv2d(4 * c, c, 3, padding=1),
        )
        self.image_latents_temporal_encoder = ImageLatentTemporalEncoder(c, heads=2, head_dim=c, ff_inner=4 * c)
        self.image_latents_context_embedding = nn.Sequential(
            nn.Conv2d(4, 8 * c, 3, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d((32, 32)),
            nn.Conv2d(8 * c, 16 * c, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(16 * c, ctx, 3, stride=2, padding=1),
        )
        self.context_embedding = nn.Sequential(nn.Linear(ctx, temb), nn.SiLU(), nn.Linear(temb, ctx * c))
        self.fps_embedding = nn.Sequential(nn.Linear(c0, temb), nn.SiLU(), nn.Linear(temb, temb))

    def context(self, encoder_hidden_states, image_latents, image_embeddings) -> torch.Tensor:
        """Text tokens ⊕ 64 first-frame latent tokens ⊕ ``in_channels`` CLIP-image tokens: b (m+64+c) d, or
        ``(b f)`` rows when the text is per frame (the image tokens are then repeated for every frame)."""
        first = self.image_latents_context_embedding(image_latents[:, :, 0])  # b d 8 8
        image_tokens = self.context_embedding(image_embeddings).view(image_embeddings.shape[0], self.config.in_channels, -1)
        image_part = torch.cat([rearrange(first, "b d h w -> b (h w) d"), image_tokens], dim=1)
        if encoder_hidden_states.shape[0] != image_part.shape[0]:  # per-frame text (b f) m d (prompt travel)
            image_part = image_part.repeat_interleave(encoder_hidden_states.shape[0] // image_part.shape[0], dim=0)
        return torch.cat([encoder_hidden_states, image_part], dim=1)

    def forward(self, sample: torch.Tensor, timestep, fps, image_latents: torch.Tensor,
                image_embeddings: torch.Tensor, encoder_hidden_states: torch.Tensor,
                timestep_cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.backbone(*self.prepare(sample, timestep, fps, image_latents, image_embeddings, encoder_hidden_states,
                                           timestep_cond))

    def prepare(self, sample: torch.Tensor, timestep, fps, image_latents: torch.Tensor, image_embeddings: torch.Tensor,
                encoder_hidden_states: torch.Tensor, timestep_cond: torch.Tensor | None = None):
        """The conditioning before the backbone: ``(sample ⊕ encoded image latents  b 2c f h w, temb b d,
        context b m' d)``. The image latents' encoder attends over all their frames (plain attention, no frame
        hook), and is cheap next to the backbone: frame-parallel ranks pass them whole with their own slice of
        ``sample`` and keep their frames of the encoding (:func:`~vidcore.nn.frame_hooks.frame_start`)."""
        b, c, f, h, w = sample.shape
        temb = self.time_embed(timestep, b, sample.device, timestep_cond)
        fps_feat = self.time_features(fps, torch.as_tensor(fps).reshape(-1).shape[0], sample.device)
        temb = temb + self.fps_embedding(fps_feat)
        context = self.context(encoder_hidden_states, image_latents, image_embeddings)

        cond = self.image_latents_proj_in(rearrange(image_latents, "b c f h w -> (b f) c h w"))
        cond = rearrange(cond, "(b f) c h w -> (b h w) f c", f=image_latents.shape[2])
        cond = rearrange(self.image_latents_temporal_encoder(cond), "(b h w) f c -> b c f h w", h=h, w=w)
        if cond.shape[2] != f:  # frame parallel: this rank's frames of the whole video's encoding
            if frame_handler() is None:
                raise ValueError(f"image_latents have {cond.shape[2]} frames, sample has {f}")
            cond = cond.narrow(2, frame_start(f), f)
        return torch.cat([sample, cond], dim=1), temb, context
