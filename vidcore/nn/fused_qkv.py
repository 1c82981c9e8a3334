"""Fused query/key/value projections (diffusers' ``fuse_qkv_projections``): one matmul instead of three.

:func:`fuse_qkv` gives every attention of a model (a module with ``to_q`` / ``to_k`` / ``to_v`` linears) the
concatenated weights as non-persistent buffers (they follow ``.to()`` and never enter ``state_dict``, so saving
and conversion see the separate projections): q, k and v for a self-attention, k and v for a cross-attention.
:func:`project_qkv` is what the attentions call; it uses the fused weights when present. :func:`unfuse_qkv`
drops the buffers: the separate projections run again, bit for bit as before. Weights edited after fusing
need :func:`refresh_fused_qkv` (the pipelines' LoRA methods call it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layerwise_casting import is_cast

_WEIGHT, _BIAS = "fused_qkv_weight", "fused_qkv_bias"


def _is_attention(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, n, None), nn.Linear) for n in ("to_q", "to_k", "to_v"))


def _cat(layers: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = torch.cat([layer.weight.detach() for layer in layers])
    if all(layer.bias is None for layer in layers):
        return weight, None
    bias = torch.cat([layer.bias.detach() if layer.bias is not None else layer.weight.new_zeros(layer.out_features)
                      for layer in layers])
    return weight, bias


def fuse_qkv(model: nn.Module) -> None:
    """Fuse the projections of every attention in ``model`` (see the module docstring)."""
    if is_cast(model):
        raise RuntimeError("fused QKV projections need full-precision weights; call disable_layerwise_casting() "
                           "before fuse_qkv_projections()")
    trained = [name for name, m in model.named_modules() if _is_attention(m)
               and any(hasattr(getattr(m, p), "lora") for p in ("to_q", "to_k", "to_v"))]
    if trained:
        raise RuntimeError(f"fused QKV projections would bypass the LoRA training branches on {trained[0]}'s "
                           "to_q/to_k/to_v: vidcore.training.merge_lora() or remove_lora() first")
    for module in model.modules():
        if not _is_attention(module):
            continue
        self_attention = module.to_k.in_features == module.to_q.in_features
        layers = [module.to_q, module.to_k, module.to_v] if self_attention else [module.to_k, module.to_v]
        weight, bias = _cat(layers)
        module.register_buffer(_WEIGHT, weight, persistent=False)
        module.register_buffer(_BIAS, bias, persistent=False)


def refresh_fused_qkv(model: nn.Module) -> None:
    """Recompute the fused weights of the attentions of ``model`` that are fused (after their projections changed,
    e.g. a LoRA fused into them)."""
    fused = [m for m in model.modules() if is_fused(m)]
    for module in fused:
        fuse_qkv(module)


def unfuse_qkv(model: nn.Module) -> None:
    """Back to the separate projections (the fused buffers are dropped)."""
    for module in model.modules():
        for name in (_WEIGHT, _BIAS):
            if name in module._buffers:
                del module._buffers[name]


def is_fused(module: nn.Module) -> bool:
    return getattr(module, _WEIGHT, None) is not None


def project_qkv(module: nn.Module, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(to_q(x), to_k(context), to_v(context))``, through the fused weights when ``module`` has them."""
    weight = getattr(module, _WEIGHT, None)
    if weight is None:
        return module.to_q(x), module.to_k(context), module.to_v(context)
    bias = getattr(module, _BIAS, None)
    inner = module.to_q.out_features
    if weight.shape[0] == 3 * inner:  # self-attention: q, k, v stacked
        if context is x:
            return F.linear(x, weight, bias).chunk(3, dim=-1)
        # keys/values from other tokens (cross-frame attention): q alone, k and v fused
        q = F.linear(x, weight[:inner], None if bias is None else bias[:inner])
        k, v = F.linear(context, weight[inner:], None if bias is None else bias[inner:]).chunk(2, dim=-1)
        return q, k, v
    k, v = F.linear(context, weight, bias).chunk(2, dim=-1)
    return module.to_q(x), k, v


__all__ = ["fuse_qkv", "is_fused", "project_qkv", "refresh_fused_qkv", "unfuse_qkv"]
