"""Keyframe interpolation for Stable Video Diffusion without training: a video from ``image`` to ``last_image``.

Bidirectional sampling in the manner of ViBiDSampler (Yang et al., "ViBiDSampler: Enhancing Video Interpolation
Using Bidirectional Diffusion Sampler", ICLR 2025). SVD only knows how to continue a video from its first frame.
Played backwards, a video from A to B is a video from B to A, so SVD can also be asked to continue the
*time-reversed* latents from B. Each sampling interval sigma_i -> sigma_(i+1) is crossed twice:

1. forward: one Euler step on the latents, conditioned on ``image`` (frame 0 is A);
2. re-noise: add fresh noise of variance sigma_i^2 - sigma_(i+1)^2, back to the level sigma_i;
3. backward: flip the frames, one Euler step over the same interval conditioned on ``last_image`` (so the last
   frame is B's first), flip back.

The two directions thus refine one shared trajectory instead of fighting over it (averaging two independent
predictions blurs the middle frames); each step costs two UNet passes. The per-frame guidance scales apply in each
pass's own frame order, lowest at the frame that copies its keyframe. The paper adds CFG++ and DDS guidance on
top; this is the plain sampler on SVD's Euler/EDM schedule.
"""

from __future__ import annotations

from ..random import randn_tensor


def keyframe_step(scheduler, predict_last, generator=None):
    """The bidirectional step (a :data:`vidcore.sampling.loop.Step`) for ``b f 4 h w`` latents: the scheduler's
    step on the forward prediction (from the first keyframe), re-noising back to sigma_i, then the step on
    ``predict_last(reversed latents, t)`` (the prediction conditioned on the last keyframe) over the
    time-reversed frames."""
    def step(pred, t, latents):
        stepped = scheduler.step(pred, t, latents)  # forward: sigma_i -> sigma_(i+1), from the first image
        index = scheduler.step_index
        sigma, sigma_next = float(scheduler.sigmas[index - 1]), float(scheduler.sigmas[index])
        noise = randn_tensor(tuple(stepped.shape), generator, stepped.device, stepped.dtype)
        renoised = stepped + noise * (sigma**2 - sigma_next**2) ** 0.5  # back to sigma_i
        scheduler.repeat_step()
        reversed_ = renoised.flip(1)  # time-reversed: the last frame first
        return scheduler.step(predict_last(reversed_, t), t, reversed_).flip(1)  # backward, from the last image

    return step


__all__ = ["keyframe_step"]
