"""Multi-head attention with a switchable backend.

Every attention in vidcore goes through :func:`attend`, so a faster kernel (for example the Triton
temporal-attention kernel) plugs in at one place. Backends:

* ``"sdpa"`` – ``torch.nn.functional.scaled_dot_product_attention`` (default).
* ``"math"`` – explicit softmax(QK^T/sqrt(d))V in float32; the readable reference.
* ``"auto"`` – currently SDPA; the Triton backend registers itself for temporal attention.

The backend is chosen globally with :func:`set_attention_backend` or per module through
``Attention.backend`` (``None`` means "use the global one").
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# kind -> backend name -> fn(q, k, v) on (batch, heads, seq, head_dim) tensors
_BACKENDS: dict[str, Callable[..., torch.Tensor]] = {}
_GLOBAL_BACKEND = "auto"
BACKEND_NAMES = ("auto", "sdpa", "math")


def register_backend(name: str, fn: Callable[..., torch.Tensor]) -> None:
    """Make ``name`` selectable for temporal attention: ``fn(q, k, v, num_frames, heads)`` on
    ``(b f) n (heads d)`` tensors returns the output in that layout, or None to decline (unsupported
    device, dtype or shape), in which case SDPA runs."""
    _BACKENDS[name] = fn


def set_attention_backend(name: str) -> None:
    global _GLOBAL_BACKEND
    if name not in BACKEND_NAMES and name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(set(BACKEND_NAMES) | set(_BACKENDS))}")
    _GLOBAL_BACKEND = name


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


def temporal_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int, heads: int,
                    backend: str | None = None) -> torch.Tensor:
    """Attention over frames for tensors in the spatial layout ``(b f) n (heads d)``; same layout out.

    Each pixel of each video attends over its ``f`` frames. A registered kernel (the Triton one) reads
    this layout directly; the SDPA/math path rearranges to ``(b n) heads f d`` and back.
    """
    name = backend or _GLOBAL_BACKEND
    kernel = _BACKENDS.get(name) or (_BACKENDS.get("triton") if name == "auto" else None)
    if kernel is not None:
        out = kernel(q, k, v, num_frames, heads)
        if out is not None:
            return out
    to_heads = lambda t: rearrange(t, "(b f) n (h d) -> (b n) h f d", f=num_frames, h=heads)  # noqa: E731
    out = attend(to_heads(q), to_heads(k), to_heads(v), "math" if name == "math" else "sdpa")
    return rearrange(out, "(b n) h f d -> (b f) n (h d)", n=q.shape[1])


class Attention(nn.Module):
    """Self- or cross-attention on token sequences ``b n c``.

    q/k/v projections have no bias by default (as in the Stable Diffusion family); the output
    projection has one.
    """

    def __init__(self, query_dim: int, heads: int, head_dim: int, context_dim: int | None = None, bias: bool = False):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.backend: str | None = None
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=bias)
        self.to_out = nn.Linear(inner, query_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, num_frames: int | None = None) -> torch.Tensor:
        """x: b n c tokens attending to ``context`` (b m c_ctx, default x). With ``num_frames`` the
        attention runs over frames instead: x is ``(b f) n c`` and each pixel attends over its frames."""
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        if num_frames is not None:
            return self.to_out(temporal_attend(q, k, v, num_frames, self.heads, self.backend))
        b = x.shape[0]
        q, k, v = (t.view(b, -1, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        out = attend(q, k, v, self.backend)  # b heads n d
        return self.to_out(out.transpose(1, 2).reshape(b, -1, self.heads * self.head_dim))


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
        q, k, v = (proj(tokens).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))
        out = attend(q, k, v).squeeze(1)
        out = self.to_out(out).transpose(1, 2).reshape(b, c, h, w)
        return x + out
