"""The low-memory preset (issue #29): in one call, every setting that lowers a pipeline's peak memory on the
device it runs on, so a user with a small GPU (or a laptop) need not know the dozen switches.

Settings are applied only where this pipeline has them (looked up by name), and the result says which were
skipped: what ran is what the CLI prints and what ``benchmarks/bench_memory.py`` measures.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

# the SVD temporal decoder's chunk without "auto": diffusers' documented SVD low-memory recipe
TEMPORAL_DECODE_CHUNK = 2


@dataclass
class LowMemoryPreset:
    """What :func:`apply_low_memory` did: ``applied`` and ``skipped`` settings (human readable), the arguments
    each call must add (``call_kwargs``, e.g. ``decode_chunk_size``), and whether it placed the models on the
    device itself (``placed``: offload), so the caller must not ``pipe.to(device)`` afterwards."""

    applied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    call_kwargs: dict = field(default_factory=dict)
    placed: bool = False

    def __str__(self) -> str:
        line = "low memory: " + (", ".join(self.applied) or "nothing applies")
        return line + (f" (not available here: {', '.join(self.skipped)})" if self.skipped else "")


def _method(obj, name: str):
    """``obj.name`` if it is a method this checkout has, else None (a missing feature is not an error here)."""
    found = getattr(obj, name, None)
    return found if callable(found) else None


def _try(preset: LowMemoryPreset, obj, name: str, label: str, *args, **kwargs) -> bool:
    method = _method(obj, name)
    if method is None:
        preset.skipped.append(f"{label} ({name})")
        return False
    method(*args, **kwargs)
    preset.applied.append(label)
    return True


def _decode(pipe, preset: LowMemoryPreset) -> None:
    """Chunked decode. With a memory budget (a CUDA device's free memory, or ``set_max_memory``) the pipeline
    sizes the chunks itself (``decode_chunk_size="auto"``); without one (the CPU) a 2D VAE decodes one frame per
    call (the same video up to float rounding) and SVD's temporal decoder ``TEMPORAL_DECODE_CHUNK`` frames (changes
    the video a little: the decoder mixes frames only inside a chunk); a pipeline without the argument gets VAE
    slicing."""
    takes_chunks = "decode_chunk_size" in inspect.signature(type(pipe).__call__).parameters
    budget = pipe.memory_budget() if _method(pipe, "memory_budget") is not None else None
    if takes_chunks and budget is not None:
        preset.call_kwargs["decode_chunk_size"] = "auto"
        preset.applied.append("decode_chunk_size auto")
    elif takes_chunks:
        chunk = TEMPORAL_DECODE_CHUNK if _method(getattr(pipe, "vae", None), "enable_slicing") is None else 1
        preset.call_kwargs["decode_chunk_size"] = chunk
        preset.applied.append(f"decode_chunk_size {chunk}")
    elif _method(getattr(pipe, "vae", None), "enable_slicing") is not None:
        pipe.enable_vae_slicing()
        preset.applied.append("VAE slicing")


def apply_low_memory(pipe, device: str | torch.device = "cpu") -> LowMemoryPreset:
    """Turn on what lowers peak memory on ``device`` and return what was done.

    CUDA: fp8 weight storage (when the pipeline computes in bf16 / fp16), weights streamed from the CPU (group
    offload with CUDA streams, else model offload), guidance halves one after the other, forward chunking,
    chunked decode. CPU (offload and fp8 storage save nothing there that matters for the peak of a stage): split
    guidance, forward chunking, attention slicing, chunked decode. Call this before moving the pipeline to
    ``device``; when ``placed`` is True the offload owns the placement.
    """
    device = torch.device(device)
    preset = LowMemoryPreset()
    cuda = device.type == "cuda"
    if cuda and pipe.dtype in (torch.bfloat16, torch.float16):
        _try(preset, pipe, "enable_layerwise_casting", "fp8 weight storage", storage_dtype=torch.float8_e4m3fn,
             compute_dtype=pipe.dtype)
    if cuda:
        if _try(preset, pipe, "enable_group_offload", "group offload (block level, CUDA streams)", device,
                offload_device="cpu", offload_type="block_level", num_blocks_per_group=1, use_stream=True):
            preset.placed = True
        else:
            pipe.enable_model_cpu_offload(device)
            preset.applied.append("model CPU offload")
            preset.placed = True
    _try(preset, pipe, "set_guidance_batching", "split guidance", "split")
    _try(preset, pipe.unet, "enable_forward_chunking", "forward chunking")
    if not cuda:
        _try(preset, pipe, "enable_attention_slicing", "attention slicing")
    _decode(pipe, preset)
    return preset


__all__ = ["LowMemoryPreset", "apply_low_memory", "TEMPORAL_DECODE_CHUNK"]
