"""AnimateDiff with ControlNet (diffusers' ``AnimateDiffControlNetPipeline``): one control image per frame
(poses, edges, depth ...) steers an AnimateDiff video; several ControlNets combine (their residuals add up).

Each step the ControlNet runs on every frame as an image (``(b f) c h w``, the prompt repeated per frame) with
that frame's control image, and its residuals are added to the UNet's skip features before the motion modules
mix the frames. The ControlNet runs in :meth:`AnimateDiffBase.control_residuals` (its inputs in
``FrameInputs.control``), so with sliding context
windows (videos longer than the motion adapter's table) each window gets the control images of its own frames.

Differences from diffusers (its results are matched seed for seed otherwise): in guess mode with guidance the
ControlNet runs on the conditional half only and the unconditional half gets zero residuals (diffusers hands the
UNet residuals of half the batch there and fails); with ``num_videos_per_prompt > 1`` every video gets the
control images in frame order (diffusers interleaves copies of each frame).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..loading.loaders import EXAMPLE_CONTROLNET, load_controlnets
from ..models.controlnet import ControlNet, MultiControlNet
from ..sampling import FreeNoiseMixin
from .animatediff import AnimateDiffBase, FrameInputs
from .checks import check_call
from .controlled_video import control_frames_to_tensor
from .lora import takes_cross_attention_kwargs


def as_controlnet(controlnet) -> ControlNet | MultiControlNet:
    """A ControlNet, a MultiControlNet, or a list / tuple of ControlNets (two or more: a MultiControlNet)."""
    from ..models.sparse_controlnet import SparseControlNet

    if any(isinstance(c, SparseControlNet) for c in (controlnet if isinstance(controlnet, (list, tuple)) else [controlnet])):
        raise TypeError("a SparseControlNet (SparseCtrl) goes into AnimateDiffSparseControlNetPipeline")
    if isinstance(controlnet, (list, tuple)):
        nets = list(controlnet)
        if not all(isinstance(n, ControlNet) for n in nets):
            raise TypeError("controlnet list entries must be vidcore ControlNets (vidcore.load_model(...))")
        return nets[0] if len(nets) == 1 else MultiControlNet(nets)
    if not isinstance(controlnet, (ControlNet, MultiControlNet)):
        raise TypeError(f"controlnet must be a vidcore ControlNet or a list of them, got {type(controlnet).__name__}")
    return controlnet


def _per_net(value, count: int, name: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * count
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries for {count} ControlNets")
    return values


class AnimateDiffControlNetPipeline(FreeNoiseMixin, AnimateDiffBase):
    """Stable Diffusion 1.5 + motion adapter + ControlNet(s): text + per-frame control images -> video."""

    component_names = ("tokenizer", "text_encoder", "unet", "vae", "scheduler", "controlnet")

    def __init__(self, tokenizer, text_encoder, unet, vae, scheduler, controlnet, motion_adapter=None,
                 image_encoder=None, feature_extractor=None):
        controlnet = as_controlnet(controlnet)
        super().__init__(tokenizer, text_encoder, unet, vae, scheduler, motion_adapter, image_encoder,
                         feature_extractor, controlnet=controlnet)
        controlnet.check_compatible(self.unet.unet)

    @property
    def nets(self) -> list[ControlNet]:
        return list(self.controlnet.nets) if isinstance(self.controlnet, MultiControlNet) else [self.controlnet]

    # what AnimateDiffPipeline loads, plus the ControlNet(s): from_pretrained / from_single_file take controlnet= (a
    # ControlNet, a folder, a hub repo id such as lllyasviel/sd-controlnet-openpose, an original file, or a list of
    # those, combined), else the folder's own controlnet/ (a saved diffusers AnimateDiffControlNetPipeline); a
    # single file holds none
    loaders = {**AnimateDiffBase.loaders, "controlnet": load_controlnets}
    arguments = {**AnimateDiffBase.arguments, "controlnet": load_controlnets}
    example_controlnet = EXAMPLE_CONTROLNET

    # -- the UNet pass (AnimateDiffBase.predict_noise calls it per window) -----------------------
    def control_residuals(self, latents, t, embeds, start: int, end: int, inputs: FrameInputs,
                          step: tuple[int, int]) -> dict:
        """The ControlNet residuals of frames ``start:end`` for the whole guidance batch (none outside the
        ControlNets' guidance windows)."""
        c = inputs.control
        i, n = step
        scales = [scale * (0.0 if i / n < s or (i + 1) / n > e else 1.0)
                  for scale, s, e in zip(c["scales"], c["starts"], c["ends"])]
        active = [k for k, scale in enumerate(scales) if scale != 0.0]
        if not active:  # outside every ControlNet's window the residuals would be zeros
            return {}
        model_in = self.scheduler.scale_model_input(torch.cat([latents] * 2) if c["guidance"] else latents, t)
        frames = end - start
        only_cond = c["guess_mode"] and c["guidance"]  # the ControlNet sees the conditional half only
        x = model_in.chunk(2)[1] if only_cond else model_in  # b c f h w
        text = embeds.chunk(2)[1] if only_cond else embeds  # b m d (or (b f) m d: prompt travel)
        b = x.shape[0]
        x = x.transpose(1, 2).reshape(b * frames, *x.shape[1:2], *x.shape[3:])  # (b f) c h w
        if text.shape[0] != b * frames:  # per-frame text already with a prompt schedule (FreeNoise prompt travel)
            text = text.repeat_interleave(frames, dim=0)  # (b f) m d
        self._run_beside("controlnet")
        down, mid = None, None
        for k in active:
            cond = c["frames"][k][:, start:end].flatten(0, 1)  # (b f) C H W
            d, m = self.nets[k](x, t, text, cond, conditioning_scale=scales[k], guess_mode=c["guess_mode"])
            down = list(d) if down is None else [u + v for u, v in zip(down, d)]
            mid = m if mid is None else mid + m
        if only_cond:
            down = [torch.cat([torch.zeros_like(r), r]) for r in down]
            mid = torch.cat([torch.zeros_like(mid), mid])
        return dict(down_block_additional_residuals=tuple(down), mid_block_additional_residual=mid)

    # -- call -----------------------------------------------------------------------------------
    def prepare_control(self, conditioning_frames, num_frames: int, height: int, width: int, videos: int,
                        guidance: bool) -> list[torch.Tensor]:
        """Per ControlNet: its control images as ``n f C H W`` in [0, 1] at the generated size, one copy per
        video (and per guidance half unless in guess mode)."""
        nets = self.nets
        if len(nets) > 1:
            if not isinstance(conditioning_frames, (list, tuple)) or len(conditioning_frames) != len(nets):
                raise ValueError(f"with {len(nets)} ControlNets, conditioning_frames must be a list of {len(nets)} "
                                 "videos (one list of control images per ControlNet)")
            per_net = list(conditioning_frames)
        else:
            per_net = [conditioning_frames]
        out = []
        for k, (net, frames) in enumerate(zip(nets, per_net)):
            if frames is None:
                raise ValueError("conditioning_frames is required (one control image per frame)")
            x = control_frames_to_tensor(frames, height, width, self.vae_scale_factor)  # f C H W
            which = f"conditioning_frames[{k}]" if len(nets) > 1 else "conditioning_frames"
            if x.shape[0] != num_frames:
                raise ValueError(f"{which} has {x.shape[0]} images for num_frames={num_frames}; give one per frame")
            if x.shape[1] != net.config.conditioning_channels:
                raise ValueError(f"{which} have {x.shape[1]} channels; the ControlNet takes "
                                 f"{net.config.conditioning_channels}")
            x = x.to(device=self.device, dtype=net.dtype)[None].expand(videos, -1, -1, -1, -1)
            out.append(torch.cat([x, x]) if guidance else x)
        return out

    @torch.no_grad()
    @takes_cross_attention_kwargs
    def __call__(self, prompt: str | list[str] | None = None, num_frames: int = 16, height: int | None = None,
                 width: int | None = None, conditioning_frames=None, controlnet_conditioning_scale=1.0,
                 guess_mode: bool = False, control_guidance_start=0.0, control_guidance_end=1.0,
                 num_videos_per_prompt: int = 1, guidance_scale: float = 7.5, prompt_embeds: torch.Tensor | None = None,
                 *, num_inference_steps: int = 50, negative_prompt: str | list[str] | None = None, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None, output_type: str = "pil",
                 return_dict: bool = True, clip_skip: int | None = None, callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: tuple[str, ...] | list[str] = ("latents",),
                 decode_chunk_size: int | None = 16, context_length: int | None = None,
                 context_stride: int | None = None, context_weighting: str = "pyramid", ip_adapter_image=None,
                 ip_adapter_image_embeds: list[torch.Tensor] | None = None, motion_scale: float | list[float] = 1.0,
                 cross_attention_kwargs: dict | None = None):
        """Generate a video whose frame ``i`` follows ``conditioning_frames[i]`` (with several ControlNets: a list
        of such videos, one per ControlNet). ``controlnet_conditioning_scale``, ``control_guidance_start`` /
        ``control_guidance_end`` (fractions of the steps where the ControlNet acts) take one value or one per
        ControlNet; ``guess_mode`` as in diffusers. Other arguments as :meth:`AnimateDiffPipeline.__call__`."""
        check_call(self, locals())
        count = len(self.nets)
        scales = [float(s) for s in _per_net(controlnet_conditioning_scale, count, "controlnet_conditioning_scale")]
        starts = _per_net(control_guidance_start, count, "control_guidance_start")
        ends = _per_net(control_guidance_end, count, "control_guidance_end")
        for s, e in zip(starts, ends):
            if not 0.0 <= s < e <= 1.0:
                raise ValueError(f"control_guidance_start must be < control_guidance_end, both in [0, 1]; got {s}, {e}")
        height, width = self.default_size(height, width, 64)
        guess_mode = guess_mode or any(net.config.global_pool_conditions for net in self.nets)
        guidance = guidance_scale > 1.0
        # a dict is one {frame: prompt} schedule (FreeNoise prompt travel)
        prompts = 1 if isinstance(prompt, (str, dict)) else len(prompt) if prompt is not None else (
            prompt_embeds.shape[0] if prompt_embeds is not None else 1)
        frames = self.prepare_control(conditioning_frames, num_frames, height, width, prompts * num_videos_per_prompt,
                                      guidance and not guess_mode)
        control = {"frames": frames, "scales": scales, "starts": starts, "ends": ends, "guess_mode": guess_mode,
                   "guidance": guidance}
        return self.animate_with(locals(), control=control)


__all__ = ["AnimateDiffControlNetPipeline", "as_controlnet"]
