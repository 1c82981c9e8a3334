"""The neutral base of the Stable-Diffusion-family video pipelines: what ModelScope, AnimateDiff, I2VGen-XL and
Text2Video-Zero share and nothing more (prompt encoding, checks, initial latents, per-frame VAE decode, the
output). No sampling feature lives here: each pipeline composes the ones it has (design principle 12)."""

from __future__ import annotations

import torch

from ..random import randn_tensor
from ..loading.loaders import load_scheduler, load_text_encoder, load_tokenizer, load_vidcore_model
from .base import VideoPipeline, VideoPipelineOutput, upcast_vae
from .features import require
from .text import clip_embed, encode_prompt
from .textual_inversion import TextualInversionMixin
from .video_processing import OUTPUT_TYPES, postprocess_video


class SDVideoPipeline(TextualInversionMixin, VideoPipeline):
    """Tokenizer + CLIP text encoder + UNet + KL VAE + scheduler (+ ``load_textual_inversion``). Subclasses give
    ``__call__``."""

    component_names = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")
    loaders = {"tokenizer": load_tokenizer, "text_encoder": load_text_encoder, "unet": load_vidcore_model,
               "vae": load_vidcore_model, "scheduler": load_scheduler}

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for the real VAE, less for tiny test VAEs)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # -- checks ---------------------------------------------------------------------------------
    def default_size(self, height, width, sample_size: int) -> tuple[int, int]:
        """``height`` and ``width``, each defaulting to the UNet's sample size (``sample_size`` where its config
        has none) in pixels."""
        sample = self.unet.config.sample_size or sample_size
        sample = sample[0] if isinstance(sample, (tuple, list)) else sample
        return height or sample * self.vae_scale_factor, width or sample * self.vae_scale_factor

    def check_inputs(self, prompt, height, width, num_frames, prompt_embeds, negative_prompt_embeds, output_type,
                     num_videos_per_prompt, callback_steps):
        if isinstance(prompt, dict):  # a {frame: prompt} schedule: only where the pipeline has prompt travel
            require(self, "prompt_travel")
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of prompt or prompt_embeds")
        if height % 8 or width % 8 or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of 8, got height={height}, width={width}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt must be at least 1, got {num_videos_per_prompt}")
        if callback_steps is not None and (not isinstance(callback_steps, int) or callback_steps <= 0):
            raise ValueError(f"callback_steps must be a positive integer, got {callback_steps!r}")
        if prompt_embeds is not None and negative_prompt_embeds is not None and prompt_embeds.shape != negative_prompt_embeds.shape:
            raise ValueError("prompt_embeds and negative_prompt_embeds must have the same shape")

    # -- pieces ---------------------------------------------------------------------------------
    def encode_prompt(self, prompt, device, num_videos_per_prompt, guidance, negative_prompt=None, prompt_embeds=None,
                      negative_prompt_embeds=None, clip_skip=None, negative_clip_skip=None):
        """(prompt_embeds, negative_prompt_embeds or None) from :func:`vidcore.pipelines.text.encode_prompt`."""
        if self.text_encoder is None:  # embeddings given, no text encoder loaded
            if prompt_embeds is None or (guidance and negative_prompt_embeds is None):
                raise ValueError("this pipeline has no text_encoder: pass prompt_embeds (and negative_prompt_embeds "
                                 "with guidance_scale > 1)")
            dtype = self.unet.dtype
        else:
            self._run_on_device("text_encoder")
            dtype = self.text_encoder.dtype
        return encode_prompt(self.tokenizer, self.text_encoder, prompt, device, dtype, num_videos_per_prompt, guidance,
                             negative_prompt, prompt_embeds, negative_prompt_embeds, clip_skip, negative_clip_skip)

    def embed_prompts(self, prompts: list[str], device, clip_skip: int | None = None) -> torch.Tensor:
        """Prompts -> k m d text embeddings, nothing repeated or paired (FreeNoise's prompt travel encodes the key
        prompts of a schedule with it)."""
        if self.text_encoder is None:
            raise ValueError("a {frame_index: prompt} schedule needs the pipeline's text_encoder (this one has none "
                             "loaded)")
        self._run_on_device("text_encoder")
        return clip_embed(self.tokenizer, self.text_encoder, prompts, device, clip_skip).to(device,
                                                                                            self.text_encoder.dtype)

    def decode_latents(self, latents: torch.Tensor, decode_chunk_size: int | None = None) -> torch.Tensor:
        """b c f h w latents -> b 3 f H W float32 video in [-1, 1], ``decode_chunk_size`` frames per VAE call ("auto":
        :meth:`auto_decode_chunk`)
        (with ``enable_parallel``: split over the ranks, the video on rank 0 and None elsewhere).

        An fp16 VAE whose config asks for it (``force_upcast``) decodes in float32, avoiding overflow.
        """
        vae = self._run_on_device("vae")
        b, c, f, h, w = latents.shape
        z = (latents / vae.config.scaling_factor).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        if decode_chunk_size == "auto":
            decode_chunk_size = self.auto_decode_chunk(h, w, b * f)

        def decode(z):
            return torch.cat([vae.decode(part) for part in z.split(decode_chunk_size or z.shape[0])])

        with upcast_vae(vae):
            z = z.to(vae.dtype)
            if self.parallel is not None:  # frames split over all ranks, gathered on rank 0 (None elsewhere)
                s = self.vae_scale_factor
                frames = self.parallel.decode(decode, z, (vae.config.out_channels, h * s, w * s))
            else:
                frames = decode(z)
        if frames is None:
            return None
        return frames.reshape(b, f, *frames.shape[1:]).permute(0, 2, 1, 3, 4).float()

    def prepare_latents(self, shape, dtype, device, generator, latents=None):
        if isinstance(generator, list) and len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for an effective batch of {shape[0]} videos")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != tuple(shape):
            raise ValueError(f"latents must have shape {tuple(shape)}, got {tuple(latents.shape)}")
        return latents.to(device) * self.scheduler.init_noise_sigma

    def finish(self, latents, output_type, return_dict, decode_chunk_size, output_class=VideoPipelineOutput):
        """b c f h w latents -> the call's result: decoded and postprocessed unless ``output_type="latent"``
        (None on ranks > 0 with enable_parallel), as ``output_class`` or a 1-tuple."""
        if output_type == "latent":
            video = latents
        else:
            decoded = self.decode_latents(latents, decode_chunk_size)
            video = None if decoded is None else postprocess_video(decoded, output_type)
        return output_class(frames=video, cache_stats=self.cache_stats()) if return_dict else (video,)


__all__ = ["SDVideoPipeline"]
