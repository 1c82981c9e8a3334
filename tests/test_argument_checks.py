"""Every public pipeline argument is checked up front, the same way everywhere (vidcore.pipelines.checks).

One table of bad values, written here independently of the rules: for every pipeline class (those of
``PIPELINES``, and any other ``*Pipeline`` class with a ``__call__`` in vidcore.pipelines, such as diffusers'
``StableDiffusion*Pipeline`` names), every parameter of ``__call__`` needs bad values below or a written exemption,
else the test fails naming it. Each bad value must raise vidcore's ArgumentError (a ValueError; a wrong type its
ArgumentTypeError, also a TypeError) whose message names the argument and its allowed values, before anything else:
the sweep calls instances that hold no models at all, so any work before the check fails differently. On real tiny
pipelines the issue's three examples are refused with no model forward run, and a valid call still runs.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import numpy as np
import PIL.Image
import pytest
import torch

import tiny
import vidcore
import vidcore.pipelines
from vidcore.errors import ArgumentError, ArgumentTypeError
from vidcore.pipelines.base import VideoPipeline
from vidcore.pipelines.checks import check_call
from vidcore.pipelines.features import PIPELINES, pipeline_class

V, T = ArgumentError, ArgumentTypeError  # out of range / wrong type
NUMBER = r"number"
WHOLE = r"positive integer"
CHUNK = r"positive integer, 'auto' or None"
MEDIA = r"PIL image.*file path.*numpy array.*torch tensor"

# argument -> [(bad value, expected error, regex the message must also hold: the allowed values)]
BAD: dict[str, list[tuple]] = {
    **{name: [(3, T, r"string.*list of strings")] for name in ("prompt", "negative_prompt", "prompt_2",
                                                                "negative_prompt_2")},
    **{name: [([[0.0]], T, r"torch\.Tensor")] for name in ("prompt_embeds", "negative_prompt_embeds",
                                                           "pooled_prompt_embeds", "negative_pooled_prompt_embeds",
                                                           "latents")},
    "clip_skip": [(-1, V, r"integer >= 0"), (1.5, T, r"integer >= 0")],
    "image": [(None, V, MEDIA), (3, T, MEDIA), ([], T, MEDIA)],
    "last_image": [(3, T, MEDIA)], "ip_adapter_image": [(3, T, MEDIA)],
    "ip_adapter_image_embeds": [(torch.zeros(1, 1, 4), T, r"list of torch\.Tensors")],
    "video": [(3, T, r"PIL frames.*numpy array.*torch tensor")],
    "conditioning_frames": [(3.5, T, MEDIA)],
    "strength": [(0.0, V, r"\(0, 1\]"), (1.5, V, r"\(0, 1\]"), ("high", T, r"\(0, 1\]")],
    **{name: [(12, V, r"multiples of 8"), (0, V, r"multiples of 8"), (16.0, T, r"multiples of 8")]
       for name in ("height", "width")},
    **{name: [(0, V, WHOLE), (2.5, T, WHOLE), (True, T, WHOLE)]
       for name in ("num_frames", "video_length", "num_videos_per_prompt", "num_images_per_prompt",
                    "callback_steps")},
    "decode_chunk_size": [(0, V, CHUNK), (-1, V, CHUNK), (2.5, T, CHUNK), ("big", V, CHUNK), (True, T, CHUNK)],
    "num_inference_steps": [(0, V, WHOLE), (-3, V, WHOLE), (2.5, T, WHOLE), (None, V, WHOLE)],
    "timesteps": [([1.5, 2.5], T, r"list of integer timesteps")],
    "sigmas": [("karras", T, r"list of numbers")],
    "eta": [(-0.1, V, r">= 0"), ("0", T, r">= 0")],
    "denoising_end": [(1.0, V, r"\(0, 1\)"), (0, V, r"\(0, 1\)")],
    "generator": [(42, T, r"torch\.Generator"), ([], T, r"torch\.Generator")],
    **{name: [(float("nan"), V, r"finite number"), ("7.5", T, r"finite number")]
       for name in ("guidance_scale", "image_guidance_scale", "min_guidance_scale", "max_guidance_scale",
                    "motion_field_strength_x", "motion_field_strength_y")},
    "guidance_rescale": [(-1.0, V, r">= 0")],
    "guidance_schedule": [("cosine", V, r"linear.*triangle.*constant"), (3, T, r"linear")],
    "cross_attention_kwargs": [("scale", T, r"dict")],
    **{name: [(0, V, r"> 0")] for name in ("fps", "target_fps")},
    **{name: [(-1, V, r">= 0")] for name in ("motion_bucket_id", "noise_aug_strength")},
    "motion_scale": [("x", T, r"number or a list of one number per frame")],
    **{name: [((64,), T, r"pair of positive integers"), ((0, 64), V, r"pair of positive integers")]
       for name in ("original_size", "target_size", "negative_original_size", "negative_target_size")},
    **{name: [((-1, 0), V, r"pair of integers >= 0")]
       for name in ("crops_coords_top_left", "negative_crops_coords_top_left")},
    "controlnet_conditioning_scale": [("1", T, NUMBER)],
    "control_guidance_start": [(1.5, V, r"\[0, 1\]")],
    "control_guidance_end": [(0.0, V, r"above control_guidance_start"), (2.0, V, r"\[0, 1\]")],
    **{name: [("yes", T, r"True or False")] for name in ("guess_mode", "return_dict", "fix_batch_quirks",
                                                         "image_latents_from_generator", "cross_frame_attention")},
    "controlnet_frame_indices": [([-1], V, r"frame indices"), (0, T, r"frame indices")],
    "t0": [(47, V, r"0 <= t0 < t1 < num_inference_steps=50 \(t0=47, t1=47"), (-1, V, r"0 <= t0 < t1")],
    "t1": [(44, V, r"0 <= t0 < t1 < num_inference_steps=50 \(t0=44, t1=44"), (50, V, r"t1 < num_inference_steps=50")],
    "frame_ids": [("0,1", T, r"frame indices")],
    "context_length": [(0, V, r"integer between 1"), (2.5, T, r"integer between 1")],
    "context_stride": [(0, V, WHOLE)],
    "context_weighting": [("gaussian", V, r"pyramid.*flat")],
    "decode_overlap": [(-1, V, r"integer >= 0")],
    "output_type": [("gif", V, r"'pil'.*'np'.*'pt'.*'latent'")],
    **{name: [(3, T, r"callable")] for name in ("callback", "callback_on_step_end")},
    "callback_on_step_end_tensor_inputs": [(["nope"], V, r"among \('latents'.*list or tuple of names"),
                                           ("latents", T, r"among \('latents'.*list or tuple of names")],
}
# argument -> why it has no bad value (none at present: every argument has one)
EXEMPT: dict[str, str] = {}
# arguments every call needs (with or without a default): a valid value for the sweep's other calls
VALID = {"image": PIL.Image.new("RGB", (16, 16))}


def pipeline_classes() -> dict[str, type]:
    """PIPELINES' classes, and any other public pipeline class with a ``__call__`` in vidcore.pipelines or at
    vidcore's top level (new ones added by other branches included)."""
    found = {name: pipeline_class(name) for name in PIPELINES}
    modules = [importlib.import_module(f"vidcore.pipelines.{m.name}")
               for m in pkgutil.iter_modules(vidcore.pipelines.__path__)]
    candidates = [obj for module in modules for obj in vars(module).values() if isinstance(obj, type)]
    candidates += [getattr(vidcore, name) for name in vidcore.__all__
                   if re.fullmatch(r"StableDiffusion\w*Pipeline", name)]
    for cls in candidates:
        own_call = any("__call__" in vars(k) for k in cls.__mro__ if k is not object)
        if (cls.__name__.endswith("Pipeline") and not cls.__name__.startswith("_") and own_call
                and (issubclass(cls, VideoPipeline) or cls.__name__.startswith("StableDiffusion"))):
            found.setdefault(cls.__name__, cls)
    return found


CLASSES = pipeline_classes()


def parameters(cls, named: bool = False) -> list[inspect.Parameter]:
    """``__call__``'s parameters after ``self``; ``named``: without ``*args`` / ``**kwargs`` (which no bad value can
    be passed to by name: they need an exemption)."""
    params = list(inspect.signature(cls.__call__).parameters.values())[1:]
    return [p for p in params if not named or p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def bare(cls):
    """An instance holding no model: any work done before the argument check fails on a missing attribute."""
    return cls.__new__(cls)


def test_every_pipeline_class_is_found():
    assert set(PIPELINES) <= set(CLASSES)
    for name in vidcore.__all__:
        if re.fullmatch(r"StableDiffusion\w*Pipeline", name):
            assert getattr(vidcore, name).__name__ in CLASSES, name


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_argument_has_bad_values_or_an_exemption(name):
    uncovered = [p.name for p in parameters(CLASSES[name]) if p.name not in BAD and p.name not in EXEMPT]
    assert not uncovered, f"{name}.__call__ arguments with neither bad values nor an exemption: {uncovered}"
    assert all(reason.strip() for reason in EXEMPT.values())


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_bad_values_are_refused_up_front(name):
    cls = CLASSES[name]
    params = parameters(cls, named=True)
    required = {p.name: VALID[p.name] for p in params if p.name in VALID}  # (I2VGen-XL's image defaults to None)
    missing = [p.name for p in params if p.default is p.empty and p.name not in VALID]
    assert not missing, f"{name}: required arguments without a valid value in VALID: {missing}"
    failures = []
    for p in params:
        for value, error, allowed in BAD.get(p.name, []):
            try:
                bare(cls)(**{**required, p.name: value})
            except Exception as err:  # noqa: BLE001  (each failure is reported below, all at once)
                message = str(err)
                if type(err) is not error:
                    failures.append(f"{p.name}={value!r}: {type(err).__name__} instead of {error.__name__}: {message}")
                elif not re.search(rf"\b{p.name}\b", message) or not re.search(allowed, message):
                    failures.append(f"{p.name}={value!r}: message lacks the argument or /{allowed}/: {message}")
            else:
                failures.append(f"{p.name}={value!r}: accepted")
    assert not failures, f"{name}:\n" + "\n".join(failures)


def test_rules_that_read_their_neighbours():
    """A rule may read the call's other arguments; valid combinations pass, the others name both."""
    zero, svd = bare(CLASSES["TextToVideoZeroPipeline"]), bare(CLASSES["StableVideoDiffusionPipeline"])
    check_call(zero, dict(num_inference_steps=3, t0=0, t1=2))
    with pytest.raises(ArgumentError, match=r"t0 and t1 must be integers with 0 <= t0 < t1 < num_inference_steps=3"):
        check_call(zero, dict(num_inference_steps=3, t0=1, t1=3))
    check_call(svd, dict(num_inference_steps=None, sigmas=[80.0, 0.4, 0.0]))  # a custom schedule: no count needed
    with pytest.raises(ArgumentError, match=r"num_inference_steps must be a positive integer, or None with sigmas"):
        check_call(svd, dict(num_inference_steps=None, sigmas=None))
    check_call(svd, dict(context_length=8, context_stride=8))
    with pytest.raises(ArgumentError, match=r"context_stride must be between 1 and context_length=8 .* got 9"):
        check_call(svd, dict(context_length=8, context_stride=9))
    check_call(zero, dict(control_guidance_start=[0.0, 0.5], control_guidance_end=[0.4, 1.0]))
    check_call(zero, dict(control_guidance_start=[0.0, 0.5], control_guidance_end=0.8))
    with pytest.raises(ArgumentError, match=r"control_guidance_end must be a number in \[0, 1\] above "
                                            r"control_guidance_start"):
        check_call(zero, dict(control_guidance_start=[0.0, 0.5], control_guidance_end=[0.4, 0.5]))
    check_call(svd, dict(sigmas=np.array([1.0, 0.0]), guidance_schedule=torch.tensor([1.0, 2.0]), height=None))


def test_errors_are_value_and_type_errors():
    """The checker's errors are what the scattered checks raised (ValueError), wrong types also TypeError."""
    assert issubclass(ArgumentError, ValueError) and issubclass(ArgumentTypeError, (TypeError))
    assert issubclass(ArgumentTypeError, ValueError)


# -- on real tiny pipelines: refused before any model runs; valid calls unchanged ----------------------

def forward_counter(pipe):
    calls = []
    for component in pipe.components:
        module = getattr(pipe, component, None)
        if isinstance(module, torch.nn.Module):
            module.register_forward_pre_hook(lambda m, a, name=component: calls.append(name))
    return calls


@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
    folder = tmp_path_factory.mktemp("args-t2v") / "pipe"
    tiny.build_tiny_t2v_pipeline(folder)
    pipe = vidcore.TextToVideoPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def svd(tmp_path_factory):
    folder = tmp_path_factory.mktemp("args-svd") / "pipe"
    tiny.build_tiny_svd_pipeline(folder)
    pipe = vidcore.StableVideoDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_issue_examples_on_text_to_video(t2v):
    calls = forward_counter(t2v)
    args = dict(prompt="a cat", num_frames=2, height=16, width=16, num_inference_steps=1, output_type="np")
    with pytest.raises(ValueError, match=r"num_inference_steps must be a positive integer, got 0"):
        t2v(**{**args, "num_inference_steps": 0})
    with pytest.raises(ValueError, match=r"callback_on_step_end_tensor_inputs must be among \('latents', "
                                         r"'prompt_embeds'\) \(a list or tuple of names\), got \['noise'\]"):
        t2v(**args, callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["noise"])
    with pytest.raises(ValueError, match=r"decode_chunk_size must be a positive integer, 'auto' or None, got 0"):
        t2v(**args, decode_chunk_size=0)
    assert calls == []
    seen = []
    frames = t2v(**args, decode_chunk_size=1, callback_on_step_end=lambda p, i, t, d: seen.append(sorted(d)) or d,
                 callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"]).frames
    assert frames.shape == (1, 2, 16, 16, 3) and "unet" in calls
    assert seen == [["latents", "prompt_embeds"]]


def test_issue_examples_on_svd(svd):
    calls = forward_counter(svd)
    args = dict(image=PIL.Image.new("RGB", (24, 16)), height=16, width=24, num_frames=2, num_inference_steps=1,
                output_type="np")
    for bad, message in [({"num_inference_steps": 0}, "num_inference_steps must be a positive integer"),
                         ({"callback_on_step_end_tensor_inputs": ["prompt_embeds"]}, r"among \('latents',\)"),
                         ({"decode_chunk_size": 0}, "decode_chunk_size must be a positive integer, 'auto' or None")]:
        with pytest.raises(ValueError, match=message):
            svd(**{**args, **bad})
    assert calls == []
    # None lists no tensors, as SVD always allowed; the callback then gets an empty dict
    seen = []
    frames = svd(**args, callback_on_step_end=lambda p, i, t, d: seen.append(d) or d,
                 callback_on_step_end_tensor_inputs=None).frames
    assert np.isfinite(frames).all() and seen == [{}] and "unet" in calls
