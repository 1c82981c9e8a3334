"""I2VGen-XL image-to-video (diffusers' ``I2VGenXLPipeline``).

The input image conditions the UNet three ways:

* CLIP image embedding ``b d`` of the image centre-cropped to a ``width x width`` square and resized
  to the image encoder's input size (zeros for the unconditional half of classifier-free guidance);
* VAE latent of the image centre-cropped to ``width x height`` as frame 0 of ``image_latents
  b 4 f h w``; frames 1.. hold a position mask ``k / (f - 1)``;
* the text embedding as usual, plus ``target_fps`` as a micro-condition.

The prediction over context windows, latent preparation and decoding are the ModelScope ones
(:class:`~vidcore.pipelines.video_unet.VideoUNetPipeline`), the loop the one of :mod:`vidcore.sampling.loop`. Random draws happen in diffusers'
order: the VAE posterior sample of the image (from torch's global RNG, as diffusers does, unless
``image_latents_from_generator=True``), then the initial noise, then DDIM's eta noise.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import PIL.Image
import torch

from ..io import load_image
from ..loading.loaders import (load_feature_extractor, load_image_encoder, load_scheduler, load_text_encoder,
                               load_tokenizer, load_vidcore_model)
from ..sampling.guidance import guided
from ..sampling.loop import StepEnd
from .base import check_negative_inputs
from .checks import check_call
from .lora import takes_cross_attention_kwargs
from .video_unet import VideoUNetPipeline

IMAGE_TYPES = ("a PIL image, a file path or URL, a (h, w, 3) or (b, h, w, 3) numpy array (uint8, or floats in [0, 1]), "
               "a (3, h, w) or (b, 3, h, w) torch tensor in [0, 1], or a list of those")


# ----------------------------------------------------------------------------- image preprocessing


def _float_to_pil(array: np.ndarray) -> PIL.Image.Image:
    """h w c floats in [0, 1] -> image, rounded as diffusers' ``numpy_to_pil`` rounds."""
    if array.min() < -1e-3 or array.max() > 1 + 1e-3:
        raise ValueError(f"image values must be in [0, 1] (or uint8), got the range [{array.min():.3g}, {array.max():.3g}]")
    pixels = (array.clip(0, 1) * 255).round().astype("uint8")
    return PIL.Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def _check_channels(shape, axis: int, kind: str) -> None:
    if len(shape) not in (3, 4) or shape[axis] not in (1, 3, 4):
        layout = "(h, w, 3) or (b, h, w, 3)" if kind == "array" else "(3, h, w) or (b, 3, h, w)"
        raise ValueError(f"image {kind} must have shape {layout}, got {tuple(shape)}")


def images_to_pil(image) -> list[PIL.Image.Image]:
    """Any accepted image input -> a list of RGB PIL images (one per video)."""
    if image is None:
        raise ValueError("image is required: I2VGen-XL animates an input image (pass image=...)")
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError("image is an empty list")
        return [im for item in image for im in images_to_pil(item)]
    if isinstance(image, PIL.Image.Image):
        return [image.convert("RGB")]
    if isinstance(image, (str, os.PathLike)):
        return [load_image(image)]
    if isinstance(image, np.ndarray):
        _check_channels(image.shape, -1, "array")
        batch = image[None] if image.ndim == 3 else image
        if batch.dtype == np.uint8:
            return [PIL.Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).convert("RGB") for a in batch]
        return [_float_to_pil(a.astype(np.float32)).convert("RGB") for a in batch]
    if isinstance(image, torch.Tensor):
        _check_channels(image.shape, -3, "tensor")
        batch = image[None] if image.ndim == 3 else image
        arrays = batch.detach().cpu().permute(0, 2, 3, 1).float().numpy()
        return [_float_to_pil(a).convert("RGB") for a in arrays]
    raise ValueError(f"image must be {IMAGE_TYPES}; got {type(image).__name__}")


def center_crop_wide(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """Box-downscale so the image just covers ``size`` (w, h), then crop the centre (I2VGen-XL's
    ``center_crop_wide``; the rounding follows diffusers exactly)."""
    w, h = size
    scale = min(image.width / w, image.height / h)
    image = image.resize((round(image.width // scale), round(image.height // scale)), resample=PIL.Image.BOX)
    x1, y1 = (image.width - w) // 2, (image.height - h) // 2
    return image.crop((x1, y1, x1 + w, y1 + h))


def pil_to_tensor(images: list[PIL.Image.Image]) -> torch.Tensor:
    """RGB images -> n 3 h w float32 in [0, 1]."""
    return torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])).permute(0, 3, 1, 2)


def window_image_latents(image_latents: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """The image conditioning ``b 4 f h w`` of a context window's frames ``start:end``.

    The UNet takes the image's appearance from frame 0 of its conditioning (the context tokens) and reads the
    other frames as the position mask ``k / (f - 1)``. Every window keeps the image latent in its frame 0, so
    each window sees the image, and its other frames keep their positions in the whole video, so later
    windows know they are further from the image. A window starting at frame 0 is a plain slice."""
    if start == 0:
        return image_latents[:, :, :end]
    return torch.cat([image_latents[:, :, :1], image_latents[:, :, start + 1:end]], dim=2)


# ----------------------------------------------------------------------------- pipeline


class I2VGenXLPipeline(VideoUNetPipeline):
    component_names = ("vae", "text_encoder", "tokenizer", "image_encoder", "feature_extractor", "unet", "scheduler")
    loaders = {"vae": load_vidcore_model, "text_encoder": load_text_encoder, "tokenizer": load_tokenizer,
               "image_encoder": load_image_encoder, "feature_extractor": load_feature_extractor,
               "unet": load_vidcore_model, "scheduler": load_scheduler}
    offload_order = ("text_encoder", "image_encoder", "unet", "vae")

    # -- pieces ---------------------------------------------------------------------------------
    def encode_image(self, images: list[PIL.Image.Image], width: int, device) -> torch.Tensor:
        """CLIP image embeddings ``n d`` of the ``width x width`` centre crops, resized bilinearly to the
        image encoder's input size and normalised with the feature extractor's mean and std."""
        crop = self.feature_extractor.crop_size
        crops = [center_crop_wide(im, (width, width)).resize((crop["width"], crop["height"]), PIL.Image.BILINEAR)
                 for im in images]
        pixels = self.feature_extractor(images=pil_to_tensor(crops), do_normalize=True, do_center_crop=False,
                                        do_resize=False, do_rescale=False, return_tensors="pt").pixel_values
        encoder = self._run_on_device("image_encoder")
        return encoder(pixels.to(device=device, dtype=encoder.dtype)).image_embeds

    def encode_image_latents(self, images: list[PIL.Image.Image], width: int, height: int, num_frames: int, dtype,
                             device, generator=None) -> torch.Tensor:
        """``n 4 f h w``: the VAE latent of each ``width x height`` centre crop as frame 0, then a constant
        position mask ``k / (f - 1)`` for frames k = 1 .. f-1. ``generator=None`` draws the posterior
        sample from torch's global RNG (diffusers' behaviour)."""
        vae = self._run_on_device("vae")
        pixels = pil_to_tensor([center_crop_wide(im, (width, height)) for im in images]) * 2.0 - 1.0
        pixels = pixels.to(device=device, dtype=dtype)
        latents = vae.encode(pixels.to(vae.dtype)).sample(generator).to(dtype) * vae.config.scaling_factor
        latents = latents.unsqueeze(2)  # n c 1 h w
        if num_frames > 1:
            positions = torch.tensor([(k + 1) / (num_frames - 1) for k in range(num_frames - 1)], dtype=dtype,
                                     device=device).view(1, 1, -1, 1, 1)
            latents = torch.cat([latents, positions.expand(*latents.shape[:2], -1, *latents.shape[3:])], dim=2)
        return latents

    def predict_noise(self, unet, latents, t, prompt_embeds, guidance_scale, window=None, conditions=None):
        """The guided prediction with the call's ``conditions`` (fps, image latents, image embeddings; the latents
        sliced to ``window``, see :func:`window_image_latents`)."""
        fps, image_latents, image_embeddings = conditions
        if window is not None:
            image_latents = window_image_latents(image_latents, *window)
        def model(x, fps, image_latents, image_embeddings, prompt_embeds):
            return unet(self.scheduler.scale_model_input(x, t), t, fps, image_latents, image_embeddings, prompt_embeds)

        if self.parallel is not None:  # the image latents go whole to every frame rank: the UNet encodes all frames
            model = self.parallel.wrap(model, guidance_scale > 1.0, frame_dim=2)
        return guided(model, latents, guidance_scale, self.guidance_batches(), fps=fps, image_latents=image_latents,
                      image_embeddings=image_embeddings, prompt_embeds=prompt_embeds)

    # -- call -----------------------------------------------------------------------------------
    @torch.no_grad()
    @takes_cross_attention_kwargs
    def __call__(self, prompt: str | list[str] | None = None, image=None, height: int | None = 704,
                 width: int | None = 1280, target_fps: int = 16, num_frames: int = 16, num_inference_steps: int = 50,
                 guidance_scale: float = 9.0, negative_prompt: str | list[str] | None = None, eta: float = 0.0,
                 num_videos_per_prompt: int = 1, decode_chunk_size: int | None = 1,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True, clip_skip: int | None = 1,
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
                 image_latents_from_generator: bool = False, context_length: int | None = None,
                 context_stride: int | None = None, context_weighting: str = "pyramid",
                 cross_attention_kwargs: dict | None = None):
        """Animate ``image`` following ``prompt``. Argument names and defaults follow diffusers'
        I2VGenXLPipeline. Additions: ``callback_on_step_end(pipe, step, t, tensors) -> dict``, numpy and
        path images, one image shared by several prompts, and ``image_latents_from_generator``: draw
        the VAE posterior sample of the image from ``generator`` too, so the generator alone fixes
        the video (diffusers draws it from torch's global RNG; the two agree when ``generator`` is
        ``torch.manual_seed(s)``, the global generator itself). ``context_length`` / ``context_stride`` /
        ``context_weighting``: sliding context windows for long videos, as in
        :meth:`TextToVideoPipeline.__call__` (default: none), with the image conditioning of
        :func:`window_image_latents` in each window.
        """
        check_call(self, locals())
        images = images_to_pil(image)
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        self.check_inputs(prompt, height, width, num_frames, prompt_embeds, negative_prompt_embeds, output_type,
                          num_videos_per_prompt, None)
        check_negative_inputs(negative_prompt, negative_prompt_embeds)
        if target_fps is None or target_fps <= 0:
            raise ValueError(f"target_fps must be a positive number, got {target_fps!r}")
        windows = self.plan_context(num_frames, context_length, context_stride, context_weighting)
        device = self.device
        guidance = guidance_scale > 1.0
        videos, text = self.encode_text(prompt, num_frames, device, num_videos_per_prompt, guidance, negative_prompt,
                                        prompt_embeds, negative_prompt_embeds, clip_skip, negative_clip_skip=clip_skip)
        batch = videos // num_videos_per_prompt
        if len(images) not in (1, batch):
            raise ValueError(f"got {len(images)} images for {batch} prompts; pass one image or one per prompt")
        # one image for all prompts, or image i for prompt i; each repeated per video of its prompt
        per_video = batch * num_videos_per_prompt // len(images)

        image_embeds = self.encode_image(images, width, device).repeat_interleave(per_video, dim=0)  # b d
        image_latents = self.encode_image_latents(images, width, height, num_frames, image_embeds.dtype, device,
                                                  generator if image_latents_from_generator else None)
        image_latents = image_latents.repeat_interleave(per_video, dim=0)  # b 4 f h w
        if self.parallel is not None:  # its posterior sample may come from each rank's global RNG: use rank 0's
            image_latents = self.parallel.broadcast(image_latents)
        if guidance:
            image_embeds = torch.cat([torch.zeros_like(image_embeds), image_embeds])
            image_latents = torch.cat([image_latents, image_latents])
        fps = torch.tensor([target_fps], device=device).repeat(image_embeds.shape[0])

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        s = self.vae_scale_factor
        shape = (videos, self.unet.config.in_channels, num_frames, height // s, width // s)
        latents = self.free_noise_latents(shape, text.dtype, device, generator, latents)  # FreeNoise: rescheduled
        latents = self.prepare_latents(shape, text.dtype, device, generator, latents)
        conditions = (fps, image_latents.to(text.dtype), image_embeds.to(text.dtype))
        step_end = StepEnd(self, callback_on_step_end, callback_on_step_end_tensor_inputs, {"prompt_embeds": text})
        latents = self.free_init_denoise(latents, num_inference_steps, self.schedule, lambda x, ts: self.denoise(
            x, ts, guidance_scale, eta, generator, step_end.fresh(), windows, context_weighting, conditions), generator,
            timesteps=self.scheduler.timesteps, stop=lambda: step_end.interrupted)
        return self.finish(latents, output_type, return_dict, decode_chunk_size)
