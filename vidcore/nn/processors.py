"""diffusers' attention processors as user settings: ``model.set_attn_processor(CrossFrameAttnProcessor(2))``.

In diffusers a processor object computes each attention. Here :class:`~vidcore.nn.attention.Attention` computes it
and a processor only says where a spatial self-attention takes its keys and values from; it is kept as a plain
field (``Attention.processor``), set by :meth:`AttentionProcessorMixin.set_attn_processor` and read in ``forward``
(nothing replaces ``forward``). ``set_attn_processor(AttnProcessor())`` gives the default outputs exactly again.

:class:`CrossFrameAttnProcessor` is Text2Video-Zero's cross-frame attention as diffusers' Text2Video-Zero module
defines it for image pipelines run on frames: the batch of a self-attention is cut into ``batch_size`` equal groups
of consecutive rows (``frames = max(1, rows // batch_size)`` rows each) and every row takes its keys and values from
the first row of its group. With classifier-free guidance (``[uncond; cond]``) ``batch_size=2`` makes every frame of
each half attend to that half's first frame; InstructPix2Pix's three-way guidance needs ``batch_size=3``. The split
goes by the rows a call has, exactly as diffusers', so a ControlNet in guess mode (run on the conditional half only)
with ``batch_size=2`` splits its frames in two groups. Cross-attentions (to text) are never changed, and in the
video UNets temporal attentions keep attending over frames (diffusers would regroup their rows too).
"""

from __future__ import annotations

import torch
from torch import nn


class AttnProcessor:
    """The default: ordinary attention (diffusers' ``AttnProcessor`` / ``AttnProcessor2_0``)."""

    def self_attention_source(self, x: torch.Tensor) -> torch.Tensor | None:
        """The tokens a self-attention over ``x`` takes keys and values from; None: ``x`` itself."""
        return None

    def __repr__(self) -> str:
        return "AttnProcessor()"


class CrossFrameAttnProcessor(AttnProcessor):
    """Every row of a self-attention's batch attends to the first row of its group (see the module docstring)."""

    def __init__(self, batch_size: int = 2):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer (2 with classifier-free guidance, 3 for "
                             f"InstructPix2Pix, 1 without guidance), got {batch_size!r}")
        self.batch_size = batch_size

    def self_attention_source(self, x: torch.Tensor) -> torch.Tensor:
        """``rows n c`` -> each group's first row repeated over the group (a view). Projecting keys/values from it
        equals projecting every row and then picking the group's first, as diffusers does."""
        rows = x.shape[0]
        frames = max(1, rows // self.batch_size)
        if rows % frames:
            raise ValueError(f"CrossFrameAttnProcessor(batch_size={self.batch_size}): a batch of {rows} rows does not "
                             f"split into groups of {frames} frames; use a batch_size that divides it")
        groups = x.view(rows // frames, frames, *x.shape[1:])
        return groups[:, :1].expand_as(groups).reshape(x.shape)

    def __repr__(self) -> str:
        return f"CrossFrameAttnProcessor(batch_size={self.batch_size})"


PROCESSOR_TYPES = (AttnProcessor,)


def _check(processor, where: str) -> AttnProcessor:
    if not isinstance(processor, PROCESSOR_TYPES):
        raise TypeError(f"{where} must be vidcore.AttnProcessor() or vidcore.CrossFrameAttnProcessor(batch_size=...), "
                        f"got {type(processor).__name__}")
    return processor


class AttentionProcessorMixin:
    """``attn_processors`` / ``set_attn_processor`` for a model holding :class:`~vidcore.nn.attention.Attention`
    modules, keyed as diffusers keys them (``"<module name>.processor"``; the same names as diffusers' for UNet2D and
    ControlNet)."""

    def _attention_modules(self: nn.Module) -> dict:
        from .attention import Attention

        return {f"{name}.processor": m for name, m in self.named_modules() if isinstance(m, Attention)}

    @property
    def attn_processors(self) -> dict[str, AttnProcessor]:
        """``{"<module name>.processor": processor}`` for every attention (the default shown as ``AttnProcessor()``);
        pass it back to ``set_attn_processor`` to restore."""
        return {name: m.processor or AttnProcessor() for name, m in self._attention_modules().items()}

    def set_attn_processor(self, processor: AttnProcessor | dict[str, AttnProcessor]) -> None:
        """Use ``processor`` in every attention, or ``{name: processor}`` with one entry per attention (the names of
        ``attn_processors``). ``AttnProcessor()`` restores the default."""
        modules = self._attention_modules()
        if isinstance(processor, dict):
            unknown, missing = sorted(set(processor) - set(modules)), sorted(set(modules) - set(processor))
            if unknown or missing:
                raise ValueError(f"a dict of processors needs one entry per attention ({len(modules)}, named as in "
                                 f"attn_processors); unknown: {unknown[:3]}, missing: {missing[:3]}")
            chosen = {name: _check(p, f"processor[{name!r}]") for name, p in processor.items()}
        else:
            _check(processor, "processor")
            chosen = dict.fromkeys(modules, processor)
        for name, m in modules.items():
            m.processor = None if type(chosen[name]) is AttnProcessor else chosen[name]


__all__ = ["AttentionProcessorMixin", "AttnProcessor", "CrossFrameAttnProcessor"]
