"""The memory budget behind ``set_guidance_batching("auto")`` and ``decode_chunk_size="auto"``, and the
estimates they compare against it.

The budget is the user's ``pipe.set_max_memory(...)`` (bytes, or "2GB" / "512MiB"), else the free memory of a
CUDA device (``torch.cuda.mem_get_info``), else unknown (CPU): an unknown budget makes "auto" choose what
diffusers does (the joint guidance batch, all frames in one decode).

The estimates are deliberately simple, upper-bound-leaning rules of thumb (see docs/memory.md, "Activations"):

* one UNet call's activation peak ~ ``UNET_COPIES * batch * frames * h * w * C0 * element_size``: the
  ``C0``-channel feature map at full latent resolution (``block_out_channels[0]``) held ``UNET_COPIES`` times
  (residual inputs, norms, convs, attention q/k/v/out, the skip connections of every level). ``UNET_COPIES = 40``
  is calibrated on CPU (VmHWM, benchmarks/bench_activation_estimates.py, RESULTS.md "Activation estimates"): a
  2-level UNet3D (64/128 channels) on 4 frames of 32 x 32 and 48 x 48 latents peaked at 31-40 copies;
* one frame in a VAE decoder call ~ ``VAE_COPIES * (h * s) * (w * s) * C1 * element_size``: the widest feature
  map at output resolution (the last upsampler's output, ``C1 = max(block_out_channels[:2])`` channels) held
  ``VAE_COPIES`` times. ``VAE_COPIES = 4`` is calibrated with benchmarks/RESULTS.md "SVD VAE decode: time and
  peak memory" (CPU VmHWM, half-width SVD decoder 64/128/256/256, 64x64 frames, float32): 114 MiB for 14 frames,
  8.1 MiB a frame, where the formula gives 4 * 64 * 64 * 128 * 4 B = 8.0 MiB. The SD 2D decoder has no temporal
  layers, so the same rule overestimates it slightly (the safe side).
"""

from __future__ import annotations

import re

import torch

UNIT_BYTES = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
UNET_COPIES = 40
VAE_COPIES = 4


def parse_bytes(value) -> int | None:
    """``max_memory`` as bytes: an int, a string such as "2GB", "1.5 GiB", "512MiB", or None (no budget)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"max_memory must be bytes (int), a string such as '2GB' / '512MiB', or None; got {value!r}")
    if isinstance(value, int):
        number, unit = value, ""
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
        if m is None or m.group(2).upper() not in UNIT_BYTES:
            raise ValueError(f"max_memory {value!r}: expected a number with a unit among "
                             f"{sorted(u for u in UNIT_BYTES if u)}, e.g. '2GB' or '512MiB'")
        number, unit = float(m.group(1)), m.group(2).upper()
    size = int(number * UNIT_BYTES[unit])
    if size <= 0:
        raise ValueError(f"max_memory must be positive, got {value!r}")
    return size


def available_bytes(max_memory: int | None, device: torch.device) -> int | None:
    """The budget for activations: ``max_memory`` when set, else the CUDA device's free memory, else None."""
    if max_memory is not None:
        return max_memory
    if device.type == "cuda":  # free on the device, plus what PyTorch's caching allocator holds but does not use
        return torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return None


def unet_activation_bytes(latents: torch.Tensor, latent_channels: int, base_channels: int) -> int:
    """Estimated activation peak of one UNet call on ``latents`` (any layout holding ``latent_channels``
    channels per position, e.g. ``b c f h w`` or ``b f c h w``): see the module docstring."""
    positions = latents.numel() // latent_channels
    return UNET_COPIES * positions * base_channels * latents.element_size()


def decoded_frame_bytes(latent_height: int, latent_width: int, scale_factor: int, block_out_channels,
                        element_size: int) -> int:
    """Estimated decoder activation bytes per frame decoded in one call (see the module docstring)."""
    pixels = latent_height * scale_factor * latent_width * scale_factor
    return VAE_COPIES * pixels * max(block_out_channels[:2]) * element_size


def fitting_chunk(budget: int, per_item: int, count: int) -> int:
    """The largest number of items (at least 1, at most ``count``) whose ``per_item`` bytes fit ``budget``."""
    return max(1, min(count, budget // per_item))


__all__ = ["available_bytes", "decoded_frame_bytes", "fitting_chunk", "parse_bytes", "unet_activation_bytes"]
