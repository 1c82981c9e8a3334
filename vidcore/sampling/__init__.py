"""Sampling tools written once for every pipeline (design principle 12): step caches (DeepCache, block cache),
FreeInit."""

from .free_init import FreeInitConfig, FreeInitMixin
from .mixin import StepCacheMixin
from .step_cache import CallPlan, StepCache, full_steps

__all__ = ["CallPlan", "FreeInitConfig", "FreeInitMixin", "StepCache", "StepCacheMixin", "full_steps"]
