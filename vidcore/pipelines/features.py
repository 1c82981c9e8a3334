"""Which pipeline has which sampling feature, read off the code (design principle 12).

A pipeline has a feature because it composes the code that does it: the mixin that carries the feature's
switches (``enable_free_noise`` lives on :class:`~vidcore.sampling.FreeNoiseMixin` ...) or the ``__call__``
argument that asks for it (``context_length=``, ``motion_scale=``, ``last_image=``). Nothing declares support;
:func:`capability_table` derives it, and the CLI, the README's feature matrix and the tests read that one table.

Asking a pipeline for a switch it lacks raises :class:`~vidcore.errors.UnsupportedFeatureError` (a ValueError, a
NotImplementedError and an AttributeError); an argument it lacks is not in its signature (``help()`` shows only
what works). Features that exclude each other are listed in :mod:`vidcore.sampling.combinations`.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Callable

from ..errors import UnsupportedFeatureError
from ..parallel.pipeline import ParallelPipelineMixin
from ..sampling import FreeInitMixin, FreeNoiseMixin, StepCacheMixin
from ..sampling.combinations import FEATURE_NAMES, SWITCHES
from .ip_adapter import IPAdapterMixin
from .lora import LoRAMixin


def _mixin(mixin: type) -> Callable[[type], bool]:
    return lambda cls: issubclass(cls, mixin)


def _argument(name: str) -> Callable[[type], bool]:
    return lambda cls: name in inspect.signature(cls.__call__).parameters


@dataclass(frozen=True)
class Feature:
    """A column of the table: its title, how a user turns it on, and how its presence is read off a class."""

    title: str
    how: str
    present: Callable[[type], bool]


PRESENT: dict[str, Callable[[type], bool]] = {
    "context_windows": _argument("context_length"),
    "free_noise": _mixin(FreeNoiseMixin),
    # a {frame: prompt} schedule: through FreeNoise's prompt encoding, or a pipeline's own (Text2Video-Zero)
    "prompt_travel": lambda cls: _argument("prompt")(cls) and (issubclass(cls, FreeNoiseMixin)
                                                                or hasattr(cls, "schedule_prompts")),
    "free_init": _mixin(FreeInitMixin),
    "step_cache": _mixin(StepCacheMixin),
    "parallel": _mixin(ParallelPipelineMixin),
    "ip_adapter": _mixin(IPAdapterMixin),
    "lora": _mixin(LoRAMixin),
    "motion_scale": _argument("motion_scale"),
    "keyframes": _argument("last_image"),
}
FEATURES: dict[str, Feature] = {name: Feature(*FEATURE_NAMES[name], PRESENT[name]) for name in FEATURE_NAMES}

# every public pipeline class, in the order of the table
PIPELINES: dict[str, str] = {
    "TextToVideoPipeline": "text_to_video", "VideoToVideoPipeline": "video_to_video",
    "I2VGenXLPipeline": "i2vgen_xl", "StableVideoDiffusionPipeline": "stable_video_diffusion",
    "AnimateDiffPipeline": "animatediff", "AnimateDiffVideoToVideoPipeline": "animatediff_video2video",
    "AnimateDiffControlNetPipeline": "animatediff_controlnet",
    "AnimateDiffSparseControlNetPipeline": "animatediff_sparsectrl", "AnimateDiffSDXLPipeline": "animatediff_sdxl",
    "TextToVideoZeroPipeline": "text2video_zero", "ControlledVideoPipeline": "controlled_video",
    "VideoInstructPix2PixPipeline": "video_instruct_pix2pix",
}

# diffusers' Stable Diffusion image pipelines: loaded like the others, not rows of the video feature table
IMAGE_PIPELINES: dict[str, str] = {
    "StableDiffusionPipeline": "stable_diffusion", "StableDiffusionControlNetPipeline": "stable_diffusion_controlnet",
    "StableDiffusionInstructPix2PixPipeline": "stable_diffusion_instruct_pix2pix",
}


def pipeline_class(name: str) -> type:
    """The class of a video pipeline (:data:`PIPELINES`) or an image pipeline (:data:`IMAGE_PIPELINES`)."""
    module = PIPELINES[name] if name in PIPELINES else IMAGE_PIPELINES[name]
    return getattr(importlib.import_module(f"vidcore.pipelines.{module}"), name)


def supports(pipeline, feature: str) -> bool:
    """Whether ``pipeline`` (a class or an instance) has ``feature`` (a key of :data:`FEATURES`)."""
    cls = pipeline if isinstance(pipeline, type) else type(pipeline)
    return FEATURES[feature].present(cls)


def require(pipeline, feature: str) -> None:
    """Raise :class:`UnsupportedFeatureError` unless ``pipeline`` has ``feature``."""
    if not supports(pipeline, feature):
        cls = pipeline if isinstance(pipeline, type) else type(pipeline)
        having = [name for name in PIPELINES if supports(pipeline_class(name), feature)]
        raise UnsupportedFeatureError(f"{cls.__name__} has no {FEATURES[feature].title} ({FEATURES[feature].how}); "
                                      f"pipelines that have it: {', '.join(having)}")


def capability_table() -> dict[str, dict[str, bool]]:
    """``{pipeline class name: {feature: bool}}`` for every public pipeline, read off the classes."""
    return {name: {feature: supports(pipeline_class(name), feature) for feature in FEATURES} for name in PIPELINES}


def markdown_table() -> str:
    """The pipeline x feature matrix as a Markdown table (the README's, between its markers)."""
    header = "| pipeline | " + " | ".join(f.title for f in FEATURES.values()) + " |"
    rule = "|---|" + "---|" * len(FEATURES)
    rows = [f"| `{name}` | " + " | ".join("yes" if has else "-" for has in row.values()) + " |"
            for name, row in capability_table().items()]
    return "\n".join([header, rule, *rows])


__all__ = ["FEATURES", "IMAGE_PIPELINES", "PIPELINES", "SWITCHES", "Feature", "capability_table", "markdown_table", "pipeline_class",
           "require", "supports"]
