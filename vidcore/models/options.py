"""Inference options shared by the models: FreeU, feed-forward chunking, attention slicing, fused QKV
projections, group offload and layerwise casting (fp8 weight storage) (one implementation each)."""

from __future__ import annotations

import torch
from torch import nn

from ..nn.attention import Attention
from ..nn.fused_qkv import fuse_qkv, unfuse_qkv
from ..nn.group_offload import GroupOffload, GroupOffloadConfig, disable_group_offload, enable_group_offload
from ..nn.layerwise_casting import (DEFAULT_KEEP_PATTERNS, apply_layerwise_casting, layer_dtype,
                                    remove_layerwise_casting)
from .freeu import FreeU


class LayerwiseCastingMixin:
    """``enable_layerwise_casting``: Linear / Conv weights stored in fp8 and upcast per layer while it runs
    (:mod:`vidcore.nn.layerwise_casting`; diffusers' method of the same name and arguments)."""

    def enable_layerwise_casting(self: nn.Module, storage_dtype: torch.dtype = torch.float8_e4m3fn,
                                 compute_dtype: torch.dtype | None = None,
                                 skip_modules_pattern: tuple[str, ...] | None = None,
                                 skip_modules_classes: tuple[type[nn.Module], ...] | None = None,
                                 non_blocking: bool = False) -> None:
        """Store the cast layers in ``storage_dtype``; compute in ``compute_dtype`` (default: the model's dtype;
        another one converts the model first). ``skip_modules_pattern`` (regexes searched in module names)
        replaces :data:`~vidcore.nn.layerwise_casting.DEFAULT_KEEP_PATTERNS`; ``skip_modules_classes`` keeps
        modules of those classes. Enabling twice is an error; enable after ``.to(dtype)``, not before."""
        keep = DEFAULT_KEEP_PATTERNS if skip_modules_pattern is None else tuple(skip_modules_pattern)
        apply_layerwise_casting(self, storage_dtype, compute_dtype or self.dtype, keep, skip_modules_classes or (),
                                non_blocking)

    def disable_layerwise_casting(self: nn.Module) -> None:
        """Hooks off; the weights stay in the compute dtype with their fp8-rounded values, so outputs equal the
        cast model's (the original precision comes back only by loading the model again)."""
        remove_layerwise_casting(self)


class FusedQKVMixin:
    """``fuse_qkv_projections``: one matmul for every attention's q/k/v (:mod:`vidcore.nn.fused_qkv`; equal within
    float rounding); ``unfuse_qkv_projections`` restores the separate projections bit for bit."""

    def fuse_qkv_projections(self: nn.Module) -> None:
        fuse_qkv(self)

    def unfuse_qkv_projections(self: nn.Module) -> None:
        unfuse_qkv(self)


class GroupOffloadMixin:
    """diffusers' ``enable_group_offload`` (its argument order; ``num_blocks_per_group`` defaults to 1): weights
    on ``offload_device``, each group of modules copied to ``onload_device`` only while it runs
    (:mod:`vidcore.nn.group_offload` says what a group is); ``disable_group_offload`` removes the hooks (exact
    outputs again) and leaves the weights on the offload device. ``group_offload`` holds the hooks while on (their
    groups, which are onloaded)."""

    group_offload: GroupOffload | None = None

    def enable_group_offload(self: nn.Module, onload_device: torch.device | str,
                             offload_device: torch.device | str = "cpu", offload_type: str = "block_level",
                             num_blocks_per_group: int = 1, non_blocking: bool = False,
                             use_stream: bool = False) -> None:
        """``offload_type``: "block_level" (groups of ``num_blocks_per_group`` blocks) or "leaf_level" (each
        layer); ``use_stream`` (CUDA only): pinned host weights, the next group copied while the current one
        runs."""
        enable_group_offload(self, GroupOffloadConfig(onload_device, offload_device, offload_type,
                                                      num_blocks_per_group, non_blocking, use_stream))

    def disable_group_offload(self: nn.Module) -> None:
        disable_group_offload(self)


class AttentionSlicingMixin:
    """``enable_attention_slicing``: every attention (:class:`~vidcore.nn.attention.Attention`, spatial, cross and
    temporal) computes its softmax on at most ``slice_size`` query tokens per call (``Attention.slice_size``, see
    :func:`vidcore.nn.attention.sliced_attend`): a bounded score matrix where token counts explode (I2VGen-XL at
    704x1280: 88 x 160 tokens per frame), the same result; ``disable_attention_slicing`` restores one call."""

    def enable_attention_slicing(self: nn.Module, slice_size: int) -> None:
        if isinstance(slice_size, bool) or not isinstance(slice_size, int) or slice_size < 1:
            raise ValueError(f"attention slice_size must be a positive integer (query tokens per call), "
                             f"got {slice_size!r}")
        self._set_attention_slice(slice_size)

    def disable_attention_slicing(self: nn.Module) -> None:
        self._set_attention_slice(None)

    def _set_attention_slice(self: nn.Module, slice_size: int | None) -> None:
        for module in self.modules():
            if isinstance(module, Attention):
                module.slice_size = slice_size


class ForwardChunkingMixin(AttentionSlicingMixin, FusedQKVMixin):
    """``enable_forward_chunking``: every feed-forward (modules with a ``chunk_size`` attribute, see
    ``nn.transformer.FeedForward``) runs in chunks, which lowers peak memory and is exact."""

    def enable_forward_chunking(self: nn.Module, chunk_size: int | None = None, dim: int = 0) -> None:
        """Run every feed-forward in chunks of ``chunk_size`` along ``dim`` (0 batch, 1 tokens); exact."""
        if dim not in (0, 1):
            raise ValueError(f"forward chunking dim must be 0 or 1, got {dim}")
        for module in self.modules():
            if hasattr(module, "chunk_size"):
                module.chunk_size, module.chunk_dim = chunk_size or 1, dim

    def disable_forward_chunking(self: nn.Module) -> None:
        for module in self.modules():
            if hasattr(module, "chunk_size"):
                module.chunk_size = None

    @property
    def dtype(self) -> torch.dtype:
        return layer_dtype(self.conv_in)


class UNetOptionsMixin(ForwardChunkingMixin):
    """Forward chunking plus FreeU (for UNets with SD-style up blocks; ``forward`` reads ``self.freeu``)."""

    freeu: FreeU | None = None

    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float) -> None:
        """FreeU (Si et al. 2023): rescale backbone/skip features in the two lowest-resolution up blocks."""
        self.freeu = FreeU(s1, s2, b1, b2)

    def disable_freeu(self) -> None:
        self.freeu = None
