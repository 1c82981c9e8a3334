"""The one place where frame-mixing ops can be redirected (frame-parallel inference).

Every op in ``nn/`` that mixes the frames of a video asks :func:`frame_handler` first:

* ``temporal_attend``  (nn/attention.py) – attention over frames, ``(b f) n (heads d)`` layout,
* ``frame_conv``       (nn/resnet.py)    – the (3, 1, 1) convolution over frames, ``b c f h w``,
* ``video_norm``       (nn/resnet.py)    – GroupNorm whose statistics span all frames, ``b c f h w``
  (``video_group_norm`` in nn/transformer.py goes through it);

and embeddings indexed by frame position (SVD's frame-index embedding, AnimateDiff's sinusoidal
positions) start at :func:`frame_start`.

With no handler installed (the default) they run their ordinary single-process code. A handler
(``vidcore.parallel.frames.FrameShardHandler``) sees only this process's contiguous slice of
frames and makes each op exact across processes (all-to-all, halo exchange, all-reduced
statistics). Handlers implement ``temporal_attend(q, k, v, num_frames, heads, backend, slice_size)``,
``frame_conv(conv, x)``, ``group_norm(norm, x)`` and ``frame_start(num_frames)``; ``num_frames`` is
then the local count.
"""

from __future__ import annotations

from contextlib import contextmanager

_HANDLER = None


def frame_handler():
    """The installed handler, or None (ordinary single-process ops)."""
    return _HANDLER


def frame_start(num_frames: int) -> int:
    """Position in the video of the first of the ``num_frames`` frames at hand (0 unless sharded)."""
    return 0 if _HANDLER is None else _HANDLER.frame_start(num_frames)


@contextmanager
def use_frame_handler(handler):
    """Install ``handler`` for the frame-mixing ops while the block runs (``None``: plain ops)."""
    global _HANDLER
    previous = _HANDLER
    _HANDLER = handler
    try:
        yield handler
    finally:
        _HANDLER = previous
