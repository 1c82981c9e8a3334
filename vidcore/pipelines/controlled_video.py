"""Controlled video: Text2Video-Zero with ControlNet (Khachatryan et al., arXiv 2303.13439, section 4.2).

A Stable Diffusion 1.x image model plus a ControlNet turn one control image per frame (a pose skeleton, Canny
edges, a depth map ...) into a video, with no training:

* every frame starts from the **same** initial noise (one ``1 4 h w`` draw repeated for all frames);
* every spatial self-attention of the UNet **and** of the ControlNet takes its keys and values from frame 0
  (cross-frame attention, :func:`vidcore.nn.attention.cross_frame_attention`), so the appearance set
  by the first frame carries over; the control images alone drive the motion;
* each step runs the ControlNet on the frames and their control images and adds its residuals to the UNet's
  skip features (``controlnet_conditioning_scale``; ``guess_mode`` runs the ControlNet on the conditional half
  only, with residual scales growing from 0.1 to 1).

diffusers has no pipeline for this: its Text2Video-Zero documentation builds it from
``StableDiffusionControlNetPipeline`` with ``CrossFrameAttnProcessor(batch_size=2)`` on the UNet and the
ControlNet, a prompt list of one prompt per frame and ``latents`` repeated over frames. This pipeline gives
the same frames for the same noise (tests/test_pipeline_controlled_video.py), draws that noise from
``generator`` itself, and checks its inputs.

Difference: in guess mode with guidance, diffusers' recipe runs the ControlNet on the conditional frames only,
while ``CrossFrameAttnProcessor(batch_size=2)`` still splits that batch in two halves, so the second half of
the frames attends to its own first frame instead of frame 0. Here cross-frame attention always uses frame 0
of the video (the recipe's intent; equal to diffusers with ``batch_size=1`` on the ControlNet in that mode).

Control images: pose images come from the user (e.g. OpenPose renderings, the format
``lllyasviel/sd-controlnet-openpose`` was trained on); edges can be computed with :func:`vidcore.controls.canny`.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from ..loading.loaders import EXAMPLE_CONTROLNET, load_controlnet
from ..models.controlnet import ControlNet
from ..models.unet2d import UNet2D
from ..nn.attention import cross_frame_attention as frame_attention
from ..random import randn_tensor
from ..sampling.loop import StepEnd, scheduler_step
from ..sampling.guidance import apply_guidance, guidance_batch
from ..sampling.loop import check_callback_inputs
from .checks import check_call
from .control_residuals import controlnet_residuals, in_control_window, no_controlnet_error
from .features import require
from .ip_adapter import IPAdapterMixin, check_ip_adapter_inputs
from .sd_video import SDVideoPipeline
from .text2video_zero import SD_LOADERS
from .video_processing import OUTPUT_TYPES


COMPONENTS = ("tokenizer", "text_encoder", "unet", "controlnet", "vae", "scheduler")
CALLBACK_TENSOR_INPUTS = ("latents", "prompt_embeds", "negative_prompt_embeds")


# ----------------------------------------------------------------------------- control frames


def control_frames_to_tensor(frames, height: int | None = None, width: int | None = None,
                             multiple: int = 8) -> torch.Tensor:
    """Control images -> float ``f c H W`` in [0, 1], as diffusers' ControlNet pipelines prepare them.

    ``frames``: a list of PIL images (resized to ``width x height`` with Lanczos, then RGB), a uint8 or float
    ``f H W c`` array, or an ``f c H W`` tensor in [0, 1] (arrays and tensors are resized with nearest
    interpolation). Without ``height``/``width`` the frames' size rounded down to ``multiple`` is used."""
    if isinstance(frames, (PIL.Image.Image, np.ndarray, torch.Tensor)) and not (
            isinstance(frames, (np.ndarray, torch.Tensor)) and frames.ndim == 4):
        raise ValueError("conditioning_frames must hold one image per frame: a list of PIL images, an (f, H, W, c) "
                         "array or an (f, c, H, W) tensor")
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise ValueError("conditioning_frames is empty")
        if all(isinstance(f, PIL.Image.Image) for f in frames):
            sizes = {f.size for f in frames}
            if len(sizes) > 1:
                raise ValueError(f"conditioning_frames differ in size ({sorted(sizes)}); give frames of one size")
            w, h = frames[0].size
            height = height or h - h % multiple
            width = width or w - w % multiple
            resized = [f.resize((width, height), PIL.Image.LANCZOS) if f.size != (width, height) else f for f in frames]
            arr = np.stack([np.asarray(f.convert("RGB"), dtype=np.float32) / 255.0 for f in resized])
            return torch.from_numpy(arr).permute(0, 3, 1, 2)
        if all(isinstance(f, np.ndarray) and f.ndim == 3 for f in frames):
            frames = np.stack(frames)
        elif all(isinstance(f, torch.Tensor) and f.ndim == 3 for f in frames):
            frames = torch.stack(frames)
        else:
            raise ValueError("conditioning_frames must be PIL images, (H, W, c) arrays or (c, H, W) tensors, one kind")
    if isinstance(frames, np.ndarray):
        x = frames.astype(np.float32) / 255.0 if frames.dtype == np.uint8 else frames.astype(np.float32)
        x = torch.from_numpy(x).permute(0, 3, 1, 2)
    else:
        x = frames.float()
    h, w = x.shape[-2:]
    height = height or h - h % multiple
    width = width or w - w % multiple
    if (height, width) != (h, w):
        x = F.interpolate(x, size=(height, width))
    return x


# ----------------------------------------------------------------------------- pipeline


class ControlledVideoPipeline(IPAdapterMixin, SDVideoPipeline):
    """Stable Diffusion 1.x (``UNet2D``) + ``ControlNet`` -> a video following one control image per frame
    (Text2Video-Zero's ControlNet variant; see the module docstring). IP-Adapter image prompts as in
    :class:`~vidcore.pipelines.text2video_zero.TextToVideoZeroPipeline` (the ControlNet sees the text only, as in
    diffusers' ControlNet pipelines)."""
    # no FreeInit: every frame starts from one shared noise (Text2Video-Zero), which FreeInit would replace
    component_names = COMPONENTS

    def __init__(self, tokenizer, text_encoder, unet, controlnet, vae, scheduler):
        if not isinstance(unet, UNet2D):
            raise TypeError(f"ControlledVideoPipeline: unet must be a vidcore UNet2D, got {type(unet).__name__}")
        if not isinstance(controlnet, ControlNet):
            raise TypeError(f"ControlledVideoPipeline: controlnet must be a vidcore ControlNet, got "
                            f"{type(controlnet).__name__}")
        controlnet.check_compatible(unet)
        super().__init__(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, controlnet=controlnet, vae=vae,
                         scheduler=scheduler)

    loaders = {**SD_LOADERS, "controlnet": load_controlnet}
    arguments = {"controlnet": load_controlnet}

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, controlnet=None,
                        torch_dtype: torch.dtype | str | None = None, variant: str | None = None,
                        revision: str | None = None, token: str | None = None, controlnet_config_from=None,
                        **components):
        """Load a Stable Diffusion 1.x folder or hub repo (``stable-diffusion-v1-5/stable-diffusion-v1-5``) and
        ``controlnet`` (a ControlNet, or a folder / hub repo id / file :func:`~vidcore.loading.loaders.load_controlnet`
        reads, e.g. ``lllyasviel/sd-controlnet-openpose``; an original file's config is ``controlnet_config_from`` or
        SD1.5's); without it the folder's own ``controlnet/`` (a saved ``StableDiffusionControlNetPipeline``) is used.
        The stored scheduler is used as in :class:`~vidcore.pipelines.text2video_zero.TextToVideoZeroPipeline`;
        components passed as keyword arguments replace the stored ones."""
        if controlnet is not None and controlnet_config_from is not None:
            controlnet = load_controlnet(controlnet, torch_dtype, variant, token, config_from=controlnet_config_from)
        return super().from_pretrained(path_or_repo, torch_dtype, variant, revision, token, controlnet=controlnet,
                                       **components)

    @classmethod
    def missing_component(cls, name: str, where: str, single_file: bool) -> Exception:
        if name == "controlnet":
            return no_controlnet_error(where, EXAMPLE_CONTROLNET)
        return super().missing_component(name, where, single_file)

    # -- pieces ---------------------------------------------------------------------------------
    def prepare_control(self, conditioning_frames, height, width) -> torch.Tensor:
        """The control images as ``f c H W`` in [0, 1] at the generated size, checked against the ControlNet."""
        x = control_frames_to_tensor(conditioning_frames, height, width, self.vae_scale_factor)
        h, w = x.shape[-2:]
        if h % 8 or w % 8 or h <= 0 or w <= 0:
            raise ValueError(f"height and width must be positive multiples of 8, got height={h}, width={w} (from "
                             f"{'the arguments' if height or width else 'the conditioning frames'})")
        channels = self.controlnet.config.conditioning_channels
        if x.shape[1] != channels:
            raise ValueError(f"conditioning_frames have {x.shape[1]} channels; the ControlNet takes {channels}")
        return x

    def prepare_shared_latents(self, videos, num_frames, shape, dtype, device, generator, latents=None):
        """``(b f) c h w`` initial latents: one draw of ``b c h w``, each video's latent repeated over its frames
        (Text2Video-Zero's recipe), or ``latents`` given as ``b c h w`` (repeated) or ``(b f) c h w``; scaled by
        the scheduler's sigma."""
        if latents is None:
            latents = randn_tensor((videos, *shape), generator=generator, device=device, dtype=dtype)
        elif (latents.ndim != 4 or tuple(latents.shape[1:]) != tuple(shape)
              or latents.shape[0] not in (videos, videos * num_frames)):
            dims = ", ".join(map(str, shape))
            raise ValueError(f"latents must have shape ({videos}, {dims}) (shared by the frames of a video) or "
                             f"({videos * num_frames}, {dims}), got {tuple(latents.shape)}")
        latents = latents.to(device=device, dtype=dtype)
        if latents.shape[0] == videos:
            latents = latents.repeat_interleave(num_frames, dim=0)
        return latents * self.scheduler.init_noise_sigma

    # -- call -----------------------------------------------------------------------------------
    callback_tensor_inputs = CALLBACK_TENSOR_INPUTS

    @torch.no_grad()
    def __call__(self, prompt: str | None = None, conditioning_frames=None, height: int | None = None,
                 width: int | None = None, num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 negative_prompt: str | None = None, num_videos_per_prompt: int = 1, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True, controlnet_conditioning_scale: float = 1.0,
                 guess_mode: bool = False, control_guidance_start: float = 0.0, control_guidance_end: float = 1.0,
                 clip_skip: int | None = None, callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: tuple[str, ...] | list[str] = ("latents",),
                 decode_chunk_size: int | None = None, video_length: int | None = None,
                 cross_frame_attention: bool = True, ip_adapter_image=None,
                 ip_adapter_image_embeds: list[torch.Tensor] | None = None):
        """Generate one video with one frame per control image in ``conditioning_frames``.

        Argument names and defaults follow diffusers' StableDiffusionControlNetPipeline; ``prompt`` is one string
        for the whole video (diffusers' recipe repeats it per frame); ``num_videos_per_prompt`` videos follow the
        same control images, each from its own noise; ``latents`` is ``b 4 h w`` (shared by the frames of each
        video) or ``(b f) 4 h w``. ``video_length``, when given, must equal the number of control images.
        ``cross_frame_attention=False`` turns Text2Video-Zero's frame-0 attention off (plain per-frame ControlNet).
        ``ip_adapter_image`` / ``ip_adapter_image_embeds``: an image prompt (after ``load_ip_adapter``) for every frame.
        Returns ``.frames`` (np ``b f H W 3``, pt ``b f 3 H W``, ``[[PIL]]`` or latents ``b 4 f h w``).
        """
        check_call(self, locals())
        if conditioning_frames is None:
            raise ValueError("conditioning_frames is required: one control image (pose, edges ...) per frame")
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of prompt or prompt_embeds")
        if isinstance(prompt, dict):
            require(self, "prompt_travel")
        if prompt is not None and not isinstance(prompt, str):
            raise TypeError(f"prompt must be one string (the prompt of every frame), got {type(prompt).__name__}")
        if prompt_embeds is not None and prompt_embeds.shape[0] != 1:
            raise ValueError(f"prompt_embeds must hold one prompt (1, tokens, dim), got {tuple(prompt_embeds.shape)}")
        if not isinstance(num_videos_per_prompt, int) or num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt must be a positive integer, got {num_videos_per_prompt!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if not 0.0 <= control_guidance_start < control_guidance_end <= 1.0:
            raise ValueError(f"need 0 <= control_guidance_start < control_guidance_end <= 1, got "
                             f"{control_guidance_start} and {control_guidance_end}")
        check_callback_inputs(callback_on_step_end_tensor_inputs, CALLBACK_TENSOR_INPUTS)
        check_ip_adapter_inputs(ip_adapter_image, ip_adapter_image_embeds)
        for name, value in (("height", height), ("width", width)):
            if value is not None and (value <= 0 or value % 8):
                raise ValueError(f"height and width must be positive multiples of 8, got {name}={value}")
        control = self.prepare_control(conditioning_frames, height, width)
        frames = control.shape[0]
        if video_length is not None and video_length != frames:
            raise ValueError(f"video_length={video_length} but conditioning_frames holds {frames} control images: "
                             "give one control image per frame")
        height, width = control.shape[-2:]

        device = self.device
        guidance = guidance_scale > 1.0
        guess_mode = guess_mode or self.controlnet.config.global_pool_conditions
        videos = num_videos_per_prompt
        cond, uncond = self.encode_prompt(prompt, device, videos, guidance, negative_prompt, prompt_embeds,
                                          negative_prompt_embeds, clip_skip)
        image_embeds = None
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:  # one row per video (and half)
            image_embeds = self.prepare_ip_adapter_image_embeds(ip_adapter_image, ip_adapter_image_embeds, device,
                                                                videos, guidance)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        s = self.vae_scale_factor
        shape = (self.unet.config.in_channels, height // s, width // s)
        latents = self.prepare_shared_latents(videos, frames, shape, cond.dtype, device, generator, latents)

        control = control.to(device=device, dtype=self.controlnet.dtype).repeat(videos, 1, 1, 1)  # (b f) c H W
        if guidance and not guess_mode:
            control = torch.cat([control] * 2)

        unet, controlnet = self._run_on_device("unet"), self._run_beside("controlnet")
        step_end = StepEnd(self, callback_on_step_end, callback_on_step_end_tensor_inputs,
                           {"prompt_embeds": cond, "negative_prompt_embeds": uncond})

        def predict(latents, t, i):
            cond, uncond = step_end.tensors["prompt_embeds"], step_end.tensors["negative_prompt_embeds"]
            text = cond.repeat_interleave(frames, dim=0)  # (b f) m d: the prompt of every frame
            embeds = torch.cat([uncond.repeat_interleave(frames, dim=0), text]) if guidance else text
            residuals = {}
            if in_control_window(i, len(timesteps), control_guidance_start, control_guidance_end):
                model_in = self.scheduler.scale_model_input(torch.cat([latents] * 2) if guidance else latents, t)
                residuals = controlnet_residuals(controlnet, self.scheduler, latents, model_in, t, embeds, control,
                                                 controlnet_conditioning_scale, guess_mode, guidance)

            def model(x, embeds, image_embeds, **residuals):
                return unet(self.scheduler.scale_model_input(x, t), t, embeds, image_embeds=image_embeds, **residuals)

            if not guidance:
                return model(latents, embeds, image_embeds, **residuals)
            noise = guidance_batch(model, latents, 2, self.guidance_batches(), embeds=embeds, image_embeds=image_embeds,
                                   **residuals)
            return apply_guidance(noise, guidance_scale)

        step = scheduler_step(self.scheduler, eta=eta, generator=generator)
        with frame_attention((unet, controlnet), frames if cross_frame_attention else None):
            latents = self.sample(latents, timesteps, predict, step, step_end)

        video = latents.view(videos, frames, *latents.shape[1:]).permute(0, 2, 1, 3, 4)  # b c f h w
        return self.finish(video, output_type, return_dict, decode_chunk_size)
