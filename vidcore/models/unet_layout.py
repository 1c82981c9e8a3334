"""The SD-style UNet layout, in one place: which widths each level's blocks get at build time and how
the skip tensors flow at run time (every down layer and downsampler pushes one, after conv_in's; every
up layer pops one). UNet2D, UNet3D, SVD's UNet and ControlNet build and run their own blocks with these."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
from torch import nn

from ..nn.checkpointing import Runner, block_runner, run_plain
from .freeu import FreeU, apply_freeu

# layer(block, i, x) runs layer i of a level's block on x (each model passes its own conditioning).
Layer = Callable[[nn.Module, int, torch.Tensor], torch.Tensor]
# A mixer sees (part, level, layer, x) with part "down" | "mid" | "up" and returns the new x.
Mixer = Callable[[str, int, int, torch.Tensor], torch.Tensor]


class CallPlan(Protocol):
    """What the walk asks of a step cache's plan for one forward (``vidcore.sampling.step_cache.CallPlan`` is
    the implementation; models only see this interface, so they do not depend on the sampling layer)."""

    depth: int  # down levels to run
    output: torch.Tensor | None  # set when the rest of the walk comes from the cache

    @property
    def shallow(self) -> bool: ...
    def after_first_level(self, x: torch.Tensor) -> bool: ...
    def runs_up_level(self, level_from_top: int) -> bool: ...
    def enter_up_level(self, level_from_top: int, x: torch.Tensor) -> torch.Tensor: ...
    def finish(self, h: torch.Tensor) -> torch.Tensor: ...


class Level(NamedTuple):
    """One UNet level as its blocks are built: ``index`` is the config level (for up blocks, the down level
    they mirror), ``skip_channels`` the widths of the skip tensors an up block concatenates, one per layer."""

    index: int
    in_channels: int
    out_channels: int
    layers: int
    resample: bool  # a downsampler (down levels) or upsampler (up levels) closes the level
    skip_channels: tuple[int, ...] = ()


def unet_levels(channels: tuple[int, ...], layers: tuple[int, ...]) -> tuple[list[Level], list[Level]]:
    """(down levels, up levels, deepest first) of an SD-style UNet. Each down layer and downsampler pushes a
    skip tensor (after conv_in's); each up level has one layer more than its down level and pops one per layer."""
    n = len(channels)
    down = [Level(i, channels[max(i - 1, 0)], channels[i], layers[i], i < n - 1) for i in range(n)]
    skips = [channels[0]]
    for lv in down:
        skips += [lv.out_channels] * (lv.layers + lv.resample)
    up, prev = [], channels[-1]
    for i, lvl in enumerate(reversed(range(n))):
        count = layers[lvl] + 1
        up.append(Level(lvl, prev, channels[lvl], count, i < n - 1, tuple(skips.pop() for _ in range(count))))
        prev = channels[lvl]
    return down, up


def down_path(blocks: nn.ModuleList, h: torch.Tensor, layer: Layer, mixer: Mixer | None = None,
              plan: CallPlan | None = None, run: Runner = run_plain) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the down levels on the conv_in output ``h``: (features for the mid block, the skips). Every layer,
    mixer call and downsampler goes through ``run`` (:func:`~vidcore.nn.checkpointing.block_runner`).

    With a step-cache ``plan`` (vidcore.sampling.step_cache): a DeepCache reuse call runs only the top
    ``plan.depth`` levels (the last one without its downsampler, whose skip feeds a skipped level); the
    block cache stops after level 0 when ``plan.output`` is taken from the cache."""
    skips = [h]
    depth = len(blocks) if plan is None else plan.depth
    for level, block in enumerate(blocks[:depth]):
        for i in range(len(block.resnets)):
            h = run(layer, block, i, h)
            if mixer is not None:
                h = run(mixer, "down", level, i, h)
            skips.append(h)
        if level == 0 and plan is not None and plan.after_first_level(h):
            return h, skips
        if block.downsample is not None and not (plan is not None and plan.shallow and level == depth - 1):
            h = run(block.downsample, h)
            skips.append(h)
    return h, skips


def add_residuals(skips: list[torch.Tensor], residuals, plan: CallPlan | None = None) -> list[torch.Tensor]:
    """The skips plus ControlNet's down residuals, one per skip (a shallow DeepCache call: the top skips')."""
    if plan is not None and plan.shallow:
        residuals = residuals[: len(skips)]
    if len(residuals) != len(skips):
        raise ValueError(f"down_block_additional_residuals: this UNet has {len(skips)} down-path features, "
                         f"got {len(residuals)} residuals")
    return [s + r for s, r in zip(skips, residuals)]


def up_path(blocks: nn.ModuleList, h: torch.Tensor, skips: list[torch.Tensor], layer: Layer,
            freeu: FreeU | None = None, mixer: Mixer | None = None, plan: CallPlan | None = None,
            run: Runner = run_plain) -> torch.Tensor:
    """Run the up levels, consuming ``skips``. Upsamplers double the size, except where the input size was
    not a multiple of the total down factor: then they match the skip they meet next. With a DeepCache
    ``plan`` the up level at its branch starts from (or keeps) the cached deep feature. Layers, mixer calls and
    upsamplers go through ``run``; the skip concatenation happens inside the layer's run, so a checkpointed
    layer keeps its two inputs, not their concatenation."""

    def joined(block, i, h, skip):
        return layer(block, i, torch.cat([h, skip], dim=1))

    up_factor = 2 ** (len(blocks) - 1)
    odd_size = any(s % up_factor for s in skips[0].shape[-2:])
    for level, block in enumerate(blocks):
        if plan is not None:
            from_top = len(blocks) - 1 - level
            if not plan.runs_up_level(from_top):
                continue
            h = plan.enter_up_level(from_top, h)
        for i in range(len(block.resnets)):
            skip = skips.pop()
            if freeu is not None:
                h, skip = apply_freeu(freeu, level, h, skip)
            h = run(joined, block, i, h, skip)
            if mixer is not None:
                h = run(mixer, "up", level, i, h)
        if block.upsample is not None:
            h = run(block.upsample, h, skips[-1].shape[-2:] if odd_size else None)
    return h


def start_plan(model: nn.Module, h: torch.Tensor) -> CallPlan | None:
    """This forward's step-cache plan (``model.step_cache``, attached by a pipeline's sampling run while its
    ``enable_*_cache`` is on), or None."""
    cache = getattr(model, "step_cache", None)
    return None if cache is None else cache.start(h, len(model.down_blocks))


def walk(model: nn.Module, h: torch.Tensor, layer: Layer, mid: Callable[[torch.Tensor], torch.Tensor],
         residuals=None, mid_residual: torch.Tensor | None = None, mixer: Mixer | None = None) -> torch.Tensor:
    """conv_in output -> down levels -> ``mid`` -> up levels (the input of the output head), with ControlNet's
    residuals, ``model.freeu``, the step-cache plan of ``model.step_cache`` and ``model``'s gradient checkpointing
    (each layer, mixer call, resampler and the mid block checkpointed while it is on and autograd records)."""
    plan = start_plan(model, h)
    run = block_runner(model)
    h, skips = down_path(model.down_blocks, h, layer, mixer, plan, run)
    if plan is not None and plan.output is not None:  # block cache: the rest comes from the last full step
        return plan.output
    if residuals is not None:
        skips = add_residuals(skips, residuals, plan)
    if plan is None or not plan.shallow:
        h = run(mid, h)
        if mid_residual is not None:
            h = h + mid_residual
    h = up_path(model.up_blocks, h, skips, layer, getattr(model, "freeu", None), mixer, plan, run)
    return h if plan is None else plan.finish(h)
