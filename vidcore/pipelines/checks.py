"""Every pipeline's ``__call__`` arguments, checked up front by one table (design principle 10).

:data:`ARGUMENTS` maps an argument name to its :class:`Rule`: what the argument may be, the same for every
pipeline that takes it. Each ``__call__`` starts with ``check_call(self, locals())``, so a bad value fails before
any text encoder, UNet or VAE runs, with one kind of message: ``"<name> must be <allowed>, got <value>"``. A value
of the wrong type raises :class:`~vidcore.errors.ArgumentTypeError` (a TypeError, and a ValueError as the
scattered checks it replaced were), a value out of range :class:`~vidcore.errors.ArgumentError` (a ValueError).

A rule sees the argument and its neighbours (``context_stride`` is at most ``context_length``, ``t1`` lies between
``t0`` and ``num_inference_steps``); what depends on the loaded models (a motion adapter's frame limit, a
ControlNet's channels, the number of loaded IP-Adapters) stays with the pipeline. ``tests/test_argument_checks.py``
fails for any pipeline argument without a rule here or a written exemption there.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Callable, Mapping

import numpy as np
import PIL.Image
import torch

from ..errors import ArgumentError, ArgumentTypeError
from ..sampling.frame_guidance import GUIDANCE_SCHEDULES
from ..sampling.windows import CONTEXT_WEIGHTINGS
from .video_processing import OUTPUT_TYPES

Args = Mapping[str, Any]


@dataclass(frozen=True)
class Rule:
    """``allowed``: the words after "must be" (or ``(pipe, args) -> words`` where they depend on the call);
    ``kind(value)``: the type test (failing: ArgumentTypeError); ``fits(value, pipe, args)``: the value test
    (failing: ArgumentError); ``none``: None is allowed; ``required``: None gets "is required"; ``template``: the
    message, formatted with name, allowed, value and args (the call's arguments)."""

    allowed: str | Callable[[Any, Args], str]
    kind: Callable[[Any], bool]
    fits: Callable[[Any, Any, Args], bool] = lambda value, pipe, args: True
    none: bool = False
    required: bool = False
    template: str = "{name} must be {allowed}, got {value}"

    def check(self, name: str, value, pipe=None, args: Args | None = None) -> None:
        if value is None and self.none:
            return
        args = args or {}
        allowed = self.allowed(pipe, args) if callable(self.allowed) else self.allowed
        if value is None and self.required:
            raise ArgumentError(f"{name} is required: {allowed}")
        if not self.kind(value):
            raise ArgumentTypeError(self.template.format(name=name, allowed=allowed, value=show(value, typed=True),
                                                         args=args))
        if not self.fits(value, pipe, args):
            raise ArgumentError(self.template.format(name=name, allowed=allowed, value=show(value), args=args))


def show(value, typed: bool = False) -> str:
    """A short description of a value for a message (a tensor by its shape, long reprs cut; ``typed``: the type's
    name first, for a value of the wrong type)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"a {type(value).__name__} of shape {tuple(value.shape)}"
    if isinstance(value, PIL.Image.Image):
        return f"a PIL image of size {value.size}"
    text = repr(value)
    text = text if len(text) <= 80 else text[:77] + "..."
    return f"{type(value).__name__} {text}" if typed and value is not None else text


# -- type tests ---------------------------------------------------------------------------------
def is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, (bool, np.bool_))


def is_number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, (bool, np.bool_))


def is_list_of(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (list, tuple)) and all(test(x) for x in v)


def is_numbers(integers: bool = False) -> Callable[[Any], bool]:
    """A list or tuple of numbers (integers), or a 1-D numpy array or tensor of them."""
    def test(v):
        if isinstance(v, torch.Tensor):
            real = v.dtype != torch.bool and not v.is_complex()
            return v.ndim == 1 and real and not (integers and v.is_floating_point())
        if isinstance(v, np.ndarray):
            return v.ndim == 1 and v.dtype.kind in ("iu" if integers else "iuf")
        return isinstance(v, (list, tuple, range)) and all(is_int(x) if integers else is_number(x) for x in v)

    return test


def is_media(v) -> bool:
    """An image, a frame or a video in any accepted form: PIL, path, array, tensor, or (nested) lists of them."""
    if isinstance(v, (list, tuple)):
        return len(v) > 0 and all(is_media(x) for x in v)
    return isinstance(v, (PIL.Image.Image, str, os.PathLike, np.ndarray, torch.Tensor))


def is_text(v) -> bool:
    """A prompt: a string, a list of strings, or a ``{frame_index: prompt}`` schedule (whose keys and values the
    prompt-travel code checks, with the video's length at hand)."""
    return isinstance(v, dict) or isinstance(v, str) or is_list_of(lambda p: isinstance(p, str))(v)


def is_generator(v) -> bool:
    return isinstance(v, torch.Generator) or (isinstance(v, (list, tuple)) and len(v) > 0
                                              and all(isinstance(g, torch.Generator) for g in v))


# -- rule makers --------------------------------------------------------------------------------
def integer(low: int = 1, none: bool = False, words: str | None = None) -> Rule:
    """An integer >= ``low`` (bools are not integers here)."""
    default = "a positive integer" if low == 1 else f"an integer >= {low}"
    return Rule(_or_none(words or default, none), is_int, lambda v, p, a: v >= low, none)


def number(low: float | None = None, high: float | None = None, open_low: bool = False, open_high: bool = False,
           none: bool = False, words: str | None = None) -> Rule:
    """A finite real number in the interval given (bounds None: unbounded)."""
    def fits(v, pipe, args):
        return math.isfinite(v) and ((low is None or (v > low if open_low else v >= low))
                and (high is None or (v < high if open_high else v <= high)))

    if words is None:
        if low is None and high is None:
            words = "a finite number"
        elif high is None:
            words = f"a number {'>' if open_low else '>='} {low}"
        else:
            words = f"a number in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    return Rule(_or_none(words, none), is_number, fits, none)


def one_of(values: tuple, none: bool = False) -> Rule:
    return Rule(_or_none(f"one of {values}", none), lambda v: isinstance(v, str), lambda v, p, a: v in values, none)


def of_type(words: str, test: Callable[[Any], bool], none: bool = True, required: bool = False) -> Rule:
    """A type test alone (tensors, callables, images ...)."""
    return Rule(_or_none(words, none), test, none=none, required=required)


def _or_none(words: str, none: bool) -> str:
    return f"{words} or None" if none else words


FLAG = of_type("True or False", lambda v: isinstance(v, (bool, np.bool_)), none=False)
TENSOR = of_type("a torch.Tensor", lambda v: isinstance(v, torch.Tensor))
FUNCTION = of_type("a callable", callable)
TEXT = of_type("a string, a list of strings or a {frame_index: prompt} dict", is_text)
MEDIA = "a PIL image, a file path, a numpy array or a torch tensor (or a list of them)"
SIZE = Rule("positive multiples of 8", is_int, lambda v, p, a: v > 0 and v % 8 == 0, none=True,
            template="height and width must be {allowed}, got height={args[height]!r}, width={args[width]!r} "
                     "(or None: the model's default size)")
NUMBERS = Rule("a number or a list of one number per frame",
               lambda v: is_number(v) or is_numbers()(v) or (isinstance(v, torch.Tensor) and v.is_floating_point()))


def is_scales(v) -> bool:
    """A number, or a non-empty list of numbers (one per ControlNet)."""
    return is_number(v) or (is_list_of(is_number)(v) and len(v) > 0)


def in_unit(v, pipe, args) -> bool:
    return all(0 <= x <= 1 for x in (v if isinstance(v, (list, tuple)) else [v]))


def control_end_fits(v, pipe, args) -> bool:
    start = args.get("control_guidance_start", 0.0)
    ends, starts = (list(x) if isinstance(x, (list, tuple)) else [x] for x in (v, start))
    if not in_unit(ends, pipe, args):
        return False
    if 1 in (len(starts), len(ends)):  # one value for every ControlNet
        starts, ends = starts * len(ends), ends * len(starts)
    elif len(starts) != len(ends):  # counts that differ: the pipeline names them
        return True
    return all(s < e for s, e in zip(starts, ends))


def steps_words(pipe, args) -> str:
    custom = [name for name in ("sigmas", "timesteps") if name in args]
    return "a positive integer" + (f", or None with {' or '.join(custom)} given" if custom else "")


def is_steps(v) -> bool:
    return is_int(v) or v is None  # None: only with a custom schedule (steps_fit)


def steps_fit(v, pipe, args) -> bool:
    if v is None:
        return args.get("sigmas") is not None or args.get("timesteps") is not None
    return v >= 1


def stride_words(pipe, args) -> str:
    length = args.get("context_length")
    return (f"between 1 and context_length={length} (an integer), or None" if is_int(length)
            else "a positive integer or None")


def callback_names(pipe) -> tuple[str, ...]:
    """What ``pipe`` hands its step callback (``callback_tensor_inputs``; the latents where a class says nothing)."""
    return tuple(getattr(type(pipe), "callback_tensor_inputs", ("latents",)))


def callback_words(pipe, args) -> str:
    return f"among {callback_names(pipe)} (a list or tuple of names)"


def zero_words(pipe, args) -> str:
    return (f"integers with 0 <= t0 < t1 < num_inference_steps={args.get('num_inference_steps')!r} "
            f"(t0={args.get('t0')!r}, t1={args.get('t1')!r}; the defaults 44 and 47 need at least 48 steps)")


def zero_fit(v, pipe, args) -> bool:
    """Text2Video-Zero's ``0 <= t0 < t1 < num_inference_steps`` (where the others are integers)."""
    t0, t1, n = (args.get(k) for k in ("t0", "t1", "num_inference_steps"))
    return (v >= 0 and (not (is_int(t0) and is_int(t1)) or t0 < t1)
            and (not (is_int(t1) and is_int(n)) or t1 < n))


STEP_PAIR = Rule(zero_words, is_int, zero_fit, template="t0 and t1 must be {allowed}, got {name}={value}")


def pair(words: str, low: int, none: bool = True) -> Rule:
    """Two integers >= ``low`` (SDXL's size and crop micro-conditioning)."""
    return Rule(_or_none(words, none), lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(map(is_int, v)),
                lambda v, p, a: all(x >= low for x in v), none)


# argument name -> what every pipeline allows for it
ARGUMENTS: dict[str, Rule] = {
    # text
    "prompt": TEXT, "negative_prompt": TEXT, "prompt_2": TEXT, "negative_prompt_2": TEXT,
    "prompt_embeds": TENSOR, "negative_prompt_embeds": TENSOR, "pooled_prompt_embeds": TENSOR,
    "negative_pooled_prompt_embeds": TENSOR, "clip_skip": integer(0, none=True),
    # inputs
    "image": of_type(MEDIA, is_media, none=False, required=True),
    "last_image": of_type(MEDIA, is_media), "ip_adapter_image": of_type(MEDIA, is_media),
    "ip_adapter_image_embeds": of_type("a list of torch.Tensors (one per IP-Adapter)",
                                       is_list_of(lambda t: isinstance(t, torch.Tensor))),
    "video": of_type("a list of PIL frames, a file path, a numpy array or a torch tensor (or a list of videos)",
                     is_media),
    "conditioning_frames": of_type(f"{MEDIA}, one per frame (a list per ControlNet)", is_media),
    "strength": number(0, 1, open_low=True),
    # size and counts
    "height": SIZE, "width": SIZE, "num_frames": integer(1, none=True), "video_length": integer(1, none=True),
    "num_videos_per_prompt": integer(1), "num_images_per_prompt": integer(1),
    # the schedule
    "num_inference_steps": Rule(steps_words, is_steps, steps_fit),
    "timesteps": of_type("a list of integer timesteps", is_numbers(integers=True)),
    "sigmas": of_type("a list of numbers (the steps' sigmas, then the final one)", is_numbers()),
    "eta": number(0), "denoising_end": number(0, 1, open_low=True, open_high=True, none=True),
    "generator": of_type("a torch.Generator or a list of them (one per video)", is_generator),
    "latents": TENSOR,
    # guidance
    "guidance_scale": number(), "image_guidance_scale": number(), "guidance_rescale": number(0),
    "min_guidance_scale": number(), "max_guidance_scale": number(),
    "guidance_schedule": Rule(f"one of {GUIDANCE_SCHEDULES} or a list of one number per frame",
                              lambda v: isinstance(v, str) or is_numbers()(v),
                              lambda v, p, a: not isinstance(v, str) or v in GUIDANCE_SCHEDULES),
    "cross_attention_kwargs": of_type("a dict (e.g. {'scale': 0.5})", lambda v: isinstance(v, dict)),
    # micro-conditioning
    "fps": number(0, open_low=True), "target_fps": number(0, open_low=True), "motion_bucket_id": number(0),
    "noise_aug_strength": number(0), "motion_scale": NUMBERS,
    "original_size": pair("a pair of positive integers (height, width)", 1),
    "target_size": pair("a pair of positive integers (height, width)", 1),
    "negative_original_size": pair("a pair of positive integers (height, width)", 1),
    "negative_target_size": pair("a pair of positive integers (height, width)", 1),
    "crops_coords_top_left": pair("a pair of integers >= 0 (top, left)", 0, none=False),
    "negative_crops_coords_top_left": pair("a pair of integers >= 0 (top, left)", 0, none=False),
    # ControlNet
    "controlnet_conditioning_scale": Rule("a number or a list of them (one per ControlNet)", is_scales),
    "control_guidance_start": Rule("a number in [0, 1] or a list of them (one per ControlNet)", is_scales, in_unit),
    "control_guidance_end": Rule("a number in [0, 1] above control_guidance_start, or a list of them (one per "
                                 "ControlNet)", is_scales, control_end_fits),
    "guess_mode": FLAG,
    "controlnet_frame_indices": Rule("a list of frame indices (integers >= 0)", is_numbers(integers=True),
                                     lambda v, p, a: all(i >= 0 for i in v)),
    # Text2Video-Zero
    "motion_field_strength_x": number(), "motion_field_strength_y": number(),
    "t0": STEP_PAIR, "t1": STEP_PAIR,
    "frame_ids": of_type("a list of frame indices (integers)", is_numbers(integers=True)),
    "cross_frame_attention": FLAG,
    # context windows
    "context_length": integer(1, none=True, words="an integer between 1 and the frames the model sees at once "
                                                  "(frames per window)"),
    "context_stride": Rule(stride_words, is_int, lambda v, p, a: v >= 1 and (not is_int(a.get("context_length"))
                                                                            or v <= a["context_length"]), none=True),
    "context_weighting": one_of(CONTEXT_WEIGHTINGS),
    # decoding and output
    "decode_chunk_size": Rule(_or_none("a positive integer, 'auto'", True), lambda v: is_int(v) or isinstance(v, str),
                              lambda v, p, a: v == "auto" if isinstance(v, str) else v >= 1, none=True),
    "decode_overlap": integer(0),
    "output_type": one_of(OUTPUT_TYPES), "return_dict": FLAG,
    # callbacks
    "callback": FUNCTION, "callback_steps": integer(1, none=True), "callback_on_step_end": FUNCTION,
    "callback_on_step_end_tensor_inputs": Rule(
        callback_words, lambda v: isinstance(v, (list, tuple)) and all(isinstance(k, str) for k in v),
        lambda v, pipe, a: all(k in callback_names(pipe) for k in v), none=True),
    # vidcore's switches
    "fix_batch_quirks": FLAG, "image_latents_from_generator": FLAG,
}


def check_call(pipe, arguments: Args) -> None:
    """Check a ``__call__``'s arguments (its ``locals()`` at the top of the body) against :data:`ARGUMENTS`, in
    signature order; names without a rule (``self``) pass. Raises ArgumentError / ArgumentTypeError."""
    for name, value in arguments.items():
        rule = ARGUMENTS.get(name)
        if rule is not None:
            rule.check(name, value, pipe, arguments)


__all__ = ["ARGUMENTS", "Rule", "check_call", "integer", "number", "of_type", "one_of", "show"]
