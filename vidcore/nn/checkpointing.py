"""Gradient checkpointing: trade compute for activation memory while training.

With it on, a model's block loops run each block (a UNet layer: res block plus transformers; a motion module; a
mid block; a resampler; a VAE encoder/decoder level) under ``torch.utils.checkpoint`` (non-reentrant): the block
keeps only its inputs for the backward pass and runs its forward again there. Peak memory of a training step
drops to the block inputs plus one block's activations; the step takes one more forward.

It is a setting (design principle 13): a plain ``gradient_checkpointing`` flag on the modules whose loops read it,
switched by :meth:`GradientCheckpointingMixin.enable_gradient_checkpointing` / ``disable_...`` (diffusers' method
names). It acts only where autograd records a graph, so inference (``torch.no_grad``, ``inference_mode``) runs the
plain calls: same outputs, same speed. With it on, gradients equal the plain run's within float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

# run(fn, *args) -> fn(*args), possibly under checkpoint: what a block loop calls each block through
Runner = Callable[..., Any]


def run_plain(fn: Callable, *args):
    return fn(*args)


def run_checkpointed(fn: Callable, *args):
    return checkpoint(fn, *args, use_reentrant=False)


def block_runner(module: nn.Module) -> Runner:
    """How ``module``'s loops call their blocks in this forward: under checkpoint when ``module`` has gradient
    checkpointing on and autograd is recording, else plainly. Decided once per forward (a loop calls
    ``run(block, *inputs)``; non-tensor inputs such as frame counts are fine)."""
    if getattr(module, "gradient_checkpointing", False) and torch.is_grad_enabled():
        return run_checkpointed
    return run_plain


def set_gradient_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Set the flag on ``model`` and every submodule that declares one (the inner modules whose loops read it:
    a UNetMotion's UNet2D, a VAE's encoder and decoder)."""
    for module in model.modules():
        if hasattr(module, "gradient_checkpointing"):
            module.gradient_checkpointing = enabled


class GradientCheckpointingMixin:
    """``enable_gradient_checkpointing`` / ``disable_gradient_checkpointing`` / ``is_gradient_checkpointing``
    (diffusers' names). The flag survives ``.train()`` / ``.eval()`` / ``.to()``; it changes nothing under
    ``torch.no_grad``."""

    gradient_checkpointing: bool = False

    def enable_gradient_checkpointing(self: nn.Module) -> None:
        set_gradient_checkpointing(self, True)

    def disable_gradient_checkpointing(self: nn.Module) -> None:
        set_gradient_checkpointing(self, False)

    @property
    def is_gradient_checkpointing(self: nn.Module) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())
