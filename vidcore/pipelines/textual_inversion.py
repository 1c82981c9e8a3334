"""``load_textual_inversion`` (diffusers' name and arguments) for the Stable-Diffusion-family pipelines: new words
for the tokenizer, new rows for the text encoder's token embedding.

An embedding of ``n`` vectors becomes ``n`` tokens (``word``, ``word_1`` ... ``word_{n-1}``) and a prompt's
``word`` is spelled out as all of them when it is encoded (:func:`vidcore.pipelines.text.expand_multi_vector_tokens`),
as diffusers does, so prompts using the word give diffusers' embeddings. Files:
:mod:`vidcore.loading.textual_inversion`. Everything is checked before the tokenizer or the encoder changes.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from ..loading.textual_inversion import read_textual_inversion


class TextualInversionMixin:
    """``load_textual_inversion`` on a pipeline with ``tokenizer`` and ``text_encoder``."""

    def load_textual_inversion(self, pretrained_model_name_or_path, token: str | Sequence[str] | None = None,
                               tokenizer=None, text_encoder=None, weight_name: str | None = None,
                               revision: str | None = None, hf_token: str | None = None) -> None:
        """Add the embedding(s) of ``pretrained_model_name_or_path`` (a hub repo id or folder with
        ``learned_embeds.safetensors`` / ``.bin`` or ``weight_name``, an Automatic1111 ``.pt`` / ``.safetensors``
        file, a ``{token: tensor}`` dict or a tensor; or a list of those) under ``token`` (default: the stored
        name) to ``tokenizer`` / ``text_encoder`` (default: the pipeline's; pass ``tokenizer_2`` /
        ``text_encoder_2`` for SDXL's second encoder)."""
        tokenizer = tokenizer if tokenizer is not None else getattr(self, "tokenizer", None)
        text_encoder = text_encoder if text_encoder is not None else getattr(self, "text_encoder", None)
        if tokenizer is None or text_encoder is None:
            raise ValueError(f"{type(self).__name__}.load_textual_inversion needs a tokenizer and a text_encoder "
                             "(the pipeline has none loaded: pass tokenizer= and text_encoder=)")
        sources = (pretrained_model_name_or_path if isinstance(pretrained_model_name_or_path, list)
                   else [pretrained_model_name_or_path])
        tokens = token if isinstance(token, (list, tuple)) else [token] * len(sources)
        if len(tokens) != len(sources):
            raise ValueError(f"token has {len(tokens)} entries for {len(sources)} embeddings")
        loaded = [read_textual_inversion(s, t, weight_name, revision, hf_token) for s, t in zip(sources, tokens)]
        names = [name for name, _ in loaded]
        if len(set(names)) < len(names):
            raise ValueError(f"token names repeat: {names}")
        vocab = tokenizer.get_vocab()
        words, rows = [], []
        for name, embedding in loaded:
            extra = [f"{name}_{i}" for i in range(1, embedding.shape[0])]
            taken = [w for w in (name, f"{name}_1") if w in vocab]
            if taken:
                raise ValueError(f"token {taken[0]!r} is already in the tokenizer's vocabulary: pass another token=")
            words += [name, *extra]
            rows += list(embedding)
        weight = text_encoder.get_input_embeddings().weight
        bad = sorted({row.shape[-1] for row in rows} - {weight.shape[-1]})
        if bad:
            raise ValueError(f"the embedding is {bad[0]} wide, the text encoder's tokens are {weight.shape[-1]} wide "
                             "(an embedding for another base model)")
        text_encoder.resize_token_embeddings(len(tokenizer) + len(words))
        weight = text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            for word, row in zip(words, rows):
                tokenizer.add_tokens(word)
                weight[tokenizer.convert_tokens_to_ids(word)] = row.to(device=weight.device, dtype=weight.dtype)


__all__ = ["TextualInversionMixin"]
