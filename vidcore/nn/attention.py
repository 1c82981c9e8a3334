"""Multi-head attention with a switchable backend.

Every attention in vidcore goes through :func:`attend` (tokens attend to tokens) or
:func:`temporal_attend` (each pixel attends over its frames), so faster kernels plug in at one place.
Backends:

* ``"auto"`` (default) – the fused Triton kernel for temporal attention on CUDA when Triton is
  installed and the shape/dtype is supported; SDPA everywhere else (never Triton on the CPU).
* ``"sdpa"`` – ``torch.nn.functional.scaled_dot_product_attention``.
* ``"triton"`` – the Triton kernel for temporal attention (errors if it cannot run); SDPA for the rest.
* ``"math"`` – explicit softmax(QK^T/sqrt(d))V in float32; the readable reference.

Choose globally with :func:`set_attention_backend` (or the :func:`attention_backend` context), or per
module with :func:`set_module_attention_backend` (``Attention.backend``; ``None`` = the global one).

Attention slicing (``Attention.slice_size``, a plain field; ``model.enable_attention_slicing``): at most that many
query tokens (batch rows x sequence) per backend call, the rest in further calls (:func:`sliced_attend`). Each
query's row of the softmax is computed whole, so the result is the same (within the backend's float rounding);
the score matrix that a non-fused backend ("math", SDPA's CPU path) materialises shrinks to the slice.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .frame_hooks import frame_handler
from .fused_qkv import project_qkv

BACKEND_NAMES = ("auto", "sdpa", "triton", "math")
_GLOBAL_BACKEND = "auto"


def _check(name: str) -> str:
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKEND_NAMES}")
    return name


def set_attention_backend(name: str) -> None:
    global _GLOBAL_BACKEND
    _GLOBAL_BACKEND = _check(name)


def get_attention_backend() -> str:
    return _GLOBAL_BACKEND


@contextmanager
def attention_backend(name: str):
    """Temporarily switch the global backend (``with attention_backend("math"): ...``)."""
    previous = _GLOBAL_BACKEND
    set_attention_backend(name)
    try:
        yield
    finally:
        set_attention_backend(previous)


def set_module_attention_backend(module: nn.Module, name: str | None) -> None:
    """Pin every attention inside ``module`` to backend ``name`` (``None``: follow the global one)."""
    if name is not None:
        _check(name)
    for m in module.modules():
        if isinstance(m, Attention):
            m.backend = name


def _triton_temporal(q, k, v, num_frames: int, heads: int, required: bool) -> torch.Tensor | None:
    """Run the fused kernel (kernels/temporal_attention.py) or return None to fall back to SDPA."""
    if not required and not q.is_cuda:
        return None  # "auto" never picks Triton on the CPU
    try:
        from ..kernels.temporal_attention import HAS_TRITON, temporal_attention_triton, triton_temporal_backend
    except ImportError:
        HAS_TRITON = False
    if required:
        if not HAS_TRITON:
            raise RuntimeError("attention backend 'triton' needs the triton package (pip install triton)")
        return temporal_attention_triton(q, k, v, num_frames, heads)
    return triton_temporal_backend(q, k, v, num_frames, heads) if HAS_TRITON else None


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference attention on (batch, heads, seq, head_dim); accumulates in float32."""
    scale = q.shape[-1] ** -0.5
    scores = torch.einsum("bhqd,bhkd->bhqk", q.float() * scale, k.float())
    return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(dim=-1), v.float()).to(q.dtype)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Attention on (batch, heads, seq, head_dim) tensors with the chosen backend ("math" or SDPA)."""
    if (backend or _GLOBAL_BACKEND) == "math":
        return math_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def sliced_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str | None = None,
                  slice_size: int | None = None) -> torch.Tensor:
    """:func:`attend` on at most ``slice_size`` query tokens per call, counted over batch rows x sequence: whole
    rows (with their keys) while a row fits, else one row at a time in runs of ``slice_size`` queries."""
    rows, n = q.shape[0], q.shape[2]
    if slice_size is None or rows * n <= slice_size:
        return attend(q, k, v, backend)
    per_call = max(1, slice_size // n)
    return torch.cat([torch.cat([attend(q[r: r + per_call, :, i: i + slice_size], k[r: r + per_call],
                                        v[r: r + per_call], backend) for i in range(0, n, slice_size)], dim=2)
                      for r in range(0, rows, per_call)])


def temporal_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int, heads: int,
                    backend: str | None = None, slice_size: int | None = None) -> torch.Tensor:
    """Attention over frames for tensors in the spatial layout ``(b f) n (heads d)``; same layout out.

    Each pixel of each video attends over its ``f`` frames. A registered kernel (the Triton one) reads
    this layout directly; the SDPA/math path rearranges to ``(b n) heads f d`` and back.
    Under frame parallelism (``nn.frame_hooks``) ``f`` is this process's frame count and the handler
    makes the attention span all frames. ``slice_size``: see :func:`sliced_attend` (not for the fused kernel,
    which never holds the scores).
    """
    handler = frame_handler()
    if handler is not None:
        return handler.temporal_attend(q, k, v, num_frames, heads, backend, slice_size)
    return local_temporal_attend(q, k, v, num_frames, heads, backend, slice_size)


def local_temporal_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int, heads: int,
                          backend: str | None = None, slice_size: int | None = None) -> torch.Tensor:
    """:func:`temporal_attend` on the frames at hand, never redirected."""
    name = backend or _GLOBAL_BACKEND
    if name in ("auto", "triton"):
        out = _triton_temporal(q, k, v, num_frames, heads, required=name == "triton")
        if out is not None:
            return out
    to_heads = lambda t: rearrange(t, "(b f) n (h d) -> (b n) h f d", f=num_frames, h=heads)  # noqa: E731
    out = sliced_attend(to_heads(q), to_heads(k), to_heads(v), "math" if name == "math" else "sdpa", slice_size)
    return rearrange(out, "(b n) h f d -> (b f) n (h d)", n=q.shape[1])


class ImagePromptContext(NamedTuple):
    """What the cross-attentions of a UNet with IP-Adapters receive instead of the text tokens alone.

    ``text``: ``b m d`` (or ``(b f) m d``) prompt tokens; ``images``: one tensor per loaded adapter, ``b t d`` (or
    ``(b f) t d``), the projected image-prompt tokens (all of a prompt's images, one after the other)."""

    text: torch.Tensor
    images: tuple[torch.Tensor, ...]


class Attention(nn.Module):
    """Self- or cross-attention on token sequences ``b n c``.

    q/k/v projections have no bias by default (as in the Stable Diffusion family); the output
    projection has one.
    """

    def __init__(self, query_dim: int, heads: int, head_dim: int, context_dim: int | None = None, bias: bool = False,
                 out_bias: bool = True):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.backend: str | None = None
        self.slice_size: int | None = None  # attention slicing: query tokens per backend call (None: all)
        # Cross-frame mode (Text2Video-Zero): (frames per video, source frame) or None.
        self.cross_frame: tuple[int, int] | None = None
        # The user's processor (vidcore.nn.processors, set by a model's set_attn_processor): where a spatial
        # self-attention takes its keys and values from; None is the default (ordinary self-attention).
        self.processor = None
        # Image-prompt branches (IP-Adapter, vidcore.models.ip_adapter): one (to_k_ip, to_v_ip) pair per loaded
        # adapter and its scale. The linears are owned (registered) by the adapter modules, not by this attention.
        self.image_branches: list[tuple[nn.Linear, nn.Linear]] = []
        self.image_scales: list[float] = []
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=bias)
        self.to_out = nn.Linear(inner, query_dim, bias=out_bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, num_frames: int | None = None) -> torch.Tensor:
        """x: b n c tokens attending to ``context`` (b m c_ctx, default x). With ``num_frames`` the
        attention runs over frames instead: x is ``(b f) n c`` and each pixel attends over its frames."""
        if isinstance(context, ImagePromptContext):
            return self._forward_with_images(x, context)
        if context is None and num_frames is None:
            if self.cross_frame is not None:
                context = self._source_frame_tokens(x)
            elif self.processor is not None:
                context = self.processor.self_attention_source(x)
        if context is not None and context.shape[1] == 1 and num_frames is None:
            # One key: softmax weights are exactly 1, so every query gets that token's value
            # (SVD's image-embedding cross-attention). Skips q, k and the score computation.
            out = self.to_out(self.to_v(context))  # b 1 c
            if out.shape[0] != x.shape[0]:  # one context per video of (b f) frames
                if x.shape[0] % out.shape[0]:
                    raise ValueError(f"x batch {x.shape[0]} is not a multiple of the context batch {out.shape[0]}")
                out = out.repeat_interleave(x.shape[0] // out.shape[0], dim=0)
            return out.expand(x.shape[0], x.shape[1], -1)
        context = x if context is None else context
        q, k, v = project_qkv(self, x, context)  # one matmul after fuse_qkv_projections
        if num_frames is not None:
            return self.to_out(temporal_attend(q, k, v, num_frames, self.heads, self.backend, self.slice_size))
        return self.to_out(self._cross(q, k, v))

    def _cross(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Projected queries ``rows n inner`` attend to projected keys/values ``b m inner`` -> ``rows n inner``."""
        rows, n, _ = q.shape
        b = k.shape[0]
        if rows != b:
            # x is (b f) n c and the context is one per video (b m c): every frame of a video attends to
            # the same keys, so its frames' queries are one longer sequence b (f n) c. Exact, and k/v
            # are projected once per video instead of once per frame (video UNets repeat the prompt
            # for every frame before projecting it).
            if rows % b:
                raise ValueError(f"x batch {rows} is not a multiple of the context batch {b}")
            q = q.reshape(b, -1, q.shape[-1])
        q, k, v = (t.reshape(b, -1, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        out = sliced_attend(q, k, v, self.backend, self.slice_size)  # b heads (f n) d
        return out.transpose(1, 2).reshape(rows, n, self.heads * self.head_dim)

    def _forward_with_images(self, x: torch.Tensor, context: "ImagePromptContext") -> torch.Tensor:
        """Decoupled cross-attention (IP-Adapter): the text attention plus, for each image prompt, ``scale`` x the
        attention of the same queries to that prompt's tokens through its own key/value projections."""
        if len(context.images) != len(self.image_branches):
            raise ValueError(f"{len(context.images)} image prompt(s) given, this attention has "
                             f"{len(self.image_branches)} IP-Adapter branch(es)")
        q = self.to_q(x)
        out = self._cross(q, self.to_k(context.text), self.to_v(context.text))
        for (to_k_ip, to_v_ip), scale, tokens in zip(self.image_branches, self.image_scales, context.images):
            if scale != 0:  # a zero scale skips the branch, as diffusers does
                out = out + scale * self._cross(q, to_k_ip(tokens), to_v_ip(tokens))
        return self.to_out(out)


    def _source_frame_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(b f) n c -> the tokens of each video's source frame, repeated for its f frames (a view).

        Projecting k/v from these equals projecting every frame and then picking the source frame's
        k/v, as diffusers' CrossFrameAttnProcessor does, at 1/f of the projection cost."""
        frames, source = self.cross_frame
        if x.shape[0] % frames:
            raise ValueError(f"cross-frame attention: batch {x.shape[0]} is not a multiple of {frames} frames")
        video = x.view(x.shape[0] // frames, frames, *x.shape[1:])
        return video[:, source: source + 1].expand_as(video).reshape(x.shape)


def set_cross_frame_attention(module: nn.Module, num_frames: int | None, source_frame: int = 0) -> None:
    """Make every spatial self-attention in ``module`` take keys/values from frame ``source_frame`` of its
    video (Text2Video-Zero's cross-frame attention); ``num_frames=None`` restores ordinary self-attention.
    Batches are ``(b f)``-ordered: frames of one video are consecutive. Cross- and temporal attentions
    are unaffected."""
    if num_frames is not None and not 0 <= source_frame < num_frames:
        raise ValueError(f"source_frame must be in [0, {num_frames}), got {source_frame}")
    for m in module.modules():
        if isinstance(m, Attention):
            m.cross_frame = None if num_frames is None else (num_frames, source_frame)


@contextmanager
def cross_frame_attention(modules: nn.Module | Sequence[nn.Module], num_frames: int | None, source_frame: int = 0):
    """:func:`set_cross_frame_attention` on ``modules`` for the ``with`` block only: every attention's previous
    mode is restored on exit, error or not (how a pipeline call turns it on without leaving it set). Inside the block
    the pipeline owns the attentions' mode: a processor the user set (``set_attn_processor``) is set aside, and back
    after it."""
    modules = [modules] if isinstance(modules, nn.Module) else list(modules)
    saved = [(m, m.cross_frame, m.processor) for module in modules for m in module.modules()
             if isinstance(m, Attention)]
    try:
        for m, _, _ in saved:
            m.processor = None
        for module in modules:
            set_cross_frame_attention(module, num_frames, source_frame)
        yield
    finally:
        for m, value, processor in saved:
            m.cross_frame, m.processor = value, processor


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over the pixels of a feature map (the VAE mid block).

    GroupNorm first, residual added. One head as wide as the channels, as in the SD VAE.
    """

    def __init__(self, channels: int, groups: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: b c h w
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # b (h w) c
        q, k, v = (t.unsqueeze(1) for t in project_qkv(self, tokens, tokens))
        out = attend(q, k, v).squeeze(1)
        out = self.to_out(out).transpose(1, 2).reshape(b, c, h, w)
        # out first: the sum inherits its channels-last strides, which makes the following convs
        # faster on CPU (oneDNN), as in diffusers
        return out + x
