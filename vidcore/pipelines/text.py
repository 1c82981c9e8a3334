"""Prompt encoding with a CLIP text encoder, as Stable Diffusion pipelines do it."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def as_prompt_list(prompt, name: str) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise TypeError(f"{name} must be a string or a list of strings, got {type(prompt).__name__}")


def expand_multi_vector_tokens(prompt: str, tokenizer) -> str:
    """A textual-inversion word of ``n`` vectors (added tokens ``word``, ``word_1`` ...) spelled out as all its tokens
    (:mod:`vidcore.pipelines.textual_inversion`), as diffusers' ``maybe_convert_prompt``; other prompts unchanged."""
    added = getattr(tokenizer, "added_tokens_encoder", None) or {}
    multi = {t for t in added if f"{t}_1" in added}
    if not multi:
        return prompt
    for word in set(tokenizer.tokenize(prompt)) & multi:
        parts, i = [word], 1
        while f"{word}_{i}" in added:
            parts.append(f"{word}_{i}")
            i += 1
        prompt = prompt.replace(word, " ".join(parts))
    return prompt


@torch.no_grad()
def clip_embed(tokenizer, text_encoder, prompts: list[str], device, clip_skip: int | None = None) -> torch.Tensor:
    """Prompts -> (n, 77, d) hidden states; ``clip_skip=k`` takes the k-th-from-last layer, final-normed."""
    prompts = [expand_multi_vector_tokens(p, tokenizer) for p in prompts]
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    full = tokenizer(prompts, padding="longest", return_tensors="pt").input_ids
    if full.shape[-1] > ids.shape[-1]:
        dropped = tokenizer.batch_decode(full[:, tokenizer.model_max_length - 1:-1])
        log.warning("CLIP takes at most %d tokens; this part of the prompt was cut: %s", tokenizer.model_max_length, dropped)
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").attention_mask.to(device)
    if clip_skip is None:
        return text_encoder(ids.to(device), attention_mask=mask)[0]
    hidden = text_encoder(ids.to(device), attention_mask=mask, output_hidden_states=True).hidden_states
    # transformers < 5 nests the layers under .text_model; 5.x flattens them.
    final_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
    return final_norm(hidden[-(clip_skip + 1)])


def encode_prompt(tokenizer, text_encoder, prompt, device, dtype, num_videos_per_prompt: int, guidance: bool,
                  negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None, clip_skip=None,
                  negative_clip_skip=None):
    """Returns (prompt_embeds, negative_prompt_embeds or None), each repeated ``num_videos_per_prompt`` times.

    The negative prompt takes its own ``negative_clip_skip``: diffusers' Stable Diffusion pipelines ignore
    ``clip_skip`` there (None), its I2VGen-XL applies it.
    """
    if prompt_embeds is None:
        prompts = as_prompt_list(prompt, "prompt")
        prompt_embeds = clip_embed(tokenizer, text_encoder, prompts, device, clip_skip)
    batch = prompt_embeds.shape[0]
    prompt_embeds = prompt_embeds.to(device=device, dtype=dtype).repeat_interleave(num_videos_per_prompt, dim=0)
    if not guidance:
        return prompt_embeds, None
    if negative_prompt_embeds is None:
        if negative_prompt is None:
            negatives = [""] * batch
        else:
            if prompt is not None and type(prompt) is not type(negative_prompt):
                raise TypeError(f"negative_prompt must have the same type as prompt ({type(prompt).__name__}), "
                                f"got {type(negative_prompt).__name__}")
            negatives = as_prompt_list(negative_prompt, "negative_prompt")
            if len(negatives) != batch:
                raise ValueError(f"negative_prompt has {len(negatives)} entries but prompt has {batch}")
        negative_prompt_embeds = clip_embed(tokenizer, text_encoder, negatives, device, negative_clip_skip)
    negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=dtype).repeat_interleave(num_videos_per_prompt, dim=0)
    if negative_prompt_embeds.shape != prompt_embeds.shape:
        raise ValueError(f"prompt_embeds {tuple(prompt_embeds.shape)} and negative_prompt_embeds "
                         f"{tuple(negative_prompt_embeds.shape)} must have the same shape")
    return prompt_embeds, negative_prompt_embeds
