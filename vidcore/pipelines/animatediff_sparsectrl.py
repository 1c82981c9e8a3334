"""AnimateDiff with SparseCtrl (diffusers' ``AnimateDiffSparseControlNetPipeline``): a few control images at
chosen frames (scribbles, or RGB keyframes) steer the whole video through a
:class:`~vidcore.models.sparse_controlnet.SparseControlNet`.

The control images are resized to the video's size; for the RGB variant (``use_simplified_condition_embedding``)
they are encoded by the VAE (a posterior sample drawn from torch's global generator, as diffusers does, so call
``torch.manual_seed`` for repeatable RGB runs). They are placed at ``controlnet_frame_indices`` in an otherwise
zero condition video with a mask channel marking those frames. Every step the SparseControlNet runs on the whole
video (or on each context window, with that window's slice of the condition) and its residuals go into the UNet
in :meth:`AnimateDiffBase.control_residuals` (its inputs in ``FrameInputs.control``).

Difference from diffusers: in guess mode with guidance the unconditional half gets zero residuals (diffusers hands
the UNet residuals of half the batch there and fails).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..loading.loaders import SPARSECTRL_REPOS, load_sparse_controlnet  # noqa: F401  (re-exported)
from ..models.sparse_controlnet import SparseControlNet
from .animatediff import AnimateDiffBase, FrameInputs
from .checks import check_call
from .controlled_video import control_frames_to_tensor
from .lora import takes_cross_attention_kwargs

class AnimateDiffSparseControlNetPipeline(AnimateDiffBase):
    """Stable Diffusion 1.5 + motion adapter + SparseCtrl: text + control images at some frames -> video."""

    component_names = ("tokenizer", "text_encoder", "unet", "vae", "scheduler", "controlnet")
    # no FreeNoise: diffusers' SparseCtrl pipeline has none, and the SparseControlNet's own motion modules would
    # need their own windows

    def __init__(self, tokenizer, text_encoder, unet, vae, scheduler, controlnet: SparseControlNet,
                 motion_adapter=None, image_encoder=None, feature_extractor=None):
        if not isinstance(controlnet, SparseControlNet):
            raise TypeError(f"controlnet must be a vidcore SparseControlNet, got {type(controlnet).__name__}")
        super().__init__(tokenizer, text_encoder, unet, vae, scheduler, motion_adapter, image_encoder,
                         feature_extractor, controlnet=controlnet)
        controlnet.check_compatible(self.unet.unet)

    # what AnimateDiffPipeline loads, plus the SparseControlNet: controlnet=, else the folder's own controlnet/
    loaders = {**AnimateDiffBase.loaders, "controlnet": load_sparse_controlnet}
    arguments = {**AnimateDiffBase.arguments, "controlnet": load_sparse_controlnet}
    example_controlnet = " or ".join(SPARSECTRL_REPOS)

    # -- the UNet pass (AnimateDiffBase.predict_noise calls it per window) -----------------------
    def check_context(self, num_frames, context_length, context_stride, context_weighting):
        limit = min(self.motion_adapter.max_frames, self.controlnet.max_frames)
        if context_length is None and num_frames > limit:
            context_length = limit  # windows the SparseControlNet's frame table can hold too
        if context_length is not None and context_length > self.controlnet.max_frames:
            raise ValueError(f"context_length={context_length} exceeds the SparseControlNet's motion_max_seq_length="
                             f"{self.controlnet.max_frames}")
        return super().check_context(num_frames, context_length, context_stride, context_weighting)

    def control_residuals(self, latents, t, embeds, start: int, end: int, inputs: FrameInputs,
                          step: tuple[int, int]) -> dict:
        """The SparseControlNet residuals of frames ``start:end`` for the whole guidance batch."""
        c = inputs.control
        model_in = self.scheduler.scale_model_input(torch.cat([latents] * 2) if c["guidance"] else latents, t)
        only_cond = c["guess_mode"] and c["guidance"]
        x = model_in.chunk(2)[1] if only_cond else model_in  # b c f h w
        text = embeds.chunk(2)[1] if only_cond else embeds  # b m d
        self._run_beside("controlnet")
        down, mid = self.controlnet(x, t, text, c["cond"][:, :, start:end], c["mask"][:, :, start:end],
                                    conditioning_scale=c["scale"], guess_mode=c["guess_mode"])
        if only_cond:
            down = [torch.cat([torch.zeros_like(r), r]) for r in down]
            mid = torch.cat([torch.zeros_like(mid), mid])
        return dict(down_block_additional_residuals=tuple(down), mid_block_additional_residual=mid)

    # -- call -----------------------------------------------------------------------------------
    def prepare_sparse_condition(self, conditioning_frames, frame_indices, num_frames: int, height: int, width: int):
        """(condition ``1 c f H W``, mask ``1 1 f H W``): the control images (VAE latents for the RGB variant)
        at ``frame_indices``, zeros elsewhere."""
        if conditioning_frames is None:
            raise ValueError("conditioning_frames is required (control images for some frames)")
        if not isinstance(conditioning_frames, (list, tuple)):
            conditioning_frames = [conditioning_frames]
        images = control_frames_to_tensor(list(conditioning_frames), height, width, self.vae_scale_factor)  # n C H W
        indices = [frame_indices] if isinstance(frame_indices, int) else list(frame_indices)
        if len(images) > num_frames:
            raise ValueError(f"got {len(images)} conditioning frames for num_frames={num_frames}")
        if not indices or len(indices) > len(images):
            raise ValueError(f"controlnet_frame_indices has {len(indices)} entries for {len(images)} conditioning "
                             "frames; give one index per conditioning frame")
        if any(not isinstance(i, int) or not 0 <= i < num_frames for i in indices) or len(set(indices)) != len(indices):
            raise ValueError(f"controlnet_frame_indices must be distinct frame indices in [0, {num_frames}), got "
                             f"{indices}")
        net = self.controlnet
        device, dtype = self.device, net.dtype
        x = images[: len(indices)].to(device)
        if net.config.use_simplified_condition_embedding:  # RGB: VAE latents of the keyframes
            vae = self._run_on_device("vae")
            x = vae.encode((2 * x - 1).to(vae.dtype)).sample(None) * vae.config.scaling_factor
        if x.shape[1] != net.config.conditioning_channels:
            raise ValueError(f"conditioning_frames give {x.shape[1]} channels; the SparseControlNet takes "
                             f"{net.config.conditioning_channels}")
        cond = torch.zeros(1, x.shape[1], num_frames, *x.shape[-2:], device=device, dtype=dtype)
        mask = torch.zeros(1, 1, num_frames, *x.shape[-2:], device=device, dtype=dtype)
        cond[:, :, indices] = x.to(dtype).transpose(0, 1)[None]
        mask[:, :, indices] = 1
        return cond, mask

    @torch.no_grad()
    @takes_cross_attention_kwargs
    def __call__(self, prompt: str | list[str] | None = None, num_frames: int = 16, height: int | None = None,
                 width: int | None = None, conditioning_frames=None, controlnet_conditioning_scale: float = 1.0,
                 controlnet_frame_indices=(0,), guess_mode: bool = False, guidance_scale: float = 7.5,
                 *, num_inference_steps: int = 50, negative_prompt: str | list[str] | None = None,
                 num_videos_per_prompt: int = 1, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True, clip_skip: int | None = None,
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: tuple[str, ...] | list[str] = ("latents",),
                 decode_chunk_size: int | None = 16, context_length: int | None = None,
                 context_stride: int | None = None, context_weighting: str = "pyramid", ip_adapter_image=None,
                 ip_adapter_image_embeds: list[torch.Tensor] | None = None, motion_scale: float | list[float] = 1.0,
                 cross_attention_kwargs: dict | None = None):
        """Generate a video whose frames ``controlnet_frame_indices`` follow ``conditioning_frames`` (one image
        per index, PIL or arrays; scribbles or RGB keyframes by the SparseControlNet's kind). Other arguments as
        :meth:`AnimateDiffPipeline.__call__`."""
        check_call(self, locals())
        height, width = self.default_size(height, width, 64)
        cond, mask = self.prepare_sparse_condition(conditioning_frames, controlnet_frame_indices, num_frames, height,
                                                   width)
        guess_mode = guess_mode or self.controlnet.config.global_pool_conditions
        control = {"cond": cond, "mask": mask, "scale": float(controlnet_conditioning_scale), "guess_mode": guess_mode,
                   "guidance": guidance_scale > 1.0}
        return self.animate_with(locals(), control=control)


__all__ = ["AnimateDiffSparseControlNetPipeline", "SPARSECTRL_REPOS", "load_sparse_controlnet"]
