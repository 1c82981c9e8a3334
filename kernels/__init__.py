"""Optional fused kernels. Each Triton kernel sits beside the plain PyTorch function that defines it;
importing this package never needs triton (``HAS_TRITON`` tells whether it is usable)."""

from .temporal_attention import (
    HAS_TRITON,
    supports,
    temporal_attention_reference,
    temporal_attention_triton,
    triton_temporal_backend,
)

__all__ = [
    "HAS_TRITON",
    "supports",
    "temporal_attention_reference",
    "temporal_attention_triton",
    "triton_temporal_backend",
]
