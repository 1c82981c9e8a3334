"""Sliding context windows: denoise a video longer than a model's clip length, one window at a time.

Video UNets are trained on short clips (AnimateDiff 16 frames, ModelScope 16, SVD 14 / 25) and either fail
beyond a length (AnimateDiff's frame-position table) or lose coherence. Here every denoising step runs the
network on overlapping windows of ``context_length`` frames whose starts are ``context_stride`` frames apart
(the last window ends at the video's last frame, so every frame is covered) and each frame's prediction is
the weighted mean over the windows that contain it. "pyramid" weights count a window's middle frames most
and its edges (which saw the least context) least, so predictions fade from one window into the next;
"flat" is the plain mean. The scheduler then steps the whole video at once: all windows share one noise
trajectory. A video that fits one window runs exactly as without windows (no blending, same tensors).

This is the "uniform context" scheme of the AnimateDiff community tools. A pipeline opts in by describing
one window's guided prediction as ``noise_fn(start, end)`` (slicing its own per-frame conditioning) and
calling :func:`blend_windows`; :func:`plan_windows` checks the user's arguments.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .combinations import check_combination

CONTEXT_WEIGHTINGS = ("pyramid", "flat")


def context_windows(num_frames: int, context_length: int, context_stride: int) -> list[tuple[int, int]]:
    """``[start, end)`` frame ranges of ``context_length`` frames, starts ``context_stride`` apart, the last
    window ending at ``num_frames``. One window ``(0, num_frames)`` when the video fits in one."""
    if context_length < 1:
        raise ValueError(f"context_length must be at least 1, got {context_length}")
    if not 1 <= context_stride <= context_length:
        raise ValueError(f"context_stride must be between 1 and context_length={context_length} (a larger stride "
                         f"leaves frames outside every window), got {context_stride}")
    if num_frames <= context_length:
        return [(0, num_frames)]
    starts = list(range(0, num_frames - context_length, context_stride)) + [num_frames - context_length]
    return [(s, s + context_length) for s in starts]


def context_weights(length: int, weighting: str = "pyramid") -> torch.Tensor:
    """Per-frame weights of one window: ``flat`` ones, or ``pyramid`` ``min(i + 1, length - i)``."""
    if weighting == "flat":
        return torch.ones(length)
    if weighting == "pyramid":
        i = torch.arange(length)
        return torch.minimum(i + 1, length - i).float()
    raise ValueError(f"context_weighting must be one of {CONTEXT_WEIGHTINGS}, got {weighting!r}")


def plan_windows(num_frames: int, context_length: int | None, context_stride: int | None,
                 context_weighting: str = "pyramid", max_length: int | None = None,
                 limit_name: str = "the model's frame limit") -> list[tuple[int, int]]:
    """The windows for a pipeline call's ``context_length`` / ``context_stride`` / ``context_weighting``, or a
    ValueError naming the bad argument.

    ``context_length=None`` means ``max_length`` (a model that cannot see more frames at once, e.g. a motion
    adapter's position table), or the whole video where there is no such limit: the default is no windows.
    ``context_stride=None`` is ``context_length // 4`` (at least 1), the usual overlap of three quarters.
    """
    if context_weighting not in CONTEXT_WEIGHTINGS:
        raise ValueError(f"context_weighting must be one of {CONTEXT_WEIGHTINGS}, got {context_weighting!r}")
    if context_length is None:
        length = max_length if max_length is not None else num_frames
    else:
        length = context_length
    if max_length is not None:
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= max_length:
            raise ValueError(f"context_length must be an integer between 1 and {limit_name}={max_length}, "
                             f"got {context_length!r}")
    elif isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"context_length must be a positive integer (frames per window) or None (the whole "
                         f"video), got {context_length!r}")
    stride = max(1, length // 4) if context_stride is None else context_stride
    if type(stride) is not int:  # bools and floats too
        raise ValueError(f"context_stride must be an integer, got {context_stride!r}")
    return context_windows(num_frames, length, stride)


def check_free_noise_windows(pipe, windows: list[tuple[int, int]]) -> None:
    """UNet context windows and FreeNoise (windows inside the temporal layers) are two answers to one problem;
    with both, FreeNoise's per-frame prompts would not match a window's frames: one at a time."""
    check_combination(pipe, free_noise=getattr(pipe, "free_noise", None) is not None, context_windows=len(windows) > 1)


def check_parallel_windows(windows: list[tuple[int, int]], frame_ranks: int) -> None:
    """Frame-parallel sampling splits each window over the frame ranks: every window needs a frame per rank."""
    shortest = min(end - start for start, end in windows)
    if len(windows) > 1 and shortest < frame_ranks:
        raise ValueError(f"frame parallel over {frame_ranks} processes splits each context window: it needs "
                         f"context_length >= {frame_ranks}, got {shortest}")


def blend_windows(noise_fn: Callable[[int, int], torch.Tensor], num_frames: int, windows: list[tuple[int, int]],
                  weighting: str = "pyramid", frame_dim: int = 2) -> torch.Tensor:
    """The video's prediction from ``noise_fn(start, end)``, the prediction for frames ``start:end`` (the
    frames along ``frame_dim``: 2 for ``b c f h w``, 1 for SVD's ``b f c h w``), blended over ``windows``
    with :func:`context_weights`. One window over the whole video returns ``noise_fn(0, num_frames)``
    untouched. Sums are kept in float32 and the result has the predictions' dtype.

    Guidance is linear, so guiding each window and blending equals blending and guiding: ``noise_fn`` may
    return guided predictions (with per-frame guidance scales sliced to its window)."""
    if len(windows) == 1 and windows[0] == (0, num_frames):
        return noise_fn(0, num_frames)
    total = weight_sum = None
    for start, end in windows:
        part = noise_fn(start, end)
        if total is None:
            shape = list(part.shape)
            shape[frame_dim] = num_frames
            total = torch.zeros(shape, dtype=torch.float32, device=part.device)
            weight_sum = torch.zeros(num_frames, dtype=torch.float32, device=part.device)
            view = [1] * part.ndim
            view[frame_dim] = -1
            dtype = part.dtype
        w = context_weights(end - start, weighting).to(part.device)
        total.narrow(frame_dim, start, end - start).add_(part.float() * w.view(view))
        weight_sum[start:end] += w
    return (total / weight_sum.view(view)).to(dtype)
