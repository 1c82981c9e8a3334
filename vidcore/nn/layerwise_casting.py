"""Layerwise casting: weights stored in fp8 (or another narrow dtype), each layer upcast only while it runs.

:func:`apply_layerwise_casting` stores the weight and bias of a model's ``Linear`` / ``Conv1d-3d`` layers in a
narrow ``storage`` dtype (``float8_e4m3fn``: one byte per value) and puts two torch hooks on each such layer: the
forward pre-hook swaps in a ``compute``-dtype copy of its parameters, the forward hook (run on errors too) puts the
stored tensors back. Between calls only the narrow tensors exist, and nothing is rounded twice. Layers whose dotted
names match a keep pattern (and everything below them) stay in the compute dtype; :data:`DEFAULT_KEEP_PATTERNS`
keeps the layers where rounding costs quality and saves few bytes.

:func:`remove_layerwise_casting` drops the hooks and leaves every weight in the compute dtype holding its rounded
value: outputs stay those of the cast model, the original values are gone (load the model again for them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ArgumentError

CAST_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
STORAGE_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2, torch.float16, torch.bfloat16)
COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# module-name regexes (``re.search`` on the dotted name) of the layers kept in the compute dtype by default
DEFAULT_KEEP_PATTERNS = (
    r"conv_(in|out)$",  # first / last convolutions: UNets, ControlNet and its condition embedding, VAEs
    r"quant_conv$",  # the VAEs' latent projections (quant_conv, post_quant_conv)
    r"norm",  # normalisations and any layer inside one
    r"(time|add|class|fps)_embedding",  # timestep and added conditioning embeddings (SVD, I2VGen-XL fps)
    r"pos_embed",  # frame position tables (motion modules, SVD's time_pos_embed)
    r"(^|(?<!ff)(?<!ff_in)\.)proj_(in|out)$",  # transformers' in/out projections, not feed-forwards' (ff.proj_in)
    r"image_proj",  # IP-Adapter image projections (they cast their input to their weight's dtype themselves)
)

_STATE = "_layerwise_cast"


@dataclass
class _Cast:
    """What a cast layer's hooks need; ``stored`` holds the narrow tensors while the layer runs."""

    storage: torch.dtype
    compute: torch.dtype
    non_blocking: bool
    handles: tuple = ()
    stored: dict = field(default_factory=dict)


def _upcast(layer: nn.Module, args) -> None:
    cast = getattr(layer, _STATE)
    for name, p in layer.named_parameters(recurse=False):
        cast.stored[name] = p.data
        p.data = p.data.to(cast.compute, non_blocking=cast.non_blocking)


def _restore(layer: nn.Module, args, output) -> None:
    cast = getattr(layer, _STATE)
    for name, data in cast.stored.items():
        getattr(layer, name).data = data
    cast.stored.clear()


def cast_layers(model: nn.Module, keep_patterns=DEFAULT_KEEP_PATTERNS, keep_classes=()) -> dict[str, nn.Module]:
    """``{name: layer}``: the Linear / Conv layers of ``model`` that casting stores narrow (those not under a module
    whose name matches a pattern or whose class is in ``keep_classes``)."""
    patterns = [re.compile(p) for p in keep_patterns]
    found: dict[str, nn.Module] = {}

    def walk(module: nn.Module, name: str) -> None:
        if isinstance(module, tuple(keep_classes)) or any(p.search(name) for p in patterns if name):
            return
        if isinstance(module, CAST_LAYERS):
            found[name] = module
            return
        for child_name, child in module.named_children():
            walk(child, f"{name}.{child_name}" if name else child_name)

    walk(model, "")
    return found


def is_cast(module: nn.Module) -> bool:
    """Whether ``module`` or a module inside it has layerwise casting on."""
    return any(hasattr(m, _STATE) for m in module.modules())


def layer_dtype(layer: nn.Module) -> torch.dtype:
    """The dtype ``layer`` computes in: its compute dtype when cast, else its weight's dtype."""
    cast = getattr(layer, _STATE, None)
    return cast.compute if cast is not None else layer.weight.dtype


def apply_layerwise_casting(model: nn.Module, storage_dtype: torch.dtype, compute_dtype: torch.dtype,
                            keep_patterns=DEFAULT_KEEP_PATTERNS, keep_classes=(),
                            non_blocking: bool = False) -> dict[str, nn.Module]:
    """Convert ``model`` to ``compute_dtype``, then store its cast layers (:func:`cast_layers`) in ``storage_dtype``
    with the hooks described in the module docstring; returns the cast layers by name."""
    if storage_dtype not in STORAGE_DTYPES:
        raise ArgumentError(f"storage_dtype must be one of {[str(d) for d in STORAGE_DTYPES]}, got {storage_dtype}")
    if compute_dtype not in COMPUTE_DTYPES:
        raise ArgumentError(f"compute_dtype must be one of {[str(d) for d in COMPUTE_DTYPES]}, got {compute_dtype}")
    if is_cast(model):
        raise RuntimeError(f"layerwise casting is already on in this {type(model).__name__}; call "
                           "disable_layerwise_casting() first")
    if any(getattr(m, "fused_qkv_weight", None) is not None for m in model.modules()):
        raise RuntimeError("fused QKV projections keep a full-precision copy of the weights; call "
                           "unfuse_qkv_projections() before enable_layerwise_casting()")
    model.to(compute_dtype)
    layers = cast_layers(model, keep_patterns, keep_classes)
    for layer in layers.values():
        for p in layer.parameters(recurse=False):
            p.data = p.data.to(storage_dtype)
        cast = _Cast(storage_dtype, compute_dtype, non_blocking)
        # the restore runs before any other post-hook, so hooks around it (group offload's) see the stored tensors
        cast.handles = (layer.register_forward_pre_hook(_upcast),
                        layer.register_forward_hook(_restore, always_call=True, prepend=True))
        setattr(layer, _STATE, cast)
    return layers


def remove_layerwise_casting(model: nn.Module) -> None:
    """Drop the hooks; each cast layer's weights go to its compute dtype with their rounded values (see the module
    docstring). Nothing happens on a model without casting."""
    for module in model.modules():
        cast = getattr(module, _STATE, None)
        if cast is None:
            continue
        for handle in cast.handles:
            handle.remove()
        for p in module.parameters(recurse=False):
            p.data = p.data.to(cast.compute)
        delattr(module, _STATE)


def set_compute_dtype(model: nn.Module, dtype: torch.dtype) -> None:
    """``model.to(dtype)`` for a cast model: the kept parameters and buffers are converted and the cast layers compute
    in ``dtype`` from now on, their stored tensors unchanged (e.g. an fp16 VAE run in float32 for ``force_upcast``)."""
    for module in model.modules():
        cast = getattr(module, _STATE, None)
        if cast is not None:
            cast.compute = dtype
            continue
        for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if t.is_floating_point():
                t.data = t.data.to(dtype)


__all__ = ["CAST_LAYERS", "COMPUTE_DTYPES", "DEFAULT_KEEP_PATTERNS", "STORAGE_DTYPES", "apply_layerwise_casting",
           "cast_layers", "is_cast", "layer_dtype", "remove_layerwise_casting", "set_compute_dtype"]
