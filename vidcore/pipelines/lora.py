"""Pipeline-level LoRA: diffusers' LoRA method names (``load_lora_weights``, ``set_adapters``,
``fuse_lora``, ``unfuse_lora``, ``unload_lora_weights`` ...) on top of :mod:`vidcore.models.lora`.

>>> pipe.load_lora_weights("guoyww/animatediff-motion-lora-zoom-in", adapter_name="zoom-in")   # active, scale 1
>>> pipe.fuse_lora(lora_scale=0.8)      # the active LoRAs at 0.8
>>> pipe.unfuse_lora()                  # the weights without any LoRA, bit for bit; the LoRAs stay loaded
>>> pipe.fuse_lora(lora_scale=1.2)      # back in, at 1.2
>>> pipe.unload_lora_weights()          # the weights without any LoRA, LoRAs forgotten
>>> pipe.load_lora_weights("wangfuyun/AnimateLCM", weight_name="AnimateLCM_sd15_t2v_lora.safetensors",
...                        adapter_name="lcm-lora")   # a spatial SD1.5 LoRA (kohya layout) works the same way

vidcore has no run-time LoRA branch: a LoRA always acts by being added into ``pipe.unet``'s weights. The pipeline
keeps the loaded LoRAs, their adapter weights and the fuse scale, and after every call that changes them
rewrites the UNet's weights as the original weights (copies kept at the first fuse) plus, for each active
adapter in order, ``adapter_weight * lora_scale * update``. Outputs therefore equal diffusers' for
``load_lora_weights`` (an active LoRA at weight 1), ``set_adapters`` and ``fuse_lora``; ``unfuse_lora`` differs:
in diffusers the LoRA stays active on unmerged layers (the output keeps it), here it is taken out of the
weights (the output is the original one) until ``fuse_lora`` or ``set_adapters`` puts it back.

``cross_attention_kwargs={"scale": s}`` in a call scales the active LoRAs not fused by ``fuse_lora`` by ``s`` for that
call only (:func:`lora_call_scale`: the weights are rewritten at ``s`` and back after the call, error or not), as
diffusers scales its unmerged LoRA layers; the pipelines without LoRAs accept the argument and check it (a scale
without a LoRA changes nothing, as in diffusers).

These methods own every LoRA fused into ``pipe.unet``: do not mix them with
:func:`vidcore.models.lora.fuse_lora` on the same UNet (they would undo its fusions).
"""

from __future__ import annotations

import functools
import inspect
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from ..errors import ArgumentError, ArgumentTypeError
from ..loading.lora import load_lora
from ..models.lora import LoRA, fuse_lora, unfuse_lora
from ..nn.fused_qkv import refresh_fused_qkv

TEXT_ENCODER = "text_encoder"


@dataclass
class _Adapters:
    loras: dict[str, LoRA] = field(default_factory=dict)  # adapter name -> LoRA, in load order
    weights: dict[str, float] = field(default_factory=dict)  # adapter name -> set_adapters weight
    active: list[str] = field(default_factory=list)
    fuse_scale: dict[str, float] = field(default_factory=dict)  # adapter name -> fuse_lora's lora_scale
    enabled: bool = True  # False after unfuse_lora
    call_scale: float = 1.0  # cross_attention_kwargs["scale"] during one call (1 between calls)


def check_cross_attention_kwargs(cross_attention_kwargs) -> float:
    """The LoRA scale of ``cross_attention_kwargs`` (1.0 when absent); the only key vidcore reads is ``scale``."""
    if cross_attention_kwargs is None:
        return 1.0
    if not isinstance(cross_attention_kwargs, Mapping):
        raise ArgumentTypeError(f"cross_attention_kwargs must be a dict such as {{'scale': 0.5}}, got "
                                f"{type(cross_attention_kwargs).__name__}")
    unknown = sorted(set(cross_attention_kwargs) - {"scale"})
    if unknown:
        raise ArgumentError(f"cross_attention_kwargs keys must be among ['scale'] (the LoRA scale), got {unknown}")
    scale = cross_attention_kwargs.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ArgumentTypeError(f"cross_attention_kwargs['scale'] must be a number, got {scale!r}")
    return float(scale)


@contextmanager
def lora_call_scale(pipe, cross_attention_kwargs):
    """For one call: the active, unfused LoRAs of ``pipe`` at ``cross_attention_kwargs["scale"]`` times their
    adapter weights; their weights as before on exit, error or not. A pipeline without LoRAs only checks the
    argument (a scale without a LoRA changes nothing, as in diffusers)."""
    scale = check_cross_attention_kwargs(cross_attention_kwargs)
    state = pipe.__dict__.get("_motion_lora_adapters")
    unfused = state is not None and state.enabled and any(n not in state.fuse_scale for n in state.active)
    if scale == 1.0 or not unfused:  # nothing the scale acts on
        yield
        return
    state.call_scale = scale
    try:
        pipe._apply_loras()
        yield
    finally:
        state.call_scale = 1.0
        pipe._apply_loras()


def takes_cross_attention_kwargs(call):
    """Decorates a pipeline's ``__call__`` that has a ``cross_attention_kwargs`` parameter: the call runs inside
    :func:`lora_call_scale` (its body never reads the argument)."""
    signature = inspect.signature(call)

    @functools.wraps(call)
    def wrapper(self, *args, **kwargs):
        value = signature.bind(self, *args, **kwargs).arguments.get("cross_attention_kwargs")
        with lora_call_scale(self, value):
            return call(self, *args, **kwargs)

    return wrapper


def _names(adapter_names: str | Sequence[str]) -> list[str]:
    names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"adapter_names must be a name or a list of names, got {adapter_names!r}")
    return names


class LoRAMixin:
    """LoRA methods for a pipeline whose ``unet`` is one of vidcore's UNets (UNetMotion for AnimateDiff, UNet3D for
    ModelScope / Zeroscope, SVDUNet, I2VGenXLUNet; see the module docstring for how they map onto diffusers').
    diffusers' SVD and I2VGen-XL pipelines have no LoRA loader; vidcore's read the same files as the others."""

    @property
    def _adapters(self) -> _Adapters:
        return self.__dict__.setdefault("_motion_lora_adapters", _Adapters())

    def _apply_loras(self) -> None:
        """The UNet's weights = originals + the active LoRAs at their effective scales."""
        state = self._adapters
        unfuse_lora(self.unet)
        if state.enabled:
            for name in state.active:
                # a LoRA fused by fuse_lora keeps its scale; the others follow the call's cross_attention_kwargs
                # scale (as diffusers: merged layers ignore it, unmerged ones are scaled)
                scale = state.weights[name] * state.fuse_scale.get(name, state.call_scale)
                if scale != 0.0:
                    fuse_lora(self.unet, state.loras[name], scale)
        refresh_fused_qkv(self.unet)  # fused q/k/v projections (fuse_qkv_projections) follow the new weights

    def _check_known(self, names: list[str]) -> None:
        unknown = [n for n in names if n not in self._adapters.loras]
        if unknown:
            raise ValueError(f"adapter(s) {unknown} are not loaded; loaded: {list(self._adapters.loras)}")

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict: str | os.PathLike | Mapping[str, torch.Tensor],
                          adapter_name: str | None = None, weight_name: str | None = None,
                          revision: str | None = None, token: str | None = None) -> None:
        """Load a LoRA (hub repo id such as ``guoyww/animatediff-motion-lora-zoom-in``, folder, ``.safetensors``
        / ``.ckpt`` file or state dict; the layouts of :func:`~vidcore.loading.lora.load_lora`) under
        ``adapter_name`` (default ``default_{n}``, as diffusers) and make it active at weight 1.0, keeping the
        other active adapters. Every layer name and shape is checked first; a LoRA that does not fit changes
        nothing."""
        state = self._adapters
        name = adapter_name if adapter_name is not None else f"default_{len(state.loras)}"
        if name in state.loras:
            raise ValueError(f"adapter name {name!r} is already in use; pass another adapter_name= (loaded: "
                             f"{list(state.loras)})")
        lora = load_lora(pretrained_model_name_or_path_or_dict, weight_name=weight_name, revision=revision,
                                token=token)
        lora.targets(self.unet)  # names checked before the weights are touched (shapes: by fuse_lora)
        previous = (state.active.copy(), state.enabled)
        state.loras[name], state.weights[name] = lora, 1.0
        state.active.append(name)
        state.enabled = True
        try:
            self._apply_loras()
        except Exception:
            del state.loras[name], state.weights[name]
            state.active, state.enabled = previous
            self._apply_loras()
            raise

    def set_adapters(self, adapter_names: str | Sequence[str],
                     adapter_weights: float | Sequence[float] | None = None) -> None:
        """Make ``adapter_names`` the active adapters, with ``adapter_weights`` (one per name, one for all, or
        1.0 each); the others stay loaded but inactive. The weights are set afresh (an earlier
        :meth:`fuse_lora` scale no longer applies); re-enables LoRA after :meth:`unfuse_lora`."""
        names = _names(adapter_names)
        self._check_known(names)
        if adapter_weights is None:
            weights = [1.0] * len(names)
        elif isinstance(adapter_weights, (int, float)):
            weights = [float(adapter_weights)] * len(names)
        else:
            weights = [float(w) for w in adapter_weights]
            if len(weights) != len(names):
                raise ValueError(f"adapter_weights has {len(weights)} entries for {len(names)} adapter_names")
        state = self._adapters
        state.active = names
        state.weights.update(zip(names, weights))
        state.fuse_scale = {}
        state.enabled = True
        self._apply_loras()

    def get_active_adapters(self) -> list[str]:
        """Names of the adapters acting on the UNet now (empty after :meth:`unfuse_lora`)."""
        state = self._adapters
        return list(state.active) if state.enabled else []

    def get_list_adapters(self) -> dict[str, list[str]]:
        """``{"unet": [loaded adapter names]}`` (empty dict when none is loaded), as diffusers."""
        loaded = list(self._adapters.loras)
        return {"unet": loaded} if loaded else {}

    def delete_adapters(self, adapter_names: str | Sequence[str]) -> None:
        """Forget these adapters (taken out of the weights when active)."""
        names = _names(adapter_names)
        self._check_known(names)
        state = self._adapters
        for n in names:
            del state.loras[n], state.weights[n]
            state.fuse_scale.pop(n, None)
        state.active = [n for n in state.active if n not in names]
        self._apply_loras()

    def fuse_lora(self, components: Sequence[str] = ("unet", TEXT_ENCODER), lora_scale: float = 1.0,
                  safe_fusing: bool = False, adapter_names: Sequence[str] | None = None) -> None:
        """Fuse the active adapters (or ``adapter_names``, which become active) at ``lora_scale`` times their
        adapter weights. ``safe_fusing`` checks the fused weights for NaN/inf first and leaves the UNet as it
        was if any. Motion LoRAs touch only the UNet: ``components`` without ``"unet"`` changes nothing."""
        if "unet" not in components:
            return
        state = self._adapters
        names = state.active if adapter_names is None else _names(adapter_names)
        self._check_known(names)
        previous = (dict(state.fuse_scale), state.active.copy(), state.enabled)
        for n in names:
            state.fuse_scale[n] = float(lora_scale)
            if n not in state.active:
                state.active.append(n)
        state.enabled = True
        self._apply_loras()
        if safe_fusing:
            bad = [n for n, p in self.unet.named_parameters() if not torch.isfinite(p).all()]
            if bad:
                state.fuse_scale, state.active, state.enabled = previous
                self._apply_loras()
                raise ValueError(f"fusing the LoRA at lora_scale={lora_scale} gives NaN/inf weights in {bad[:5]}; "
                                 "the UNet is left as it was")

    def unfuse_lora(self, components: Sequence[str] = ("unet", TEXT_ENCODER)) -> None:
        """Take every LoRA out of the UNet's weights (restored bit for bit); the adapters stay loaded and
        :meth:`fuse_lora` / :meth:`set_adapters` put them back. (diffusers' unfuse keeps the LoRA acting through
        unmerged layers; vidcore has no unmerged mode.)"""
        if "unet" not in components:
            return
        state = self._adapters
        state.enabled = False
        state.fuse_scale = {}
        self._apply_loras()

    def unload_lora_weights(self) -> None:
        """Take every LoRA out of the UNet's weights (bit for bit) and forget them."""
        self.__dict__.pop("_motion_lora_adapters", None)
        unfuse_lora(self.unet)
        refresh_fused_qkv(self.unet)


MotionLoRAMixin = LoRAMixin  # the old name, kept
