"""Sampling tools written once for every pipeline (design principle 12): step caches (DeepCache, block cache),
FreeInit, FreeNoise (noise rescheduling, windowed temporal attention), prompt travel and sliding context windows
for long videos."""

from .free_init import FreeInitConfig, FreeInitMixin
from .free_noise import (
    FrameWindows,
    FreeNoiseSettings,
    frame_weights,
    reschedule_noise,
    schedule_embeddings,
)
from .free_noise_mixin import FreeNoiseMixin
from .mixin import StepCacheMixin
from .step_cache import CallPlan, StepCache, full_steps
from .windows import CONTEXT_WEIGHTINGS, blend_windows, context_windows, plan_windows

__all__ = ["CONTEXT_WEIGHTINGS", "CallPlan", "FrameWindows", "FreeInitConfig", "FreeInitMixin", "FreeNoiseMixin",
           "FreeNoiseSettings", "StepCache", "StepCacheMixin", "blend_windows", "context_windows", "frame_weights",
           "full_steps", "plan_windows", "reschedule_noise", "schedule_embeddings"]
