"""MotionDirector's dual-path LoRA training (Zhao et al. 2023, "MotionDirector: Motion Customization of
Text-to-Video Diffusion Models", github.com/showlab/MotionDirector), on ModelScope/Zeroscope and AnimateDiff.

What we follow, read from the paper and the authors' training script (``MotionDirector_train.py``):

- One UNet carries two sets of LoRA branches, on the same linears as the authors' ``utils/lora.py`` picks: *spatial*
  ones in the image transformers' self-attention (``attn1``: q, k, v, out) and feed-forward (``ff``) layers, the
  text cross-attention left alone; *temporal* ones in the temporal transformers' ``attn1``, ``attn2`` and ``ff``
  (ModelScope's ``temp_attentions`` and ``transformer_in``, AnimateDiff's motion modules). Both start from the usual
  LoRA init (B = 0).
- Every step draws one noisy clip (same noise, timestep and caption for both paths) and runs two passes:

  1. the **spatial path**: one random frame of the noisy clip run as a 1-frame video, temporal branches switched
     off, loss = MSE against that frame's target; it trains the spatial branches only, so they absorb the
     clips' appearance. With probability 0.2 this path is skipped for the step (the authors' script masks it so;
     then the spatial branches also stay off in the temporal pass below).
  2. the **temporal path**: the whole clip with the temporal branches on and the spatial branches on but not
     trained, loss = MSE + the *appearance-debiased* temporal loss: with an anchor frame a drawn at random,
     compare ``sqrt(beta^2 + 1) * x - beta * x[:, :, a]`` of prediction and target (beta = 1), which removes what
     every frame shares with the anchor (appearance) and leaves the frame-to-frame differences (motion). It
     trains the temporal branches only: since the spatial branches already explain the look of the clips, the
     temporal ones are pushed to learn the motion.

- Both sets are saved; at inference one uses the temporal LoRA (the motion) with any prompt, optionally with the
  spatial one for the reference appearance.

Differences from the authors' script, on purpose: one AdamW over both sets (their two optimizers step the same
way, AdamW being per parameter, and parameters without a gradient in a step are skipped by both); the random
frame, anchor and mask are drawn from the trainer's per-step seeded generator instead of the global RNGs (so a
resumed or multi-process run draws the same ones); one spatial LoRA for all clips (their multi-video config; the
single-video variant is the same with one clip); the frozen UNet runs in eval mode (theirs in train mode, which
turns on ModelScope's temporal-convolution dropout); no offset noise, text-encoder training or latent caching
(options of their script that their example configs do not set). The logged loss of a step is the sum of the
spatial and the temporal losses.

Their example multi-video config (Zeroscope) as flags: ``--motion-director --rank 32 --dropout 0.1 --lr 5e-4
--steps 500 --num-frames 16 --height 384 --width 384 --mixed-precision fp16 --gradient-checkpointing``; samples
use the temporal LoRA alone (their ``spatial_scale: 0``), as ours do.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .lora import PROJECTIONS, TEMPORAL_PARENT, diffusers_linear_names, lora_layers

SPATIAL_MASK_PROBABILITY = 0.2  # the authors' chance of skipping the spatial path in a step
DEBIAS_BETA = 1.0

# the layers of a transformer block each path adapts (diffusers layer names; the temporal parents: training.lora's)
_FF = r"ff\.net\.(0\.proj|2)"
SPATIAL_LAYERS = (rf"^(?!.*{TEMPORAL_PARENT}).*\.attentions\.\d+\.transformer_blocks\.\d+"
                  rf"\.(attn1\.{PROJECTIONS}|{_FF})$")
TEMPORAL_LAYERS = rf"{TEMPORAL_PARENT}.*transformer_blocks\.\d+\.(attn[12]\.{PROJECTIONS}|{_FF})$"


def motion_director_targets() -> tuple[str, ...]:
    """The layer patterns of both paths (add_lora's ``target``)."""
    return (SPATIAL_LAYERS, TEMPORAL_LAYERS)


def split_layers(unet: nn.Module) -> tuple[dict[str, nn.Linear], dict[str, nn.Linear]]:
    """The LoRA-carrying linears of ``unet`` as (spatial, temporal), each {diffusers layer name: linear}."""
    names = diffusers_linear_names(unet)
    temporal = re.compile(TEMPORAL_PARENT)
    spatial_layers, temporal_layers = {}, {}
    for vname, linear in lora_layers(unet):
        layer = names[vname]
        (temporal_layers if temporal.search(layer) else spatial_layers)[layer] = linear
    return spatial_layers, temporal_layers


def branch_parameters(layers: dict[str, nn.Linear]) -> list[nn.Parameter]:
    return [p for linear in layers.values() for p in linear.lora.parameters()]


@contextmanager
def branches(layers: dict[str, nn.Linear], *, on: bool = True, train: bool = True) -> Iterator[None]:
    """Within the block, ``layers``' branches are switched off (``on=False``: scale 0) and/or frozen
    (``train=False``: no gradient flows into them); both are restored after."""
    saved = [(linear.lora, linear.lora.scale, [p.requires_grad for p in linear.lora.parameters()])
             for linear in layers.values()]
    try:
        for lora, scale, _ in saved:
            if not on:
                lora.scale = 0.0
            if not train:
                lora.requires_grad_(False)
        yield
    finally:
        for lora, scale, flags in saved:
            lora.scale = scale
            for p, flag in zip(lora.parameters(), flags):
                p.requires_grad_(flag)


def debiased_loss(pred: torch.Tensor, target: torch.Tensor, anchor: int, beta: float = DEBIAS_BETA) -> torch.Tensor:
    """MotionDirector's appearance-debiased temporal loss on ``b c f h w`` tensors: the MSE of
    ``sqrt(beta^2 + 1) * x - beta * x[:, :, anchor]`` between prediction and target."""
    alpha = math.sqrt(beta * beta + 1.0)
    p = alpha * pred - beta * pred[:, :, anchor:anchor + 1]
    t = alpha * target - beta * target[:, :, anchor:anchor + 1]
    return F.mse_loss(p.float(), t.float())


__all__ = ["DEBIAS_BETA", "SPATIAL_LAYERS", "SPATIAL_MASK_PROBABILITY", "TEMPORAL_LAYERS", "TEMPORAL_PARENT",
           "branch_parameters", "branches", "debiased_loss", "motion_director_targets", "split_layers"]
