"""The pipeline methods diffusers users reach for, written once for every vidcore pipeline: ``components`` (name ->
module), ``from_pipe``, and the settings that live on the models (VAE slicing / tiling, FreeU, fused QKV, attention
slicing), each a plain field on the model with a ``disable_*`` / ``unfuse_*`` that restores the exact outputs (design
principle 13), and the pipeline's own activation settings (guidance batching, the memory budget: plain fields with a
setter, read by each call).
Layerwise casting (fp8 weight storage) is torch hooks on the models' layers
(:mod:`vidcore.nn.layerwise_casting`), whose ``disable_*`` keeps the fp8-rounded weights (outputs stay those
of the cast model, as documented there).

``save_pretrained`` is :mod:`vidcore.loading.save_pipeline`; the LoRA ``scale`` of ``cross_attention_kwargs``
is :mod:`vidcore.pipelines.lora`; ``load_textual_inversion`` is :mod:`vidcore.pipelines.textual_inversion`.
"""

from __future__ import annotations

import inspect
import os

import torch
from torch import nn

from ..errors import ArgumentError, UnsupportedFeatureError
from ..loading.pipeline import declared
from ..loading.save_pipeline import save_pipeline
from ..models.options import AttentionSlicingMixin
from ..nn.layerwise_casting import is_cast
from ..sampling.guidance import BATCHING_MODES, JOINT, GuidanceBatching
from ..sampling.memory import (available_bytes, decoded_frame_bytes, fitting_chunk, parse_bytes,
                               unet_activation_bytes)
from .auto import PIPELINES


def grouped_attention(model: nn.Module) -> bool:
    """Whether an attention of ``model`` has a processor that groups its batch's rows
    (``CrossFrameAttnProcessor(batch_size > 1)``): its groups assume the joint guidance batch."""
    return any(getattr(getattr(m, "processor", None), "batch_size", 1) > 1 for m in model.modules())


def diffusers_pipeline_name(cls: type) -> str:
    """diffusers' class name for a vidcore pipeline class (``TextToVideoPipeline`` -> ``TextToVideoSDPipeline``;
    its own name where the names agree or diffusers has no such pipeline)."""
    target = (cls.__module__, cls.__name__)
    for name, where in PIPELINES.items():
        if where == target and name != cls.__name__:
            return name
    return cls.__name__


AUTO_ATTENTION_SLICE = 4096  # enable_attention_slicing("auto"): query tokens per attention call


class Components:
    """``Pipe.components`` (on the class): the component names, in declaration order (what loading reads);
    ``pipe.components`` (on an instance): ``{name: module}`` in that order, as diffusers, so
    ``OtherPipe(**pipe.components)`` works. Iterating the dict yields the names, as the old tuple did."""

    def __get__(self, pipe, cls):
        if pipe is None:
            return cls.component_names
        return pipe.components_dict()


class PipelineMethodsMixin:
    """Mixed into :class:`~vidcore.pipelines.base.VideoPipeline`; see the module docstring."""

    component_names: tuple[str, ...] = ()
    components = Components()
    guidance_batching: str = "joint"  # set_guidance_batching
    max_memory: int | None = None  # set_max_memory, in bytes

    def __init_subclass__(cls, **kwargs):
        """A subclass that still declares ``components = (names...)`` (the old spelling) gets them as
        ``component_names``."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("components")
        if isinstance(own, (tuple, list)):
            cls.component_names = tuple(own)
            cls.components = Components()

    def components_dict(self) -> dict:
        """``{name: module}``: the declared components, then the optional ones this pipeline has (AnimateDiff's
        ``motion_adapter``, ``image_encoder``, ``feature_extractor``; None when not loaded)."""
        names = [*self.component_names, *declared(type(self))]
        return {n: getattr(self, n, None) for n in dict.fromkeys(names) if hasattr(self, n)}

    @classmethod
    def from_pipe(cls, pipeline, **overrides):
        """This pipeline class built from ``pipeline``'s modules (the same objects, not copies: no memory is
        added), ``overrides`` replacing or adding components (``AnimateDiffPipeline.from_pipe(sd_pipe,
        motion_adapter=adapter)``)."""
        source = pipeline.components if isinstance(getattr(pipeline, "components", None), dict) else None
        if source is None:
            raise TypeError(f"from_pipe needs a pipeline with a components dict, got {type(pipeline).__name__}")
        params = inspect.signature(cls.__init__).parameters
        open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
        wanted = [*cls.component_names, *declared(cls)]
        if not open_ended:
            wanted = [n for n in wanted if n in params]
        modules = {n: source[n] for n in dict.fromkeys(wanted) if n in source and n not in overrides}
        modules.update(overrides)
        missing = [n for n in cls.component_names if modules.get(n) is None and n not in overrides]
        if missing:
            raise TypeError(f"{cls.__name__}.from_pipe: {type(pipeline).__name__} has no {missing}; pass them as "
                            f"keyword arguments ({', '.join(f'{n}=...' for n in missing)})")
        pipe = cls(**modules)
        pipe.set_progress_bar_config(**getattr(pipeline, "progress_bar_config", {}))
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, variant: str | None = None,
                        safe_serialization: bool = True) -> None:
        """Write a diffusers-layout pipeline folder (``model_index.json`` naming diffusers' pipeline class + one
        subfolder per component, ``variant`` weight files when given) that diffusers' ``from_pretrained`` and
        vidcore's load (:mod:`vidcore.loading.save_pipeline`). A pipeline diffusers has no class for (vidcore's
        ControlledVideoPipeline, VideoInstructPix2PixPipeline) keeps its vidcore name; its components load in
        diffusers' model classes. ``safe_serialization=False`` is refused (safetensors only)."""
        save_pipeline(self.components, save_directory, diffusers_pipeline_name(type(self)), variant,
                      safe_serialization, self.saved_index_options())

    def saved_index_options(self) -> dict:
        """Entries ``save_pretrained`` adds to ``model_index.json`` besides the components (none here)."""
        return {}

    # -- activations --------------------------------------------------------------------------
    def set_guidance_batching(self, mode: str = "joint") -> None:
        """How classifier-free guidance runs its branches: ``"joint"`` (default, as diffusers) one UNet call on the
        ``[uncond; cond]`` batch (InstructPix2Pix: its three branches), ``"split"`` one call per branch in turn
        (the same result within float rounding at half the activation peak, a little slower), ``"auto"`` split
        when the estimated joint peak exceeds the memory budget (:meth:`set_max_memory`; joint when it is
        unknown). With CFG-parallel on, each rank already runs one branch: the call is joint there."""
        if mode not in BATCHING_MODES:
            raise ValueError(f"guidance batching must be one of {BATCHING_MODES}, got {mode!r}")
        self.guidance_batching = mode

    def set_max_memory(self, max_memory: int | str | None) -> None:
        """The activation budget of ``set_guidance_batching("auto")`` and ``decode_chunk_size="auto"``: bytes, or a
        string such as ``"2GB"`` / ``"512MiB"``; None: the free memory of a CUDA device, unknown on the CPU."""
        self.max_memory = parse_bytes(max_memory)

    def memory_budget(self) -> int | None:
        """The bytes "auto" settings may use now (:func:`vidcore.sampling.memory.available_bytes`)."""
        return available_bytes(self.max_memory, self.device)

    def guidance_batches(self) -> GuidanceBatching:
        """This call's :class:`~vidcore.sampling.guidance.GuidanceBatching` (for ``guided`` / ``guidance_batch``):
        the mode, and for "auto" the budget and the UNet's activation estimate."""
        parallel = getattr(self, "parallel", None)
        if parallel is not None and parallel.config.cfg_size == 2:
            return JOINT  # CFG-parallel: each rank's call is already one branch
        if self.guidance_batching != "joint" and grouped_attention(self.unet):
            return JOINT  # a CrossFrameAttnProcessor(batch_size > 1) groups the rows of the whole batch
        if self.guidance_batching != "auto":
            return GuidanceBatching(self.guidance_batching)
        config = self.unet.config

        def estimate(latents):
            return unet_activation_bytes(latents, config.out_channels, config.block_out_channels[0])

        return GuidanceBatching("auto", self.memory_budget(), estimate)

    def auto_decode_chunk(self, latent_height: int, latent_width: int, frames: int) -> int:
        """``decode_chunk_size="auto"``: the most frames (at least 1, at most ``frames``) whose estimated decoder
        activations (:func:`vidcore.sampling.memory.decoded_frame_bytes`) fit the memory budget; when the budget is
        unknown (CPU without ``set_max_memory``), this pipeline's default ``decode_chunk_size`` (None: all
        ``frames``). An fp16 VAE that decodes upcast (``force_upcast``) counts float32 activations."""
        budget = self.memory_budget()
        if budget is None:
            default = inspect.signature(type(self).__call__).parameters["decode_chunk_size"].default
            return frames if default is None else max(1, min(default, frames))
        vae = self.vae
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        per_frame = decoded_frame_bytes(latent_height, latent_width, self.vae_scale_factor,
                                        vae.config.block_out_channels, 4 if upcast else vae.dtype.itemsize)
        return fitting_chunk(budget, per_frame, frames)

    def enable_attention_slicing(self, slice_size: int | str = "auto") -> None:
        """Attention slicing in the UNet and ControlNets (:class:`vidcore.models.options.AttentionSlicingMixin`): at
        most ``slice_size`` query tokens per attention call ("auto": 4096, one 64 x 64 latent frame), the same
        result; diffusers' name, though diffusers slices by heads."""
        self._attention_slicing(AUTO_ATTENTION_SLICE if slice_size == "auto" else slice_size)

    def disable_attention_slicing(self) -> None:
        self._attention_slicing(None)

    def _attention_slicing(self, slice_size: int | None) -> None:
        models = [m for c in self.components_dict().values() if isinstance(c, nn.Module) for m in c.modules()
                  if isinstance(m, AttentionSlicingMixin)]
        for model in models:
            if slice_size is None:
                model.disable_attention_slicing()
            else:
                model.enable_attention_slicing(slice_size)

    # -- VAE ------------------------------------------------------------------------------------
    def _vae_switch(self, method: str, *args) -> None:
        switch = getattr(self.vae, method, None)
        if switch is None:
            raise UnsupportedFeatureError(f"{type(self).__name__}'s VAE ({type(self.vae).__name__}) has no "
                                          f"{method.split('_', 1)[1]} (pipe.vae.{method})"
                                          + ("; decode_chunk_size= bounds its memory" if "slicing" in method else ""))
        switch(*args)

    def enable_vae_slicing(self) -> None:
        """Encode / decode one image at a time (lower peak memory; exact)."""
        self._vae_switch("enable_slicing")

    def disable_vae_slicing(self) -> None:
        self._vae_switch("disable_slicing")

    def enable_vae_tiling(self) -> None:
        """Encode / decode large images in overlapping tiles, blended at the seams (as diffusers)."""
        self._vae_switch("enable_tiling")

    def disable_vae_tiling(self) -> None:
        self._vae_switch("disable_tiling")

    # -- UNet -----------------------------------------------------------------------------------
    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float) -> None:
        """FreeU on the UNet (:meth:`vidcore.models.options.UNetOptionsMixin.enable_freeu`); ``disable_freeu``
        restores the exact outputs."""
        if not hasattr(self.unet, "enable_freeu"):
            raise UnsupportedFeatureError(f"{type(self).__name__}'s UNet ({type(self.unet).__name__}) has no FreeU")
        self.unet.enable_freeu(s1, s2, b1, b2)

    def disable_freeu(self) -> None:
        if hasattr(self.unet, "disable_freeu"):
            self.unet.disable_freeu()

    def _qkv_models(self, unet: bool, vae: bool) -> list[nn.Module]:
        return [m for m, on in ((getattr(self, "unet", None), unet), (getattr(self, "vae", None), vae))
                if on and isinstance(m, nn.Module)]

    def fuse_qkv_projections(self, unet: bool = True, vae: bool = True) -> None:
        """One matmul for the query/key/value projections of every attention in the UNet and the VAE (self
        attention: q, k and v; cross attention: k and v); equal outputs within float rounding.
        :meth:`unfuse_qkv_projections` restores the separate projections, bit-exact."""
        from ..nn.fused_qkv import fuse_qkv

        for model in self._qkv_models(unet, vae):
            fuse_qkv(model)

    def unfuse_qkv_projections(self, unet: bool = True, vae: bool = True) -> None:
        from ..nn.fused_qkv import unfuse_qkv

        for model in self._qkv_models(unet, vae):
            unfuse_qkv(model)

    # -- layerwise casting ----------------------------------------------------------------------
    def enable_layerwise_casting(self, storage_dtype: torch.dtype = torch.float8_e4m3fn,
                                 compute_dtype: torch.dtype | None = None,
                                 skip_modules_pattern: tuple[str, ...] | None = None,
                                 components: tuple[str, ...] | None = None, non_blocking: bool = False) -> None:
        """Store the weights of ``components`` in ``storage_dtype`` (fp8), each layer upcast to ``compute_dtype``
        while it runs (:meth:`vidcore.models.options.LayerwiseCastingMixin.enable_layerwise_casting`). Default
        components: the denoiser and the ControlNet / motion adapter where the pipeline has them
        (``components=("unet", "vae")`` adds the VAE); a motion adapter inside the UNet is cast with it."""
        names = components
        if names is None:
            names = [n for n in ("unet", "controlnet", "motion_adapter") if getattr(self, n, None) is not None]
        models: list[nn.Module] = []
        for name in names:  # every name checked before any model changes
            model = getattr(self, name, None)
            if not isinstance(model, nn.Module) or name not in self.components:
                raise ArgumentError(f"components: {type(self).__name__} has no model {name!r} "
                                    f"(it has {[n for n, m in self.components.items() if isinstance(m, nn.Module)]})")
            if not hasattr(model, "enable_layerwise_casting"):
                raise UnsupportedFeatureError(f"{type(self).__name__}.{name} ({type(model).__name__}) has no "
                                              "layerwise casting")
            if is_cast(model):
                raise RuntimeError(f"layerwise casting is already on in {name}; call disable_layerwise_casting() "
                                   "first")
            models.append(model)
        for model in models:
            if any(model is not other and any(model is m for m in other.modules()) for other in models):
                continue  # inside another component (AnimateDiff's adapter in the UNet): cast with it, once
            model.enable_layerwise_casting(storage_dtype, compute_dtype, skip_modules_pattern,
                                           non_blocking=non_blocking)

    def disable_layerwise_casting(self) -> None:
        """Layerwise casting off on every component (their weights stay fp8-rounded in the compute dtype)."""
        for model in self.components.values():
            if hasattr(model, "disable_layerwise_casting"):
                model.disable_layerwise_casting()


__all__ = ["Components", "PipelineMethodsMixin"]
