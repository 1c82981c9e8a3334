"""Decoding long latent videos with a temporal VAE decoder, chunk by chunk, with overlapping chunks blended.

SVD's temporal decoder mixes the frames it is given (3D convolutions and a temporal block), so a video decoded
``decode_chunk_size`` frames at a time shows a jump at every chunk border: the frames on either side never saw
each other. With ``overlap = k`` consecutive chunks share ``k`` frames; in the shared frames the two decodes are
mixed with linear weights (the earlier chunk fading out, the later one fading in), so the result moves from one
chunk's decode to the next smoothly. Only one chunk is decoded at a time (memory stays bounded by the chunk
size); the cost grows by about ``chunk / (chunk - k)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def overlapping_chunks(num_frames: int, chunk: int, overlap: int) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of at most ``chunk`` frames, each starting ``chunk - overlap`` after the previous,
    until the video is covered (the last may be shorter)."""
    if not 0 <= overlap < chunk:
        raise ValueError(f"decode_overlap must be in [0, decode_chunk_size={chunk}), got {overlap}")
    step = chunk - overlap
    ranges = [(0, min(chunk, num_frames))]
    while ranges[-1][1] < num_frames:
        start = ranges[-1][0] + step
        ranges.append((start, min(start + chunk, num_frames)))
    return ranges


def blend_weights(ranges: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Per chunk, a weight per frame: 1, ramping linearly down over the frames shared with the next chunk and up
    over those shared with the previous one, so the weights of every frame sum to 1."""
    out = []
    for i, (start, end) in enumerate(ranges):
        w = torch.ones(end - start, dtype=torch.float32)
        if i > 0:
            shared = ranges[i - 1][1] - start
            w[:shared] = torch.arange(1, shared + 1, dtype=torch.float32) / (shared + 1)
        if i + 1 < len(ranges):
            shared = end - ranges[i + 1][0]
            w[end - start - shared:] = 1 - torch.arange(1, shared + 1, dtype=torch.float32) / (shared + 1)
        out.append(w)
    return out


def decode_overlapping(decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, chunk: int,
                       overlap: int) -> torch.Tensor:
    """One video's ``f c h w`` latents -> ``f C H W`` frames, decoded ``chunk`` frames at a time with ``overlap``
    shared frames blended (float32 accumulation; the decoder's dtype out)."""
    ranges = overlapping_chunks(z.shape[0], chunk, overlap)
    out, dtype = None, None
    for (start, end), w in zip(ranges, blend_weights(ranges)):
        frames = decode(z[start:end])
        if out is None:
            out = torch.zeros(z.shape[0], *frames.shape[1:], dtype=torch.float32, device=frames.device)
            dtype = frames.dtype
        out[start:end] += frames.float() * w.to(frames.device).view(-1, *([1] * (frames.ndim - 1)))
    return out.to(dtype)


__all__ = ["blend_weights", "decode_overlapping", "overlapping_chunks"]
