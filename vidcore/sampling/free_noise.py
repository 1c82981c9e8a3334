"""FreeNoise (Qiu et al. 2023, arXiv 2310.15169) and prompt travel, written once for every video pipeline.

FreeNoise lets a temporal model that was trained on short clips sample a longer video in one pass. It has two
parts, both here as plain functions and objects that know nothing about a particular pipeline:

* **Noise rescheduling** (:func:`reschedule_noise`). The initial noise of frames past the first window is not
  fresh: with ``"shuffle_context"`` every block of ``context_stride`` frames is a random permutation of the
  frames ``context_length`` positions earlier, so the whole video shares the statistics of one window and the
  windows agree with each other; ``"repeat_context"`` repeats the first window; ``"random"`` keeps independent
  noise. The permutations are drawn from the sampling generator right after the noise, in the order diffusers
  draws them, so a seed gives diffusers' noise.
* **Windowed temporal attention** (:class:`FrameWindows`). Only the steps that mix frames (the attentions of a
  temporal transformer block) run on windows of ``context_length`` frames whose starts are ``context_stride``
  apart; each frame's result is the weighted mean over the windows that hold it (:func:`frame_weights`:
  ``"flat"``, ``"pyramid"``, ``"delayed_reverse_sawtooth"``). Everything per frame or per pixel (convolutions,
  spatial attention, norms over the whole video, the blocks' feed-forwards) still sees the whole video, which
  is why this blends better than running the whole network window by window.

A pipeline composes :class:`vidcore.sampling.FreeNoiseMixin` (``enable_free_noise``): during each sampling run
the mixin puts a :class:`FrameWindows` on every temporal block of the denoiser (``block.frame_windows``, a hook the
blocks in :mod:`vidcore.nn.transformer` call) and offers the pipeline two small hooks for its call, one for the initial
noise and one for the per-frame text embeddings of a prompt schedule (:func:`schedule_embeddings`).

Compatibility with diffusers (``match_diffusers=True``, the default) keeps two quirks of diffusers 0.42 so that
outputs match seed for seed; ``match_diffusers=False`` repairs them:

1. When the windows do not end exactly at the last frame, diffusers adds a last window aligned with the end and
   takes from it only the frames no earlier window covered, but divides their weighted sum by the weight of the
   first of those frames for all of them, so the last few frames' hidden states are scaled down (by up to the
   ratio of the smallest to the largest window weight). Repaired, each such frame is divided by its own weight,
   i.e. it is that window's result.
2. ``noise_type="repeat_context"`` in diffusers compares the context length with a string where it means the
   noise type, so it draws noise for every frame and the repeat is a no-op: the result is ``"random"``.
   Repaired, the first ``context_length`` frames' noise is repeated.

Where diffusers fails, vidcore does the natural thing: a video no longer than one window runs unwindowed (the
plain model, bit for bit; diffusers raises for fewer frames than the window), an odd ``context_length`` with
``"delayed_reverse_sawtooth"`` gets ``context_length`` weights (diffusers builds one too many and fails), and a
one-frame prompt schedule gives that frame its prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

WEIGHTING_SCHEMES = ("flat", "pyramid", "delayed_reverse_sawtooth")
NOISE_TYPES = ("shuffle_context", "repeat_context", "random")


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class FreeNoiseSettings:
    """What ``enable_free_noise`` stores; see the module docstring for ``match_diffusers``."""

    context_length: int = 16
    context_stride: int = 4
    weighting_scheme: str = "pyramid"
    noise_type: str = "shuffle_context"
    prompt_interpolation_callback: Callable | None = None
    match_diffusers: bool = True

    def __post_init__(self):
        if not isinstance(self.context_length, int) or isinstance(self.context_length, bool) or self.context_length < 1:
            raise ValueError(f"context_length must be a positive integer, got {self.context_length!r}")
        if (not isinstance(self.context_stride, int) or isinstance(self.context_stride, bool)
                or not 1 <= self.context_stride <= self.context_length):
            raise ValueError(f"context_stride must be an integer between 1 and context_length={self.context_length} "
                             f"(a larger stride leaves frames outside every window), got {self.context_stride!r}")
        if self.weighting_scheme not in WEIGHTING_SCHEMES:
            raise ValueError(f"weighting_scheme must be one of {WEIGHTING_SCHEMES}, got {self.weighting_scheme!r}")
        if self.noise_type not in NOISE_TYPES:
            raise ValueError(f"noise_type must be one of {NOISE_TYPES}, got {self.noise_type!r}")
        if self.prompt_interpolation_callback is not None and not callable(self.prompt_interpolation_callback):
            raise ValueError("prompt_interpolation_callback must be a callable (start_frame, end_frame, start_embeds, "
                             f"end_embeds) -> embeds, got {type(self.prompt_interpolation_callback).__name__}")


# ----------------------------------------------------------------------------- windows and weights


def frame_weights(length: int, scheme: str = "pyramid") -> list[float]:
    """The weight of each frame of one ``length``-frame window when overlapping windows are blended.

    ``flat``: all 1. ``pyramid``: rising by one from each edge, ``[1, 2, 3, 2, 1]`` / ``[1, 2, 2, 1]``, so a
    window's edge frames, which saw the least context, count least (equation 9 of the paper).
    ``delayed_reverse_sawtooth``: the first half almost ignored (0.01), then falling from the middle,
    ``[0.01, 0.01, 3, 2, 1]`` / ``[0.01, 2, 2, 1]``: each window mostly hands over its later half, so a frame is
    decided by the window in which it comes early but not first.
    """
    if scheme not in WEIGHTING_SCHEMES:
        raise ValueError(f"weighting_scheme must be one of {WEIGHTING_SCHEMES}, got {scheme!r}")
    if scheme == "flat":
        return [1.0] * length
    half = (length + 1) // 2
    if scheme == "pyramid":
        return [float(min(i + 1, length - i)) for i in range(length)]
    if length % 2 == 0:
        return [0.01] * (half - 1) + [float(half)] + [float(w) for w in range(half, 0, -1)]
    return [0.01] * (half - 1) + [float(w) for w in range(half, 0, -1)]


def attention_windows(num_frames: int, context_length: int, context_stride: int) -> list[tuple[int, int]]:
    """``[start, end)`` windows of ``context_length`` frames starting at ``0, stride, 2 stride, ...`` while they
    fit, plus one aligned with the video's end when those do not reach it. One window for a short video."""
    if num_frames <= context_length:
        return [(0, num_frames)]
    windows = [(s, s + context_length) for s in range(0, num_frames - context_length + 1, context_stride)]
    if windows[-1][1] != num_frames:
        windows.append((num_frames - context_length, num_frames))
    return windows


class FrameWindows:
    """The hook a temporal block calls for its frame-mixing step (``block.frame_windows``).

    ``hook(mix, x, num_frames)``: ``x`` is ``(b f) n c`` tokens (frames of a video consecutive), ``mix(part,
    frames)`` the block's frame-mixing step with its residual on a ``(b frames) n c`` part. Short videos (at most
    one window) go to ``mix`` untouched. ``spatial_split_size`` (split inference) runs the step on at most that
    many pixels at a time, which caps the attention's memory and changes nothing else: each pixel attends only
    over its own frames.
    """

    def __init__(self, settings: FreeNoiseSettings | None, spatial_split_size: int | None = None):
        self.settings = settings
        self.spatial_split_size = spatial_split_size

    def __call__(self, mix, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        if self.spatial_split_size and x.shape[1] > self.spatial_split_size:
            return torch.cat([self._windowed(mix, part, num_frames)
                              for part in x.split(self.spatial_split_size, dim=1)], dim=1)
        return self._windowed(mix, x, num_frames)

    def _windowed(self, mix, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        s = self.settings
        if s is None or num_frames <= s.context_length:
            return mix(x, num_frames)
        length = s.context_length
        rows, n, c = x.shape
        video = x.reshape(rows // num_frames, num_frames, n, c)  # b f n c
        # the weights are rounded to the tokens' dtype first, as diffusers builds them
        weights = torch.tensor(frame_weights(length, s.weighting_scheme), device=x.device, dtype=x.dtype).float()
        total = torch.zeros_like(video)
        count = torch.zeros(num_frames, device=x.device, dtype=torch.float32)
        windows = attention_windows(num_frames, length, s.context_stride)
        # the end-aligned last window (when the stride did not land on the end) adds only the frames the
        # strided windows left uncovered
        covered = num_frames - (num_frames - length) % s.context_stride
        for k, (start, end) in enumerate(windows):
            out = mix(video[:, start:end].reshape(-1, n, c), end - start).reshape(-1, end - start, n, c)
            if covered < num_frames and k == len(windows) - 1:
                tail = num_frames - covered
                total[:, covered:] += out[:, -tail:] * weights[-tail:, None, None]
                count[covered:] += weights[-tail] if s.match_diffusers else weights[-tail:]
            else:
                total[:, start:end] += out * weights[:, None, None]
                count[start:end] += weights
        return (total / count[:, None, None]).to(x.dtype).reshape(rows, n, c)


# ----------------------------------------------------------------------------- noise rescheduling


def reschedule_noise(noise: torch.Tensor, num_frames: int, settings: FreeNoiseSettings, generator=None,
                     frame_dim: int = 2) -> torch.Tensor:
    """FreeNoise's initial noise from ``noise`` (frames along ``frame_dim``: 2 for ``b c f h w``, 1 for SVD's
    ``b f c h w``), which holds ``num_frames`` frames or, for the context noise types, the first
    ``context_length`` ones (a given ``latents=`` of that length).

    ``shuffle_context``: for ``i = context_length, context_length + stride, ...`` the frames ``i .. i + stride``
    become a permutation (``torch.randperm`` on ``generator``, the first one of a list) of the frames
    ``i - context_length .. i - context_length + stride``, in that order, later blocks reading earlier results.
    One permutation serves every video of the batch, as in diffusers.
    """
    x = noise.movedim(frame_dim, 2)
    have, length, stride = x.shape[2], settings.context_length, settings.context_stride
    if have != num_frames:
        if settings.noise_type == "random" or have != min(length, num_frames):
            allowed = num_frames if settings.noise_type == "random" else f"{num_frames} or context_length={length}"
            raise ValueError(f"latents for FreeNoise (noise_type={settings.noise_type!r}) must have {allowed} frames, "
                             f"got {have}")
        if settings.noise_type == "repeat_context":
            repeats = -(-num_frames // have)
            return torch.cat([x] * repeats, dim=2)[:, :, :num_frames].movedim(2, frame_dim)
        x = torch.cat([x, x.new_zeros(*x.shape[:2], num_frames - have, *x.shape[3:])], dim=2)
    elif settings.noise_type == "repeat_context" and not settings.match_diffusers and num_frames > length:
        repeats = -(-num_frames // length)
        return torch.cat([x[:, :, :length]] * repeats, dim=2)[:, :, :num_frames].movedim(2, frame_dim).contiguous()
    if settings.noise_type != "shuffle_context" or num_frames <= length:
        return noise if have == num_frames else x.movedim(2, frame_dim)
    x = x.clone()
    gen = generator[0] if isinstance(generator, (list, tuple)) else generator
    for i in range(length, num_frames, stride):
        source = torch.arange(i - length, min(num_frames, i - length + stride))
        source = source[torch.randperm(len(source), generator=gen, device=gen.device if gen is not None else "cpu")
                        .cpu()]
        end = min(num_frames, i + len(source))
        x[:, :, i:end] = x[:, :, source[: end - i]]
    return x.movedim(2, frame_dim).contiguous()


# ----------------------------------------------------------------------------- prompt travel


def lerp_embeddings(start_frame: int, end_frame: int, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """The default prompt interpolation: ``end_frame - start_frame + 1`` rows going linearly from ``start``
    (``1 m d``) to ``end``, both included."""
    steps = end_frame - start_frame
    return torch.cat([(1 - i / steps) * start + (i / steps) * end for i in range(steps + 1)])


def check_prompt_schedule(schedule, num_frames: int, name: str = "prompt") -> dict[int, str]:
    """A ``{frame: prompt}`` dict checked (integer frames from 0, the last below ``num_frames``, text prompts)
    and sorted by frame."""
    if not isinstance(schedule, dict) or not schedule:
        raise ValueError(f"{name} must be a string or a non-empty {{frame_index: prompt}} dict, got {schedule!r}")
    bad = [k for k in schedule if not isinstance(k, int) or isinstance(k, bool)]
    if bad:
        raise ValueError(f"{name} dict keys must be integer frame indices, got {bad}")
    bad = [v for v in schedule.values() if not isinstance(v, str)]
    if bad:
        raise ValueError(f"{name} dict values must be strings, got {bad}")
    frames = sorted(schedule)
    if frames[0] != 0:
        raise ValueError(f"{name} dict must start at frame 0 (the first frame needs a prompt), got first key "
                         f"{frames[0]}")
    if frames[-1] >= num_frames:
        raise ValueError(f"{name} dict frame index {frames[-1]} is out of range for num_frames={num_frames} "
                         f"(frames are 0..{num_frames - 1})")
    return {k: schedule[k] for k in frames}


def schedule_embeddings(schedule: dict[int, str], num_frames: int, encode: Callable[[list[str]], torch.Tensor],
                        interpolate: Callable | None = None) -> torch.Tensor:
    """Per-frame embeddings ``f m d`` of a checked prompt schedule: ``encode`` (prompts -> ``k m d``) runs once on
    the key prompts (the last one repeated at the last frame when it has no key there), and each pair of
    consecutive keys ``(a, b)`` fills frames ``a..b`` with ``interpolate(a, b, embeds_a, embeds_b)`` (default
    :func:`lerp_embeddings`; ``1 m d`` in, ``b - a + 1`` rows out), a later pair overwriting their shared frame
    (the same result for the default)."""
    interpolate = interpolate or lerp_embeddings
    schedule = dict(schedule)
    schedule[num_frames - 1] = schedule[max(schedule)]
    frames = list(schedule)
    keys = encode(list(schedule.values()))
    if len(frames) == 1:  # a one-frame video
        return keys[:1]
    out = keys.new_zeros(num_frames, *keys.shape[1:])
    for k in range(len(frames) - 1):
        a, b = frames[k], frames[k + 1]
        rows = interpolate(a, b, keys[k: k + 1], keys[k + 1: k + 2])
        if tuple(rows.shape) != (b - a + 1, *keys.shape[1:]):
            raise ValueError(f"prompt_interpolation_callback({a}, {b}, ...) must return shape "
                             f"{(b - a + 1, *keys.shape[1:])}, got {tuple(rows.shape)}")
        out[a: b + 1] = rows
    return out
