"""Where a pipeline's weights wait while it runs (diffusers' names), one kind at a time:

* ``enable_model_cpu_offload``: whole models on the CPU, each moved to the GPU while it runs (``_run_on_device``);
* ``enable_group_offload``: group offload hooks on every model (:mod:`vidcore.nn.group_offload`): blocks or layers
  copied to the GPU just before they run;
* ``enable_sequential_cpu_offload``: the same hooks at ``leaf_level``, one layer at a time.

While any is on, ``pipe.device`` is the GPU, so the pipelines make their latents there. A second kind is refused
until the first is disabled (both would move the same weights), and so is ``pipe.to(device)`` under the hooks.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UnsupportedFeatureError
from ..nn.group_offload import GroupOffloadConfig, disable_group_offload, enable_group_offload

_HOOKS = {"group": "enable_group_offload", "sequential": "enable_sequential_cpu_offload"}


class OffloadMixin:
    """Mixed into :class:`~vidcore.pipelines.base.VideoPipeline`; see the module docstring."""

    _offload_device: torch.device | None = None  # the GPU while an offload is on
    _offload_hooks: str | None = None  # "group" | "sequential" while their hooks are on (else model offload)

    def _offloaded_models(self) -> list[nn.Module]:
        """Every model component, optional ones too, except those inside another (AnimateDiff's motion adapter is
        inside its UNetMotion)."""
        models = list({id(m): m for m in self.components.values() if isinstance(m, nn.Module)}.values())
        inside = {id(sub) for m in models for sub in m.modules() if sub is not m}
        return [m for m in models if id(m) not in inside]

    def _on(self) -> str | None:
        if self._offload_hooks is not None:
            return _HOOKS[self._offload_hooks]
        return None if self._offload_device is None else "enable_model_cpu_offload"

    def _refuse_other(self, wanted: str) -> None:
        on = self._on()
        if on is not None and on != wanted:
            raise UnsupportedFeatureError(f"{on} is on: call pipe.{on.replace('enable', 'disable')}() before "
                                          f"pipe.{wanted}() (both would move the same weights)")

    # -- model offload --------------------------------------------------------------------------
    def enable_model_cpu_offload(self, device: str | torch.device = "cuda") -> None:
        """Keep models on the CPU and move each to ``device`` only while it runs (one at a time)."""
        self._refuse_other("enable_model_cpu_offload")
        self._offload_device = torch.device(device)
        for module in self._modules().values():
            module.to("cpu")

    def disable_model_cpu_offload(self, device: str | torch.device | None = None) -> None:
        """Offload off: every model on ``device`` (default: the offload device) from now on; without offload on
        and without ``device`` nothing moves."""
        if self._offload_hooks is not None:
            raise UnsupportedFeatureError(f"model CPU offload is not on ({self._on()} is)")
        if self._offload_device is None and device is None:
            return
        device = device or self._offload_device
        self._offload_device = None
        self.to(device)

    def _run_on_device(self, name: str) -> nn.Module:
        """With model offload on, move ``name`` to the accelerator and every other model back to the CPU (group
        and sequential offload hooks move weights themselves)."""
        module = getattr(self, name)
        if self._offload_device is not None and self._offload_hooks is None:
            for other, m in self._modules().items():
                if other != name:
                    m.to("cpu")
            module.to(self._offload_device)
        return module

    def _run_beside(self, name: str) -> nn.Module:
        """``name`` on the pipeline's device next to the model ``_run_on_device`` placed (a ControlNet beside its
        UNet), the others left where they are; under group or sequential offload its hooks place it."""
        module = getattr(self, name)
        if self._offload_hooks is None:
            module.to(self.device)
        return module

    # -- hooks ----------------------------------------------------------------------------------
    def enable_group_offload(self, onload_device: str | torch.device, offload_device: str | torch.device = "cpu",
                             offload_type: str = "block_level", num_blocks_per_group: int = 1,
                             non_blocking: bool = False, use_stream: bool = False) -> None:
        """Group offload on every model of the pipeline, text and image encoders too (the arguments of
        :meth:`vidcore.models.options.GroupOffloadMixin.enable_group_offload`); ``disable_group_offload``
        takes the hooks off."""
        self._hook("group", GroupOffloadConfig(onload_device, offload_device, offload_type, num_blocks_per_group,
                                               non_blocking, use_stream))

    def disable_group_offload(self, device: str | torch.device | None = None) -> None:
        """Hooks off; the weights stay on the offload device, or move to ``device`` when given."""
        self._unhook("group", device)

    def enable_sequential_cpu_offload(self, device: str | torch.device = "cuda") -> None:
        """Every layer with weights copied to ``device`` only for its own forward (leaf-level group offload of
        every model): the least GPU memory, the most copying."""
        self._hook("sequential", GroupOffloadConfig(device, "cpu", "leaf_level"))

    def disable_sequential_cpu_offload(self, device: str | torch.device | None = None) -> None:
        """Hooks off; the weights stay on the CPU, or move to ``device`` when given."""
        self._unhook("sequential", device)

    def _hook(self, kind: str, config: GroupOffloadConfig) -> None:
        self._refuse_other(_HOOKS[kind])
        for model in self._offloaded_models():
            enable_group_offload(model, config)
        self._offload_hooks, self._offload_device = kind, config.onload_device

    def _unhook(self, kind: str, device: str | torch.device | None) -> None:
        if self._offload_hooks not in (None, kind):
            raise UnsupportedFeatureError(f"{_HOOKS[kind]} is not on ({self._on()} is)")
        for model in self._offloaded_models():
            disable_group_offload(model)
        if self._offload_hooks is not None:
            self._offload_hooks = self._offload_device = None
        if device is not None:
            self.to(device)

    def _check_move(self, device) -> None:
        """``pipe.to(device)`` under the hooks would put every weight on the GPU at once: refused."""
        if device is not None and self._offload_hooks is not None:
            raise UnsupportedFeatureError(f"{self._on()} is on: its hooks place the weights; call "
                                          f"pipe.{self._on().replace('enable', 'disable')}(device) to move them")


__all__ = ["OffloadMixin"]
