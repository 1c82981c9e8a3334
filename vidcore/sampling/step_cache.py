"""Reuse across denoising steps: DeepCache and an adaptive first-block cache, for every vidcore UNet.

Consecutive denoising steps change the deep, low-resolution features of a UNet little, so part of a step can
be taken from an earlier one. Both methods here work on the UNet's level structure (``down_blocks[i]`` /
``up_blocks[L-1-i]`` at resolution level ``i``), which all vidcore UNets share (UNet3D, I2VGen-XL, SVD, UNet2D
and AnimateDiff's UNetMotion over it):

* **DeepCache** (Ma, Fang and Wang, "DeepCache: Accelerating Diffusion Models for Free", CVPR 2024). On a
  full step the UNet runs whole and keeps the feature entering up level ``cache_branch_id`` (the output of the
  deeper up levels). On the steps between full steps only the shallow path runs: ``conv_in``, down levels
  ``0..cache_branch_id`` (their skip features), then up levels ``cache_branch_id..0`` starting from the kept
  feature. ``cache_interval`` steps share one full step; the non-uniform schedule puts more full steps early,
  where the sample still changes fast.
* **Block cache** (first-block cache, in the manner of TeaCache / FBCache for transformers): every step runs
  ``conv_in`` and down level 0; when that feature moved less than ``threshold`` (mean absolute change
  relative to its mean magnitude) since the last full step, the rest of the level walk is skipped and the last
  full step's residual (the walk's output minus the level-0 feature; both full resolution, ``c0`` channels) is
  added to this step's level-0 feature before the output head.

The UNets call :meth:`StepCache.start` once per forward (on the ``conv_in`` output) and follow the returned
:class:`CallPlan` (``vidcore.models.unet_layout`` walks the levels with it); the pipeline advances the step
clock (:meth:`StepCache.next_step`) as its progress bar advances. Several UNet calls in one
step (context windows, per-window ControlNet, two passes) each get their own slot of cached tensors, matched
by their order within the step; a slot whose input shape changed runs in full.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def full_steps(num_steps: int, cache_interval: int, uniform: bool = True, power: float = 1.5) -> list[int]:
    """Indices of the steps that run the whole UNet: every ``cache_interval``-th (uniform), or the same number
    of steps placed at ``num_steps * (k / n) ** power`` (non-uniform: denser early for power > 1)."""
    if cache_interval < 1:
        raise ValueError(f"cache_interval must be >= 1, got {cache_interval}")
    count = math.ceil(num_steps / cache_interval)
    if uniform or cache_interval == 1:
        return list(range(0, num_steps, cache_interval))
    chosen: set[int] = set()
    n = count
    while len(chosen) < count:  # rounding can merge early positions: sample more points until there are enough
        chosen = {min(num_steps - 1, int(num_steps * (k / n) ** power)) for k in range(n)}
        n += 1
    return sorted(chosen)[:count]


@dataclass
class CallPlan:
    """What one UNet forward does. ``depth``: down levels to run (all on a full call); ``deep``: the cached
    feature to enter up level ``branch`` with (None: run the deep levels and, when caching, keep it);
    ``output``: set by the block cache when the rest of the walk is replaced by the cached residual."""

    cache: "StepCache"
    slot: int
    depth: int
    branch: int | None = None  # DeepCache: the up level (counted from the top, 0 = full resolution)
    deep: torch.Tensor | None = None
    output: torch.Tensor | None = None
    probe: torch.Tensor | None = None

    @property
    def shallow(self) -> bool:
        """Only the top levels run (a DeepCache reuse call): the mid block and deeper levels are skipped."""
        return self.deep is not None

    def runs_up_level(self, level_from_top: int) -> bool:
        return self.deep is None or level_from_top <= self.branch

    def enter_up_level(self, level_from_top: int, x: torch.Tensor) -> torch.Tensor:
        """At the branch: the cached feature on a reuse call, else ``x`` (kept for the next calls)."""
        if self.branch is None or level_from_top != self.branch:
            return x
        if self.deep is not None:
            return self.deep
        self.cache.slots[self.slot]["deep"] = x
        return x

    def after_first_level(self, x: torch.Tensor) -> bool:
        """Block cache, after down level 0: True when the walk's output is taken from the cache (``output``)."""
        return self.cache.first_level(self, x)

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        """The walk's output (kept as the residual source by the block cache)."""
        if self.probe is not None:
            self.cache.slots[self.slot]["residual"] = out - self.probe
        return out


@dataclass
class StepCache:
    """State of one cache method on one UNet: the step clock, per-slot tensors and the counts."""

    method: str  # "deep" | "block"
    cache_interval: int = 3
    cache_branch_id: int = 0
    uniform: bool = True
    threshold: float = 0.05
    step: int = -1
    num_steps: int | None = None
    slot_index: int = 0
    slots: dict[int, dict] = field(default_factory=dict)
    full: set[int] = field(default_factory=set)
    stats: dict[str, int] = field(default_factory=lambda: {"full": 0, "cached": 0})

    def __post_init__(self):
        if self.method not in ("deep", "block"):
            raise ValueError(f"unknown cache method {self.method!r}")
        if self.method == "deep":
            if self.cache_interval < 1:
                raise ValueError(f"cache_interval must be >= 1, got {self.cache_interval}")
            if self.cache_branch_id < 0:
                raise ValueError(f"cache_branch_id must be >= 0, got {self.cache_branch_id}")
        elif not self.threshold >= 0:  # 0 never reuses (a check: equal to the uncached run)
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")

    # -- the pipeline's clock --------------------------------------------------------------------------
    def begin(self, num_steps: int | None) -> None:
        """A new sampling loop of ``num_steps`` steps: nothing cached, counts from zero."""
        self.step, self.num_steps, self.slot_index = -1, num_steps, 0
        self.slots.clear()
        self.stats = {"full": 0, "cached": 0}
        steps = num_steps if num_steps is not None else 0
        self.full = set(full_steps(steps, self.cache_interval, self.uniform)) if self.method == "deep" else set()

    def end(self) -> None:
        """The loop is over: drop the cached tensors (the counts stay for ``summary``)."""
        self.slots.clear()

    def next_step(self) -> None:
        self.step += 1
        self.slot_index = 0

    # -- the UNet's side -------------------------------------------------------------------------------
    def start(self, sample: torch.Tensor, num_levels: int) -> CallPlan:
        """The plan of this UNet call: ``sample`` is its conv_in output, ``num_levels`` its down levels."""
        if self.method == "deep" and self.cache_branch_id >= num_levels:
            raise ValueError(f"cache_branch_id={self.cache_branch_id} is beyond this UNet's depth: it has "
                             f"{num_levels} levels (0..{num_levels - 1})")
        slot = self.slot_index
        self.slot_index += 1
        state = self.slots.setdefault(slot, {})
        fresh = state.get("shape") != tuple(sample.shape)
        state["shape"] = tuple(sample.shape)
        if self.method == "block":
            return CallPlan(self, slot, num_levels)
        step = max(self.step, 0)
        reuse = not fresh and step not in self.full and state.get("deep") is not None
        self.stats["cached" if reuse else "full"] += 1
        if reuse:
            return CallPlan(self, slot, self.cache_branch_id + 1, self.cache_branch_id, state["deep"])
        state.pop("deep", None)
        return CallPlan(self, slot, num_levels, self.cache_branch_id)

    def first_level(self, plan: CallPlan, x: torch.Tensor) -> bool:
        if self.method != "block":
            return False
        state = self.slots[plan.slot]
        previous, residual = state.get("probe"), state.get("residual")
        if previous is not None and residual is not None and previous.shape == x.shape:
            change = ((x - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12)).item()
            if change < self.threshold:
                self.stats["cached"] += 1
                plan.output = x + residual
                return True
        state["probe"] = plan.probe = x
        self.stats["full"] += 1
        return False

    def summary(self) -> dict:
        """UNet calls run in full and from the cache in the last sampling loop, and the method's settings."""
        settings = ({"cache_interval": self.cache_interval, "cache_branch_id": self.cache_branch_id,
                     "uniform": self.uniform} if self.method == "deep" else {"threshold": self.threshold})
        return {"method": self.method, **settings, **self.stats}
