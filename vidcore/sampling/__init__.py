"""Sampling tools written once for every pipeline (design principle 12): step caches (DeepCache, block cache),
FreeInit, FreeNoise (noise rescheduling, windowed temporal attention) and prompt travel."""

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

__all__ = ["CallPlan", "FrameWindows", "FreeInitConfig", "FreeInitMixin", "FreeNoiseMixin", "FreeNoiseSettings",
           "StepCache", "StepCacheMixin", "frame_weights", "full_steps", "reschedule_noise", "schedule_embeddings"]
