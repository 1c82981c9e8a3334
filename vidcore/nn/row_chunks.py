"""Run a per-frame layer on a ``(b f)`` batch a few rows at a time (FreeNoise's split inference).

Layers that treat the rows of their batch independently (res blocks, spatial transformers, down/up samplers)
carry a plain field ``row_chunk`` (None: off). Their ``forward`` is decorated with :func:`in_row_chunks`, which
runs it on at most ``row_chunk`` rows at a time when the field is set: the same result with a lower peak memory.
A setting, not a replacement of ``forward``: ``row_chunk = None`` is the plain layer again."""

from __future__ import annotations

import functools

import torch


def in_row_chunks(forward):
    """Decorate a layer's ``forward(x, *args, **kwargs)``: with ``self.row_chunk`` set, ``x`` is split into chunks
    of that many rows; tensor arguments with the same rows are split alongside, ones with one row per video (a
    shared text context, a per-video time embedding) are first repeated for every frame of it."""
    @functools.wraps(forward)
    def chunked(self, x, *args, **kwargs):
        size, rows = getattr(self, "row_chunk", None), x.shape[0]
        if size is None or rows <= size:
            return forward(self, x, *args, **kwargs)

        def per_row(a):
            if torch.is_tensor(a) and a.ndim and a.shape[0] != rows and rows % a.shape[0] == 0:
                a = a.repeat_interleave(rows // a.shape[0], dim=0)
            return a.split(size) if torch.is_tensor(a) and a.ndim and a.shape[0] == rows else None

        split_args = [per_row(a) for a in args]
        split_kwargs = {k: per_row(v) for k, v in kwargs.items()}
        outs = []
        for i, part in enumerate(x.split(size)):
            a = [s[i] if s is not None else v for s, v in zip(split_args, args, strict=True)]
            kw = {k: (split_kwargs[k][i] if split_kwargs[k] is not None else v) for k, v in kwargs.items()}
            outs.append(forward(self, part, *a, **kw))
        return torch.cat(outs)

    return chunked


__all__ = ["in_row_chunks"]
