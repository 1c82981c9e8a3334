"""Stable Video Diffusion image-to-video (diffusers' ``StableVideoDiffusionPipeline``).

The input image conditions the UNet three ways:

* its CLIP image embedding ``b 1 d`` (cross-attention; zeros for the unconditional half), computed from
  the image normalised to [-1, 1], blurred and resized to the encoder's 224 x 224 input
  (:func:`resize_with_antialiasing`), then normalised with the feature extractor's mean and std;
* its VAE latent (the posterior *mode*, not multiplied by ``scaling_factor``) after resizing to
  ``height x width`` and adding ``noise_aug_strength`` Gaussian noise, concatenated to every frame's
  noisy latent on the channel axis (zeros for the unconditional half);
* ``added_time_ids = (fps - 1, motion_bucket_id, noise_aug_strength)``.

Sampling is Euler on the EDM sigma scale with latents ``b f 4 h w`` (SVD's frame-major layout) and
classifier-free guidance whose scale grows linearly over the frames from ``min_guidance_scale`` to
``max_guidance_scale`` (``guidance_schedule`` picks another per-frame shape). The temporal VAE decoder
decodes ``decode_chunk_size`` frames per call.

Random draws happen in diffusers' order: the augmentation noise of the image (one draw per input image),
then the initial latents (one per video).

Two diffusers quirks are reproduced by default and fixed with ``fix_batch_quirks=True``: with several
input images and ``num_videos_per_prompt > 1`` diffusers repeats the image latents as
``(i0, i1, i0, i1)`` but the CLIP embeddings as ``(i0, i0, i1, i1)``, so a video gets the latent of one
image and the embedding of another; and a decode chunk that does not divide ``num_frames`` spans two
videos, so the temporal decoder mixes their frames.
"""

from __future__ import annotations

import os
from numbers import Integral
from typing import Callable

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from ..io import load_image
from ..loading.loaders import load_feature_extractor, load_image_encoder, load_scheduler, load_vidcore_model
from ..loading.originals import SVD_SINGLE_FILE_COMPONENTS, load_svd_single_file
from ..loading.pipeline import SingleFile
from ..parallel.pipeline import ParallelPipelineMixin
from ..random import randn_tensor
from ..sampling import FreeInitMixin, FreeNoiseMixin
from ..sampling.combinations import check_combination
from ..sampling.guidance import apply_guidance, guidance_batch
from ..sampling.loop import StepEnd, check_callback_inputs, scheduler_step
from ..sampling.frame_guidance import frame_guidance_scales, guided
from ..sampling.windows import blend_windows, check_free_noise_windows, check_parallel_windows, plan_windows
from .base import VideoPipeline, VideoPipelineOutput, upcast_vae
from .checks import check_call
from .lora import LoRAMixin
from .svd_keyframes import keyframe_step
from .temporal_decode import decode_overlapping
from .video_processing import OUTPUT_TYPES, postprocess_video

IMAGE_TYPES = ("a PIL image, a file path, a list of those, a (h, w, 3) or (b, h, w, 3) numpy array (uint8, or "
               "floats in [0, 1]), or a (3, h, w) or (b, 3, h, w) float torch tensor in [0, 1]")
CALLBACK_TENSOR_INPUTS = ("latents",)
CLIP_SIZE = 224  # diffusers resizes to 224 x 224 whatever the encoder (the released one is ViT-H/14 at 224)


# ----------------------------------------------------------------------------- antialiased resize


def _gaussian_kernel(size: int, sigma: torch.Tensor) -> torch.Tensor:
    """Normalised 1-D Gaussian of odd ``size`` (float32 ``sigma``, a 0-d tensor)."""
    x = torch.arange(size, dtype=sigma.dtype) - size // 2
    g = torch.exp(-x.pow(2.0) / (2 * sigma.pow(2.0)))
    return g / g.sum()


def _blur_1d(x: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """Depthwise convolution of ``n c h w`` along ``dim`` (-1 width, -2 height), reflect-padded."""
    c, k = x.shape[1], kernel.numel()
    weight = kernel.to(device=x.device, dtype=x.dtype)
    weight = weight.view(1, 1, 1, k) if dim == -1 else weight.view(1, 1, k, 1)
    pad = (k // 2, k - 1 - k // 2, 0, 0) if dim == -1 else (0, 0, k // 2, k - 1 - k // 2)
    x = F.pad(x, pad, mode="reflect")
    return F.conv2d(x, weight.expand(c, 1, *weight.shape[2:]), groups=c)


def resize_with_antialiasing(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``n c h w`` -> ``n c size[0] size[1]``: Gaussian blur, then bicubic with ``align_corners=True``.

    The blur's sigma per axis is ``max((factor - 1) / 2, 0.001)`` for a downscale ``factor`` (as
    scikit-image), its kernel ``int(max(4 sigma, 3))`` taps made odd, reflect padding, the width pass
    first. This is SVD's reference preprocessing (diffusers' ``_resize_with_antialiasing``, itself from
    kornia), computed op for op the same way.
    """
    h, w = x.shape[-2:]
    sigma_h, sigma_w = max((h / size[0] - 1.0) / 2.0, 0.001), max((w / size[1] - 1.0) / 2.0, 0.001)
    taps_h, taps_w = (k + 1 if k % 2 == 0 else k for k in (int(max(4.0 * sigma_h, 3)), int(max(4.0 * sigma_w, 3))))
    sigmas = torch.tensor([sigma_h, sigma_w], dtype=x.dtype)  # the kernel is computed in the input's dtype
    x = _blur_1d(x, _gaussian_kernel(taps_w, sigmas[1]), dim=-1)
    x = _blur_1d(x, _gaussian_kernel(taps_h, sigmas[0]), dim=-2)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=True)


# ----------------------------------------------------------------------------- image input


def _pil_to_tensor(images: list[PIL.Image.Image]) -> torch.Tensor:
    """Same-size RGB images -> n 3 h w float32 in [0, 1] (uint8 / 255, as diffusers converts)."""
    return torch.from_numpy(np.stack([np.array(im).astype(np.float32) / 255.0 for im in images])).permute(0, 3, 1, 2)


def _as_images(image) -> list[PIL.Image.Image] | torch.Tensor:
    """The accepted ``image`` inputs -> a list of RGB PIL images, or a float tensor ``b 3 h w``."""
    if image is None:
        raise ValueError("image is required: Stable Video Diffusion animates an input image (pass image=...)")
    if isinstance(image, (PIL.Image.Image, str, os.PathLike)):
        image = [image]
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError("image is an empty list")
        if not all(isinstance(im, (PIL.Image.Image, str, os.PathLike)) for im in image):
            kinds = sorted({type(im).__name__ for im in image})
            raise ValueError(f"a list image must hold PIL images or file paths, got {kinds}; pass several arrays or "
                             "tensors as one batched array or tensor")
        # PIL images are used as given (RGB ones unchanged); other modes are converted to RGB
        return [im.convert("RGB") if isinstance(im, PIL.Image.Image) and im.mode != "RGB"
                else im if isinstance(im, PIL.Image.Image) else load_image(im) for im in image]
    if isinstance(image, np.ndarray):
        if image.ndim not in (3, 4) or image.shape[-1] != 3:
            raise ValueError(f"an image array must have shape (h, w, 3) or (b, h, w, 3), got {image.shape}")
        array = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        image = torch.from_numpy(array[None] if array.ndim == 3 else array).permute(0, 3, 1, 2)
    if isinstance(image, torch.Tensor):
        if image.ndim not in (3, 4) or image.shape[-3] != 3:
            raise ValueError(f"an image tensor must have shape (3, h, w) or (b, 3, h, w), got {tuple(image.shape)}")
        if not image.is_floating_point():
            raise ValueError(f"an image tensor must hold floats in [0, 1], got dtype {image.dtype}")
        lo, hi = image.min().item(), image.max().item()
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"image values must be in [0, 1], got the range [{lo:.3g}, {hi:.3g}]")
        return image[None] if image.ndim == 3 else image
    raise ValueError(f"image must be {IMAGE_TYPES}; got {type(image).__name__}")


def _vae_pixels(images: list[PIL.Image.Image] | torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``b 3 height width`` in [-1, 1] for the VAE: PIL images resized with Lanczos, tensors with
    nearest-neighbour interpolation (diffusers' ``VaeImageProcessor.preprocess``)."""
    if isinstance(images, list):
        x = _pil_to_tensor([im.resize((width, height), resample=PIL.Image.LANCZOS) for im in images])
    else:
        x = F.interpolate(images, size=(height, width))
    # values already below 0 are taken as [-1, 1] and kept, as diffusers does
    return x * 2.0 - 1.0 if x.min() >= 0 else x


def clip_pixels(images: list[PIL.Image.Image] | torch.Tensor, size: int) -> torch.Tensor:
    """``b 3 size size`` in [0, 1] for CLIP. Each image goes through [-1, 1], the antialiased resize
    and back (SVD's reference). A tensor already at ``size`` is passed as is (diffusers never resizes
    tensors; at any other size its image encoder would fail)."""
    if isinstance(images, torch.Tensor):
        if tuple(images.shape[-2:]) == (size, size):
            return images
        parts = [images]
    else:
        parts = [_pil_to_tensor([im]) for im in images]  # one at a time: sizes may differ
    return torch.cat([(resize_with_antialiasing(p * 2.0 - 1.0, (size, size)) + 1.0) / 2.0 for p in parts])


def _draw(shape, generator, device, dtype) -> torch.Tensor:
    """``randn_tensor`` as diffusers' draws it, where a generator list longer than the batch uses its
    first ``shape[0]`` generators (the image noise has one row per image, the list one per video)."""
    if isinstance(generator, (list, tuple)) and len(generator) > shape[0]:
        generator = list(generator[: shape[0]])
    return randn_tensor(shape, generator=generator, device=device, dtype=dtype)


# ----------------------------------------------------------------------------- pipeline


class StableVideoDiffusionPipeline(LoRAMixin, ParallelPipelineMixin, FreeInitMixin, FreeNoiseMixin, VideoPipeline):
    """Image -> video with Stable Video Diffusion (SVD, SVD-XT, SVD-XT 1.1). ``load_lora_weights`` & co.
    (:mod:`vidcore.pipelines.lora`) fuse LoRAs into the UNet, which diffusers' SVD pipeline cannot load."""
    free_noise_frame_dim = 1  # FreeNoise reschedules the frames second in SVD's b f c h w noise
    component_names = ("vae", "image_encoder", "unet", "scheduler", "feature_extractor")
    offload_order = ("image_encoder", "unet", "vae")

    loaders = {"vae": load_vidcore_model, "image_encoder": load_image_encoder, "unet": load_vidcore_model,
               "scheduler": load_scheduler, "feature_extractor": load_feature_extractor}
    # an original sgm file (svd_xt.safetensors, svd_xt_1_1.safetensors) holds the UNet, the VAE and the image
    # encoder (OpenCLIP ViT-H/14, converted to transformers' CLIPVisionModelWithProjection; a file without it takes
    # config_from's); config_from gives their configs, the scheduler and the feature extractor
    single_file = SingleFile(load_svd_single_file, SVD_SINGLE_FILE_COMPONENTS,
                             ("model_index.json", "unet/config.json", "vae/config.json", "scheduler/*",
                              "feature_extractor/*", "image_encoder/config.json"),
                             "a Stable Video Diffusion pipeline folder or hub repo")

    @classmethod
    def from_single_file(cls, path: str | os.PathLike, config_from: str | os.PathLike,
                         torch_dtype: torch.dtype | str | None = None, variant: str | None = None,
                         revision: str | None = None, token: str | None = None, **components):
        """Load the UNet, the VAE and the image encoder from an original Stable Video Diffusion file
        (Stability's sgm layout), the rest from ``config_from``, a diffusers pipeline folder or hub repo id (e.g.
        ``stabilityai/stable-video-diffusion-img2vid-xt``; from the hub only the needed parts are downloaded,
        never the repo's UNet / VAE weights). ``variant`` picks the image encoder's weights when the file has
        none. Components passed as keyword arguments replace the loaded ones.

        >>> pipe = StableVideoDiffusionPipeline.from_single_file(
        ...     "svd_xt_1_1.safetensors", config_from="stabilityai/stable-video-diffusion-img2vid-xt-1-1",
        ...     torch_dtype=torch.float16)
        """
        return super().from_single_file(path, config_from, torch_dtype, variant, revision, token, **components)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for the real VAE, less for tiny test VAEs)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # -- checks ---------------------------------------------------------------------------------
    def check_inputs(self, height, width, num_frames, num_inference_steps, sigmas, decode_chunk_size,
                     num_videos_per_prompt, output_type, callback_on_step_end_tensor_inputs):
        if not isinstance(height, Integral) or not isinstance(width, Integral) or height <= 0 or width <= 0 \
                or height % 8 or width % 8:
            raise ValueError(f"height and width must be positive multiples of 8, got height={height}, width={width}")
        if not isinstance(num_frames, Integral) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
        if sigmas is None and (not isinstance(num_inference_steps, Integral) or num_inference_steps < 1):
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        if sigmas is not None and len(sigmas) < 2:
            raise ValueError(f"sigmas must hold at least 2 values (the steps' sigmas, then the final one), "
                             f"got {len(sigmas)}")
        if not isinstance(decode_chunk_size, Integral) or decode_chunk_size < 1:
            raise ValueError(f"decode_chunk_size must be a positive integer (frames per VAE decode), "
                             f"got {decode_chunk_size!r}")
        if not isinstance(num_videos_per_prompt, Integral) or num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt must be a positive integer, got {num_videos_per_prompt!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        check_callback_inputs(callback_on_step_end_tensor_inputs, CALLBACK_TENSOR_INPUTS)
        ids = 3 * self.unet.config.addition_time_embed_dim
        if ids != self.unet.config.projection_class_embeddings_input_dim:
            raise ValueError(f"the UNet expects an added time embedding of length "
                             f"{self.unet.config.projection_class_embeddings_input_dim}, but 3 added time ids give "
                             f"{ids}; its config is inconsistent")

    # -- pieces ---------------------------------------------------------------------------------
    def encode_image(self, images, device, num_videos_per_prompt: int, guidance: bool) -> torch.Tensor:
        """CLIP image embeddings ``(2)(b n) 1 d``, each image's repeated for its videos, zeros first
        for classifier-free guidance."""
        encoder = self._run_on_device("image_encoder")
        pixels = clip_pixels(images, CLIP_SIZE).float()
        # the feature extractor's normalisation (diffusers calls it with do_normalize=True and every
        # other step off), done here in float32 on the pixels' device
        mean, std = (torch.tensor(v, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
                     for v in (self.feature_extractor.image_mean, self.feature_extractor.image_std))
        pixels = (pixels - mean) / std
        embeds = encoder(pixels.to(device=device, dtype=encoder.dtype)).image_embeds.unsqueeze(1)  # b 1 d
        embeds = embeds.repeat_interleave(num_videos_per_prompt, dim=0)
        return torch.cat([torch.zeros_like(embeds), embeds]) if guidance else embeds

    def encode_image_latents(self, pixels: torch.Tensor, device, num_videos_per_prompt: int, guidance: bool,
                             grouped: bool = False) -> torch.Tensor:
        """VAE posterior modes ``(2)(b n) 4 h w`` of ``b 3 H W`` pixels (not scaled by ``scaling_factor``),
        zeros first for guidance. An fp16 VAE with ``force_upcast`` encodes in float32, as diffusers does.
        The videos are ordered as diffusers orders them (``i0 i1 i0 i1``) unless ``grouped``."""
        with upcast_vae(self._run_on_device("vae")) as vae:
            latents = vae.encode(pixels.to(device=device, dtype=vae.dtype)).mode()
        latents = latents.repeat_interleave(num_videos_per_prompt, 0) if grouped else latents.repeat(
            num_videos_per_prompt, 1, 1, 1)
        return torch.cat([torch.zeros_like(latents), latents]) if guidance else latents

    def added_time_ids(self, fps: int, motion_bucket_id: int, noise_aug_strength: float, batch: int, dtype, device,
                       guidance: bool) -> torch.Tensor:
        """``(2)b 3`` micro-conditions: (fps - 1, motion_bucket_id, noise_aug_strength); SVD was trained on
        fps - 1."""
        ids = torch.tensor([[fps - 1, motion_bucket_id, noise_aug_strength]], dtype=dtype).repeat(batch, 1)
        ids = torch.cat([ids, ids]) if guidance else ids
        return ids.to(device)

    def prepare_latents(self, shape, dtype, device, generator, latents=None) -> torch.Tensor:
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != tuple(shape):
            raise ValueError(f"latents must have shape {tuple(shape)} (videos, frames, channels, height/"
                             f"{self.vae_scale_factor}, width/{self.vae_scale_factor}), got {tuple(latents.shape)}")
        return latents.to(device) * self.scheduler.init_noise_sigma

    def predict_noise(self, unet, latents, t, image_latents, image_embeddings, added_time_ids,
                      guidance_scale) -> torch.Tensor:
        """The guided prediction for ``b f 4 h w`` latents (a whole video or one context window) and the
        matching frames of ``image_latents`` and of the per-frame ``guidance_scale`` (``b f 1 1 1`` or None)."""
        def model(x, image_latents, image_embeddings, added_time_ids):
            model_in = torch.cat([self.scheduler.scale_model_input(x, t), image_latents], dim=2)  # b f (4 + 4) h w
            return unet(model_in, t, image_embeddings, added_time_ids)

        guidance = guidance_scale is not None
        if self.parallel is not None:  # CFG halves / frame slices (b f c h w, the image latents too) on the ranks
            model = self.parallel.wrap(model, guidance, frame_dim=1, framed=("image_latents",))
        conditions = dict(image_latents=image_latents, image_embeddings=image_embeddings, added_time_ids=added_time_ids)
        if not guidance:
            return model(latents, **conditions)
        return apply_guidance(guidance_batch(model, latents, 2, self.guidance_batches(), **conditions), guidance_scale)

    def predict_video_noise(self, unet, latents, t, image_latents, image_embeddings, added_time_ids, guidance_scale,
                            windows, weighting) -> torch.Tensor:
        """:meth:`predict_noise` per context window, blended (:mod:`vidcore.sampling.windows`). Each window is a
        whole UNet pass on its frames: its frame-index embedding counts from 0, as for a clip of that length,
        and it gets its frames' image latents and guidance scales."""
        def window_noise(start: int, end: int) -> torch.Tensor:
            scale = None if guidance_scale is None else guidance_scale[:, start:end]
            return self.predict_noise(unet, latents[:, start:end], t, image_latents[:, start:end], image_embeddings,
                                      added_time_ids, scale)

        return blend_windows(window_noise, latents.shape[1], windows, weighting, frame_dim=1)

    def denoise(self, latents, timesteps, image_latents, image_embeddings, added_time_ids, guidance_scale,
                step_end: StepEnd | None = None, windows=None, context_weighting="pyramid", last=None,
                generator=None) -> torch.Tensor:
        """One sampling run. latents ``b f 4 h w``; conditions have the unconditional half first when
        ``guidance_scale`` (``b f 1 1 1`` per-frame scales) is given, else ``guidance_scale`` is None.
        ``windows``: sliding context windows (None: the whole video in one UNet pass). ``last``: (image latents,
        CLIP embeddings) of a last keyframe: bidirectional steps (:mod:`vidcore.pipelines.svd_keyframes`)."""
        unet = self._run_on_device("unet")
        windows = windows or [(0, latents.shape[1])]
        if self.parallel is not None:
            check_parallel_windows(windows, self.parallel.config.frame_size)
            self.parallel.check(latents.shape[1])
            latents = self.parallel.broadcast(latents)

        def predict(x, t, i):
            return self.predict_video_noise(unet, x, t, image_latents, image_embeddings, added_time_ids,
                                            guidance_scale, windows, context_weighting)

        step = scheduler_step(self.scheduler)
        if last is not None:
            def predict_last(x, t):
                return self.predict_noise(unet, x, t, *last, added_time_ids, guidance_scale)

            step = keyframe_step(self.scheduler, predict_last, generator)
        return self.sample(latents, timesteps, predict, step, step_end)

    def decode_latents(self, latents: torch.Tensor, decode_chunk_size: int, per_video: bool = False,
                       decode_overlap: int = 0) -> torch.Tensor:
        """``b f 4 h w`` latents -> ``b 3 f H W`` float32 video in [-1, 1], ``decode_chunk_size`` frames per
        temporal-decoder call. Chunks run over the flattened ``(b f)`` frames as in diffusers (so one may
        span two videos) unless ``per_video``; with ``decode_overlap`` they run per video and consecutive
        chunks share that many frames, blended (:mod:`vidcore.pipelines.temporal_decode`). The VAE decodes in
        its own dtype (diffusers upcasts only the encode)."""
        vae = self._run_on_device("vae")
        b, f = latents.shape[:2]
        z = latents.flatten(0, 1) * (1 / vae.config.scaling_factor)
        z = z.to(vae.dtype)
        decode = lambda part: vae.decode(part, num_frames=part.shape[0])  # noqa: E731
        if decode_overlap:
            if self.parallel is not None:
                raise ValueError("decode_overlap does not combine with enable_parallel (the ranks decode whole "
                                 "chunks); use decode_overlap=0")
            frames = torch.cat([decode_overlapping(decode, video, decode_chunk_size, decode_overlap)
                                for video in z.split(f)])
            return frames.reshape(b, f, *frames.shape[1:]).permute(0, 2, 1, 3, 4).float()
        groups = z.split(f) if per_video else [z]
        parts = [part for group in groups for part in group.split(decode_chunk_size)]
        if self.parallel is not None:  # whole chunks per rank (exact), the frames on rank 0, None elsewhere
            s = self.vae_scale_factor
            frame_shape = (vae.config.out_channels, z.shape[-2] * s, z.shape[-1] * s)
            frames = self.parallel.decode_parts(decode, parts, frame_shape)
            if frames is None:
                return None
        else:
            frames = torch.cat([decode(part) for part in parts])
        return frames.reshape(b, f, *frames.shape[1:]).permute(0, 2, 1, 3, 4).float()

    # -- call -----------------------------------------------------------------------------------
    callback_tensor_inputs = CALLBACK_TENSOR_INPUTS

    @torch.no_grad()
    def __call__(self, image, height: int | None = 576, width: int | None = 1024, num_frames: int | None = None,
                 num_inference_steps: int = 25, sigmas: list[float] | None = None, min_guidance_scale: float = 1.0,
                 max_guidance_scale: float = 3.0, fps: int = 7, motion_bucket_id: int = 127,
                 noise_aug_strength: float = 0.02, decode_chunk_size: int | None = None,
                 num_videos_per_prompt: int = 1, generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "pil",
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: list[str] | tuple[str, ...] = ("latents",),
                 return_dict: bool = True, fix_batch_quirks: bool = False,
                 guidance_schedule: str | list[float] = "linear", decode_overlap: int = 0, last_image=None,
                 context_length: int | None = None, context_stride: int | None = None,
                 context_weighting: str = "pyramid"):
        """Animate ``image``. Arguments and defaults follow diffusers' StableVideoDiffusionPipeline:

        image: PIL image(s) or paths (one video each), a numpy array or a tensor in [0, 1] (batched or not).
        height, width: output size, multiples of 8 (``None``: the UNet's ``sample_size`` x 8).
        num_frames: default ``unet.config.num_frames`` (14 for SVD, 25 for SVD-XT).
        num_inference_steps / sigmas: step count, or a custom descending sigma list (n steps + final sigma).
        min_guidance_scale, max_guidance_scale: per-frame guidance from the first to the last frame;
            classifier-free guidance runs iff ``max_guidance_scale > 1``.
        fps, motion_bucket_id, noise_aug_strength: micro-conditioning (the UNet sees fps - 1); the input
            image gets ``noise_aug_strength`` Gaussian noise before the VAE.
        decode_chunk_size: frames per temporal-decoder call (default: all); smaller saves memory, flickers more.
        decode_overlap: frames consecutive decode chunks share, blended linearly (0: diffusers' disjoint
            chunks; 1-4 smooth the jumps at chunk borders for a little more decode time).
        last_image: keyframe interpolation: the video starts at ``image`` and ends at ``last_image`` (one per
            image), by bidirectional sampling with no fine-tuning (:mod:`vidcore.pipelines.svd_keyframes`; two
            UNet passes per step). Its noise augmentation is drawn right after ``image``'s, and each step draws
            one re-noising; with ``None`` (default) the run is the plain one.
        num_videos_per_prompt: videos per input image.
        generator, latents: noise source (a list: one generator per video), or the noise ``b f 4 h w`` itself.
        output_type: "pil" (lists of images), "np" (``b f H W 3``), "pt" (``b f 3 H W``), "latent" (``b f 4 h w``).
        callback_on_step_end(pipe, step, t, {"latents": ...}) -> dict that may replace "latents".
        fix_batch_quirks: True fixes two diffusers batching quirks (see the module docstring); the default
            reproduces diffusers.
        guidance_schedule: how the per-frame scale runs over the frames: "linear" (diffusers, the default:
            ``min_guidance_scale -> max_guidance_scale``), "triangle" (min at both ends, max in the middle, as
            ComfyUI's VideoTriangleCFGGuidance), "constant" (``max_guidance_scale``), or one float per frame
            (guidance runs when one exceeds 1); see :mod:`vidcore.sampling.frame_guidance`.
        context_length, context_stride, context_weighting: sliding context windows for videos longer than the
            model's clips (an addition; :mod:`vidcore.sampling.windows`): each denoising step runs the UNet on
            windows of ``context_length`` frames (None: the whole video, no windows), starts
            ``context_stride`` apart (default ``context_length // 4``), blended "pyramid" | "flat".
        """
        check_call(self, locals())
        sample = self.unet.config.sample_size or 96
        height = height or sample * self.vae_scale_factor
        width = width or sample * self.vae_scale_factor
        num_frames = num_frames if num_frames is not None else self.unet.config.num_frames
        decode_chunk_size = decode_chunk_size if decode_chunk_size is not None else num_frames
        if decode_chunk_size == "auto":  # frames per temporal-decoder call (one video's frames at most)
            s = self.vae_scale_factor
            decode_chunk_size = self.auto_decode_chunk(height // s, width // s, num_frames)
            if isinstance(decode_overlap, Integral) and decode_overlap >= decode_chunk_size:
                decode_chunk_size = min(num_frames, decode_overlap + 1)  # chunks must advance past the overlap
        callback_on_step_end_tensor_inputs = tuple(callback_on_step_end_tensor_inputs or ())
        self.check_inputs(height, width, num_frames, num_inference_steps, sigmas, decode_chunk_size,
                          num_videos_per_prompt, output_type, callback_on_step_end_tensor_inputs)
        if not isinstance(decode_overlap, Integral) or not 0 <= decode_overlap < decode_chunk_size:
            raise ValueError(f"decode_overlap must be an integer in [0, decode_chunk_size={decode_chunk_size}), got "
                             f"{decode_overlap!r}")
        windows = plan_windows(num_frames, context_length, context_stride, context_weighting)
        check_free_noise_windows(self, windows)
        check_combination(self, keyframes=last_image is not None, context_windows=len(windows) > 1,
                          parallel=self.parallel is not None)
        images = _as_images(image)
        batch = len(images)
        videos = batch * num_videos_per_prompt
        if isinstance(generator, (list, tuple)) and len(generator) != videos:
            raise ValueError(f"got {len(generator)} generators for {videos} videos ({batch} images x "
                             f"num_videos_per_prompt={num_videos_per_prompt}); pass one per video")
        device = self.device
        if not isinstance(guidance_schedule, str):
            guidance_schedule = list(guidance_schedule)
        frame_scales = frame_guidance_scales(guidance_schedule, min_guidance_scale, max_guidance_scale, num_frames)
        guidance = guided(guidance_schedule, max_guidance_scale)

        # 1. conditions: CLIP embedding, noise-augmented VAE latent, micro-conditions
        image_embeddings = self.encode_image(images, device, num_videos_per_prompt, guidance)
        dtype = image_embeddings.dtype
        pixels = _vae_pixels(images, height, width).to(device)
        pixels = pixels + noise_aug_strength * _draw(pixels.shape, generator, device, pixels.dtype)
        image_latents = self.encode_image_latents(pixels, device, num_videos_per_prompt, guidance,
                                                  grouped=fix_batch_quirks).to(dtype)
        image_latents = image_latents.unsqueeze(1).repeat(1, num_frames, 1, 1, 1)  # b f 4 h w
        last = None
        if last_image is not None:  # keyframe interpolation: the same conditions for the last frame
            lasts = _as_images(last_image)
            if len(lasts) != batch:
                raise ValueError(f"got {len(lasts)} last images for {batch} images; give one last_image per image")
            last_pixels = _vae_pixels(lasts, height, width).to(device)
            last_pixels = last_pixels + noise_aug_strength * _draw(last_pixels.shape, generator, device,
                                                                   last_pixels.dtype)
            last_latents = self.encode_image_latents(last_pixels, device, num_videos_per_prompt, guidance,
                                                     grouped=fix_batch_quirks).to(dtype)
            last = (last_latents.unsqueeze(1).repeat(1, num_frames, 1, 1, 1),
                    self.encode_image(lasts, device, num_videos_per_prompt, guidance))
        added_time_ids = self.added_time_ids(fps, motion_bucket_id, noise_aug_strength, videos, dtype, device,
                                             guidance)

        # 2. schedule and noise
        if sigmas is not None:
            self.scheduler.set_timesteps(sigmas=sigmas, device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        s = self.vae_scale_factor
        shape = (videos, num_frames, self.unet.config.in_channels // 2, height // s, width // s)
        self.check_free_noise_parallel()
        latents = self.free_noise_latents(shape, dtype, device, generator, latents)  # FreeNoise: rescheduled
        latents = self.prepare_latents(shape, dtype, device, generator, latents)

        # 3. per-frame guidance scales b f 1 1 1 and the loop
        scales = None
        if guidance:
            scales = frame_scales.unsqueeze(0).to(device, latents.dtype).repeat(videos, 1)[..., None, None, None]

        def schedule(steps: int) -> torch.Tensor:  # FreeInit's rounds; custom sigmas are used as given each round
            if sigmas is not None:
                self.scheduler.set_timesteps(sigmas=sigmas, device=device)
            else:
                self.scheduler.set_timesteps(steps, device=device)
            return self.scheduler.timesteps

        step_end = StepEnd(self, callback_on_step_end, callback_on_step_end_tensor_inputs)

        def denoise(x, timesteps):
            return self.denoise(x, timesteps, image_latents, image_embeddings, added_time_ids, scales, step_end,
                                windows, context_weighting, last, generator)

        latents = self.free_init_denoise(latents, num_inference_steps, schedule, denoise, generator, frames_dim=1,
                                         timesteps=self.scheduler.timesteps, stop=lambda: step_end.interrupted)

        # 4. decode
        if output_type == "latent":
            video = latents
        else:
            decoded = self.decode_latents(latents, decode_chunk_size, per_video=fix_batch_quirks,
                                          decode_overlap=decode_overlap)
            video = None if decoded is None else postprocess_video(decoded, output_type)  # None: rank > 0 (parallel)
        return VideoPipelineOutput(frames=video, cache_stats=self.cache_stats()) if return_dict else (video,)
