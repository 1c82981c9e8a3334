"""The one denoising loop (design principle 4).

Every pipeline samples through :func:`denoise`. What differs between families is only the prediction, so a
pipeline hands the loop a ``predict(latents, t, step) -> model output`` callable (k-diffusion's "the model is
any callable") and a ``step(output, t, latents) -> latents`` (usually :func:`scheduler_step`). Guidance,
context windows, ControlNet residuals and keyframes live in those two callables, never in the loop.

The loop owns what every family used to repeat: the progress bar and step clock (:class:`Progress`, which
also drives the step caches), diffusers' ``callback_on_step_end`` and legacy ``callback`` (:class:`StepEnd`),
and interruption (a callback sets ``pipe._interrupt = True``, as in diffusers: the remaining steps are skipped
and the latents so far are returned).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

Predict = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (latents, t, step) -> model output
Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (output, t, latents) -> latents


def scheduler_step(scheduler, **kwargs) -> Step:
    """``scheduler.step(output, t, latents, **kwargs)`` (``eta``, ``generator`` ...) as a :data:`Step`."""
    def step(output, t, latents):
        return scheduler.step(output, t, latents, **kwargs)

    return step


def frames_in_batch(step: Step) -> Step:
    """``step`` for ``b c f h w`` latents run on ``(b f) c h w``: ModelScope's pipelines step the frames folded
    into the batch, which fixes the order of the scheduler's noise draws (``eta > 0``), as diffusers."""
    def folded(output, t, latents):
        b, c, f, h, w = latents.shape

        def fold(x):
            return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)

        return step(fold(output), t, fold(latents)).reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)

    return folded


def check_callback_inputs(names, allowed) -> None:
    """``callback_on_step_end_tensor_inputs`` may only name tensors the pipeline hands to the callback."""
    bad = [k for k in names if k not in allowed]
    if bad:
        raise ValueError(f"callback_on_step_end_tensor_inputs must be among {tuple(allowed)}, got {bad}")


class StepEnd:
    """What runs after every step, for one pipeline call.

    ``tensors`` are the call's tensors beside the latents that ``callback_on_step_end(pipe, step, t, {name:
    tensor})`` may read and replace (the prompt embeddings ...); a pipeline's ``predict`` reads them from
    ``step_end.tensors``, so a replacement counts from the next step on. The legacy ``callback(step, t,
    latents)`` runs every ``callback_steps`` steps. A callback that sets ``pipe._interrupt = True`` ends the
    sampling (the flag is consumed, so the pipeline keeps no state from the call); ``interrupted`` then stays
    True for the rest of the call, so later runs (FreeInit rounds, Text2Video-Zero's phases) do not start."""

    def __init__(self, pipe: Any = None, callback_on_step_end: Callable | None = None,
                 tensor_inputs: Sequence[str] | None = ("latents",), tensors: dict | None = None,
                 callback: Callable | None = None, callback_steps: int | None = 1):
        self.tensors = dict(tensors or {})
        tensor_inputs = tuple(tensor_inputs or ())  # None: the callback gets no tensors
        check_callback_inputs(tensor_inputs, ("latents", *self.tensors))
        self.pipe, self.on_step_end, self.tensor_inputs = pipe, callback_on_step_end, tuple(tensor_inputs)
        self.callback, self.callback_steps = callback, callback_steps or 1
        self._first, self._stop = dict(self.tensors), [False]

    @property
    def interrupted(self) -> bool:
        return self._stop[0]

    def fresh(self) -> "StepEnd":
        """The same callbacks on the call's first tensors again, sharing the interruption: for pipelines whose
        FreeInit rounds each start from the call's inputs (ModelScope, I2VGen-XL, as before the one loop)."""
        again = StepEnd(self.pipe, self.on_step_end, self.tensor_inputs, self._first, self.callback,
                        self.callback_steps)
        again._stop = self._stop
        return again

    def __call__(self, i: int, t, latents: torch.Tensor) -> torch.Tensor:
        if self.on_step_end is not None:
            current = {"latents": latents, **self.tensors}
            out = self.on_step_end(self.pipe, i, t, {k: current[k] for k in self.tensor_inputs}) or {}
            latents = out.get("latents", latents)
            self.tensors = {k: out.get(k, v) for k, v in self.tensors.items()}
        if self.callback is not None and i % self.callback_steps == 0:
            self.callback(i, t, latents)
        if getattr(self.pipe, "_interrupt", False):
            try:  # consumed: the flag the callback set goes, nothing of the call stays on the pipeline
                del self.pipe._interrupt
            except AttributeError:
                self.pipe._interrupt = False
            self._stop[0] = True
        return latents


class Progress:
    """A sampling run's progress bar and step clock, shared by consecutive :func:`denoise` calls that make one
    run (Text2Video-Zero's three phases): ``step`` counts over all of them. ``clock``: a step cache
    (:class:`vidcore.sampling.step_cache.StepCache`) that restarts with the run and advances with each step.
    ``scope``: a context manager held for the run (the pipeline's step cache attached to its UNet)."""

    def __init__(self, total: int, bar_config: dict | None = None, clock=None, scope=None):
        self.bar = tqdm(total=total, **(bar_config or {}))
        self.clock, self.step, self.scope = clock, 0, scope
        if clock is not None:
            clock.begin(total)
            clock.next_step()
        if scope is not None:
            scope.__enter__()

    def advance(self) -> None:
        self.step += 1
        self.bar.update()
        if self.clock is not None:
            self.clock.next_step()

    def close(self) -> None:
        self.bar.close()
        if self.clock is not None:
            self.clock.end()
        if self.scope is not None:
            self.scope.__exit__(None, None, None)
            self.scope = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def denoise(latents: torch.Tensor, timesteps, predict: Predict, step: Step, step_end: StepEnd | None = None,
            progress: Progress | None = None) -> torch.Tensor:
    """Run ``timesteps``: ``latents = step(predict(latents, t, i), t, latents)``, then the step callbacks.

    ``progress``: the run's bar and clock (a fresh bar over ``timesteps`` when None, closed at the end)."""
    own = progress is None
    progress = Progress(len(timesteps)) if own else progress
    try:
        for t in timesteps:
            if step_end is not None and step_end.interrupted:
                break
            i = progress.step
            latents = step(predict(latents, t, i), t, latents)
            if step_end is not None:
                latents = step_end(i, t, latents)
            progress.advance()
    finally:
        if own:
            progress.close()
    return latents


__all__ = ["Predict", "Progress", "Step", "StepEnd", "check_callback_inputs", "denoise", "frames_in_batch",
           "scheduler_step"]
