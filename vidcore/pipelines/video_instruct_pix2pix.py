"""Video InstructPix2Pix (Text2Video-Zero, arXiv 2303.13439, Sect. 4.4): edit a video with an instruction
("make it Van Gogh style") using an InstructPix2Pix image model (e.g. ``timbrooks/instruct-pix2pix``, an
SD1.5 UNet with 8 input channels: noisy latents + the frame's VAE latents), with cross-frame attention.

Every frame is edited as InstructPix2Pix edits an image, all frames in one batch, and every spatial
self-attention takes its keys and values from the first frame of its video, separately in each of the three
guidance branches (instruction + frame, frame only, neither). This equals the recipe of diffusers'
Text2Video-Zero documentation: ``StableDiffusionInstructPix2PixPipeline`` with
``CrossFrameAttnProcessor(batch_size=3)`` called on the frames as a batch of images with the prompt repeated
(same generator -> same frames).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch

from ..nn.attention import cross_frame_attention as frame_attention
from ..sampling.guidance import guidance_batch
from ..sampling.loop import StepEnd, check_callback_inputs, scheduler_step
from .base import check_negative_inputs
from .checks import check_call
from .text2video_zero import COMPONENTS, SD_LOADERS
from .sd_video import SDVideoPipeline
from .video_processing import preprocess_video

CALLBACK_TENSOR_INPUTS = ("latents", "prompt_embeds", "negative_prompt_embeds", "image_latents")


def image_latents(vae, images: torch.Tensor, dtype, device) -> torch.Tensor:
    """``n 3 H W`` in [-1, 1] -> ``n 4 h w``: the VAE posterior's mode, not scaled by the VAE scaling factor
    (InstructPix2Pix's image conditioning); ``n 4 h w`` input is taken as latents already."""
    if images.shape[1] == 4:
        return images.to(device=device, dtype=dtype)
    return vae.encode(images.to(device=device, dtype=vae.dtype)).mode().to(dtype)


class VideoInstructPix2PixPipeline(SDVideoPipeline):
    """InstructPix2Pix (8-channel ``UNet2D``) + cross-frame attention -> edited video."""
    # no FreeInit: an edit follows its input video frame by frame, where FreeInit's re-initialisation has no role
    component_names = COMPONENTS

    # from_pretrained: an InstructPix2Pix folder or hub repo (timbrooks/instruct-pix2pix) with its stored scheduler
    # (Euler ancestral there, as in diffusers); scheduler= chooses another (e.g. DDIM or Euler)
    loaders = SD_LOADERS

    def encode_frames(self, video: torch.Tensor, dtype, device) -> torch.Tensor:
        """``b 3 f H W`` in [-1, 1] -> ``(b f) 4 h w`` VAE latents (:func:`image_latents`)."""
        b, c, f, h, w = video.shape
        frames = video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        return image_latents(self._run_on_device("vae") if c != 4 else self.vae, frames, dtype, device)

    callback_tensor_inputs = CALLBACK_TENSOR_INPUTS

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, video=None, num_inference_steps: int = 100,
                 guidance_scale: float = 7.5, image_guidance_scale: float = 1.5,
                 negative_prompt: str | list[str] | None = None, num_videos_per_prompt: int = 1, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True, clip_skip: int | None = None,
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
                 decode_chunk_size: int | None = None, cross_frame_attention: bool = True):
        """Edit ``video`` following the instruction ``prompt``.

        ``video``: a file path or URL (read with :func:`vidcore.load_video`), a list of PIL frames, an ``f h w 3``
        array, an ``f 3 h w`` tensor, or a batch of those (one video per prompt); frames are cut to a multiple of
        the VAE factor (8). Argument names and defaults follow diffusers' ``StableDiffusionInstructPix2PixPipeline``
        (``num_inference_steps=100``, ``guidance_scale=7.5``, ``image_guidance_scale=1.5``; guidance runs when
        ``guidance_scale > 1`` and ``image_guidance_scale >= 1``). ``latents``: the noise ``b 4 f h w`` (drawn as
        ``(b f) 4 h w``, one sample per frame, as diffusers draws one per image). ``cross_frame_attention=False``
        edits each frame independently (plain InstructPix2Pix). Returns ``.frames`` as the other video pipelines.
        """
        check_call(self, locals())
        if video is None:
            raise ValueError("video is required: a file path, a list of PIL frames, an array or a tensor")
        if isinstance(video, (str, os.PathLike)):
            from ..io import load_video

            video = load_video(video)
        video_t = preprocess_video(video, self.vae_scale_factor)  # n 3 f H W
        n, c, frames, h, w = video_t.shape
        self.check_inputs(prompt, 8, 8, frames, prompt_embeds, negative_prompt_embeds, output_type,
                          num_videos_per_prompt, None)
        if self.unet.config.in_channels != 8:
            raise ValueError(f"video InstructPix2Pix needs an 8-channel InstructPix2Pix UNet (e.g. "
                             f"timbrooks/instruct-pix2pix); this one takes {self.unet.config.in_channels}")
        check_negative_inputs(negative_prompt, negative_prompt_embeds)
        check_callback_inputs(callback_on_step_end_tensor_inputs, CALLBACK_TENSOR_INPUTS)

        device = self.device
        guidance = guidance_scale > 1.0 and image_guidance_scale >= 1.0
        cond, uncond = self.encode_prompt(prompt, device, num_videos_per_prompt, guidance, negative_prompt,
                                          prompt_embeds, negative_prompt_embeds, clip_skip)
        batch = cond.shape[0]
        if n not in (1, batch // num_videos_per_prompt, batch):
            raise ValueError(f"got {n} videos for {batch // num_videos_per_prompt} prompts")
        image = self.encode_frames(video_t, cond.dtype, device)  # (n f) 4 h w
        image = image.reshape(n, frames, *image.shape[1:]).repeat_interleave(batch // n, dim=0).flatten(0, 1)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        s = self.vae_scale_factor
        shape = (batch * frames, self.vae.config.latent_channels, *((h, w) if c == 4 else (h // s, w // s)))
        if latents is not None:
            if latents.ndim != 5 or latents.shape[0] != batch or latents.shape[2] != frames:
                raise ValueError(f"latents must have shape {(batch, shape[1], frames, *shape[2:])}, got "
                                 f"{tuple(latents.shape)}")
            latents = latents.permute(0, 2, 1, 3, 4).flatten(0, 1)
        x = self.prepare_latents(shape, cond.dtype, device, generator, latents)  # (b f) 4 h w
        step_end = StepEnd(self, callback_on_step_end, callback_on_step_end_tensor_inputs,
                           {"prompt_embeds": cond, "negative_prompt_embeds": uncond, "image_latents": image})

        def predict(x, t, i):
            state = step_end.tensors
            c_emb = state["prompt_embeds"].repeat_interleave(frames, dim=0)
            img = state["image_latents"]
            def model(x, embeds, img):
                return unet(torch.cat([self.scheduler.scale_model_input(x, t), img], dim=1), t, embeds)

            if not guidance:
                return model(x, c_emb, img)
            # branches: instruction + frame, frame only, neither (one UNet call, or one per branch)
            u_emb = state["negative_prompt_embeds"].repeat_interleave(frames, dim=0)
            noise = guidance_batch(model, x, 3, self.guidance_batches(), embeds=torch.cat([c_emb, u_emb, u_emb]),
                                   img=torch.cat([img, img, torch.zeros_like(img)]))
            text, frame_only, neither = noise.chunk(3)
            return neither + guidance_scale * (text - frame_only) + image_guidance_scale * (frame_only - neither)

        unet = self._run_on_device("unet")
        with frame_attention(unet, frames if cross_frame_attention else None):
            x = self.sample(x, timesteps, predict, scheduler_step(self.scheduler, eta=eta, generator=generator),
                            step_end)

        latents = x.reshape(batch, frames, *x.shape[1:]).permute(0, 2, 1, 3, 4)  # b c f h w
        return self.finish(latents, output_type, return_dict, decode_chunk_size)
