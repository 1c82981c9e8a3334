"""Transformer blocks: GEGLU feed-forward, the basic block, spatial and temporal transformers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import Attention
from .embeddings import SinusoidalPositions, TimestepMLP, sinusoidal_embedding
from .frame_hooks import frame_start
from .resnet import AlphaBlender, video_norm
from .row_chunks import in_row_chunks


class FeedForward(nn.Module):
    """Position-wise feed-forward: GEGLU (``x * gelu(gate)``, the default) or plain GELU, optionally run
    in chunks along one dim to cap memory.

    ``chunk_size``/``chunk_dim`` mirror diffusers' ``enable_forward_chunking``; chunking is exact
    because the feed-forward is position-wise.
    """

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0, activation: str = "geglu", inner: int | None = None,
                 bias: bool = True):
        super().__init__()
        if activation not in ("geglu", "gelu"):
            raise ValueError(f"feed-forward activation must be 'geglu' or 'gelu', got {activation!r}")
        inner = inner or dim * mult
        self.gated = activation == "geglu"
        self.proj_in = nn.Linear(dim, inner * 2 if self.gated else inner, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.proj_out = nn.Linear(inner, dim, bias=bias)
        self.chunk_size: int | None = None
        self.chunk_dim = 0

    def _ff(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            h, gate = self.proj_in(x).chunk(2, dim=-1)
            h = h * F.gelu(gate)
        else:
            h = F.gelu(self.proj_in(x))
        return self.proj_out(self.dropout(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.chunk_size:
            return self._ff(x)
        return torch.cat([self._ff(part) for part in x.split(self.chunk_size, dim=self.chunk_dim)], dim=self.chunk_dim)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: self-attention, second attention, GEGLU feed-forward; residual each.

    The second attention attends to ``context`` (cross-attention) or, with
    ``double_self_attention``, to the tokens themselves (ModelScope's temporal blocks).
    With ``max_positions`` (temporal blocks only), a sinusoidal frame-position table is added to the
    normalised tokens before each attention (AnimateDiff's motion modules).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None,
                 double_self_attention: bool = False, max_positions: int | None = None, second_attention: bool = True):
        super().__init__()
        self.pos_embed = SinusoidalPositions(dim, max_positions) if max_positions else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        # SparseCtrl's motion modules have no second attention (diffusers: temporal_double_self_attention=False)
        self.norm2 = nn.LayerNorm(dim) if second_attention else None
        self.attn2 = Attention(dim, heads, head_dim, None if double_self_attention else context_dim) if second_attention else None
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)
        # A frame-window hook (vidcore.sampling.free_noise.FrameWindows) or None: when set, the frame-mixing
        # part of a temporal block runs on windows of frames whose results it blends (FreeNoise).
        self.frame_windows = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, num_frames: int | None = None) -> torch.Tensor:
        """x: b n c. With ``num_frames``, x is ``(b f) n c`` and both attentions run over frames."""
        if self.frame_windows is not None and num_frames is not None:
            x = self.frame_windows(lambda part, frames: self.attend(part, context, frames), x, num_frames)
        else:
            x = self.attend(x, context, num_frames)
        return x + self.ff(self.norm3(x))

    def attend(self, x: torch.Tensor, context: torch.Tensor | None, num_frames: int | None) -> torch.Tensor:
        """The attention steps with their residuals (everything but the feed-forward)."""
        x = x + self.attn1(self._positions(self.norm1(x), num_frames), num_frames=num_frames)
        if self.attn2 is None:
            return x
        return x + self.attn2(self._positions(self.norm2(x), num_frames), context, num_frames=num_frames)

    def _positions(self, h: torch.Tensor, num_frames: int | None) -> torch.Tensor:
        if self.pos_embed is None:
            return h
        if num_frames is None:
            raise ValueError("a transformer block with frame positions needs num_frames")
        return self.pos_embed(h, num_frames)


class SpatialTransformer(nn.Module):
    """Attention over the pixels of each frame, with cross-attention to text tokens.

    Projections in and out are linear (1x1 conv checkpoints are converted by the weight map).
    """

    def __init__(self, channels: int, heads: int, head_dim: int, context_dim: int | None, groups: int, layers: int = 1):
        super().__init__()
        self.row_chunk: int | None = None  # FreeNoise split inference (vidcore.nn.row_chunks)
        inner = heads * head_dim
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner, heads, head_dim, context_dim) for _ in range(layers)
        )
        self.proj_out = nn.Linear(inner, channels)

    @in_row_chunks
    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # x: n c h w ; context: n m c_ctx
        n, c, h, w = x.shape
        tokens = self.proj_in(rearrange(self.norm(x), "n c h w -> n (h w) c"))
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return x + rearrange(self.proj_out(tokens), "n (h w) c -> n c h w", h=h, w=w)


def video_group_norm(norm: nn.GroupNorm, x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """GroupNorm whose statistics span all frames of each video, for ``(b f) c h w`` input.

    Runs the native GroupNorm on a ``b c f h w`` view (a transpose, no copy in)."""
    n, c, h, w = x.shape
    video = x.view(n // num_frames, num_frames, c, h, w).transpose(1, 2)
    return video_norm(norm, video).transpose(1, 2).reshape(n, c, h, w)


class TemporalTransformer(nn.Module):
    """Attention over the frames at each pixel (ModelScope: two self-attentions, no positions).

    Tokens stay in the per-frame layout ``(b f) (h w) c`` throughout: projections and feed-forward
    are per token, and only the attention mixes frames (see ``nn.attention.temporal_attend``).
    GroupNorm statistics span all frames of a video, as in ModelScope.
    ``max_positions`` adds sinusoidal frame positions before every attention (AnimateDiff's motion
    module is this transformer with ``max_positions=motion_max_seq_length``).
    """

    def __init__(self, channels: int, heads: int, head_dim: int, groups: int, layers: int = 1,
                 max_positions: int | None = None, second_attention: bool = True):
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner, heads, head_dim, double_self_attention=True, max_positions=max_positions,
                             second_attention=second_attention)
            for _ in range(layers)
        )
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        # x: (b f) c h w
        n, c, h, w = x.shape
        tokens = self.proj_in(rearrange(video_group_norm(self.norm, x, num_frames), "n c h w -> n (h w) c"))
        for block in self.transformer_blocks:
            tokens = block(tokens, num_frames=num_frames)
        return x + rearrange(self.proj_out(tokens), "n (h w) c -> n c h w", h=h, w=w)


class TemporalMixBlock(nn.Module):
    """SVD's temporal block on ``(b f) n c`` tokens: LayerNorm + GEGLU feed-forward in (residual),
    self-attention over frames, cross-attention to the conditioning, GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None):
        super().__init__()
        self.norm_in = nn.LayerNorm(dim)
        self.ff_in = FeedForward(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)
        self.frame_windows = None  # as TransformerBlock.frame_windows: windows the self-attention over frames

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = x + self.ff_in(self.norm_in(x))
        if self.frame_windows is not None:
            x = self.frame_windows(self.attend_frames, x, num_frames)
        else:
            x = self.attend_frames(x, num_frames)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))

    def attend_frames(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """The self-attention over frames with its residual (the only step that mixes frames)."""
        return x + self.attn1(self.norm1(x), num_frames=num_frames)


class SpatioTemporalTransformer(nn.Module):
    """SVD's transformer: per layer, a spatial block, then a temporal block on the same tokens plus a
    frame-index embedding, blended with a learned alpha.

    The temporal cross-attention in diffusers uses the first frame's context for every frame; the
    context is the same for all frames of a video here, so the per-frame context is used directly.
    """

    def __init__(self, channels: int, heads: int, head_dim: int, context_dim: int, layers: int = 1):
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(TransformerBlock(inner, heads, head_dim, context_dim) for _ in range(layers))
        self.temporal_transformer_blocks = nn.ModuleList(
            TemporalMixBlock(inner, heads, head_dim, context_dim) for _ in range(layers)
        )
        self.time_pos_embed = TimestepMLP(channels, 4 * channels, out_dim=channels)
        self.time_mixer = AlphaBlender(0.5)
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        # x: (b f) c h w ; context: (b f) m d
        n, c, h, w = x.shape
        tokens = self.proj_in(rearrange(self.norm(x), "n c h w -> n (h w) c"))
        start = frame_start(num_frames)  # > 0 for later frame slices under frame parallelism
        frame_ids = torch.arange(start, start + num_frames, device=x.device).repeat(n // num_frames)
        frame_emb = self.time_pos_embed(sinusoidal_embedding(frame_ids, c).to(tokens.dtype))[:, None]  # n 1 c
        for spatial, temporal in zip(self.transformer_blocks, self.temporal_transformer_blocks):
            tokens = spatial(tokens, context)
            tokens = self.time_mixer(tokens, temporal(tokens + frame_emb, context, num_frames))
        return x + rearrange(self.proj_out(tokens), "n (h w) c -> n c h w", h=h, w=w)
