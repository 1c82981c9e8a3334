"""What every vidcore pipeline shares: the loading declaration (:mod:`vidcore.loading.pipeline` does the loading),
device and dtype moves (the offloads are :mod:`vidcore.pipelines.offload`), the progress bar, and the output
container."""

from __future__ import annotations

import functools
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch
from tqdm.auto import tqdm

from ..errors import ModelNotFoundError, UnsupportedFeatureError
from ..loading.loaders import (load_feature_extractor, load_image_encoder, load_scheduler,  # noqa: F401  (re-exported)
                               load_text_encoder, load_tokenizer, load_vidcore_model)
from ..loading.pipeline import SingleFile, load_pipeline, load_single_file
from ..nn.layerwise_casting import is_cast, set_compute_dtype
from ..sampling import StepCacheMixin
from ..sampling.combinations import FEATURE_NAMES, SWITCHES
from ..sampling.loop import Progress, denoise
from .methods import PipelineMethodsMixin
from .offload import OffloadMixin

log = logging.getLogger(__name__)


@dataclass
class VideoPipelineOutput:
    """``frames``: np ``b f h w 3`` / pt ``b f 3 h w`` in [0, 1], ``[[PIL]]``, or latents ``b c f h w``."""

    frames: Any
    cache_stats: dict | None = None  # with a step cache on (enable_deep_cache / enable_block_cache): its counts


@contextmanager
def upcast_vae(vae):
    """An fp16 VAE whose config asks for it (``force_upcast``) runs in float32 inside the block (avoiding
    overflow, as diffusers) and is fp16 again after it, error or not."""
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    # a VAE with fp8-stored layers keeps them: only its compute dtype changes
    to = functools.partial(set_compute_dtype, vae) if is_cast(vae) else vae.to
    if upcast:
        to(torch.float32)
    try:
        yield vae
    finally:
        if upcast:
            to(torch.float16)


def check_negative_inputs(negative_prompt, negative_prompt_embeds) -> None:
    """The negative prompt comes as text or as embeddings, not both (diffusers refuses both too)."""
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("pass at most one of negative_prompt and negative_prompt_embeds")


class VideoPipeline(PipelineMethodsMixin, OffloadMixin, StepCacheMixin):
    """Base class. Subclasses list their components in ``component_names`` (``pipe.components`` is then the
    ``{name: module}`` dict, :mod:`vidcore.pipelines.methods`), declare how each is loaded in ``loaders``
    (:mod:`vidcore.loading.pipeline` loads them, from folders, hub ids or single files) and implement ``__call__``;
    the sampling features they have come from the mixins they compose (:mod:`vidcore.pipelines.features`)."""

    parallel = None  # the runner of enable_parallel, on pipelines that compose ParallelPipelineMixin

    # the names callback_on_step_end_tensor_inputs may list (what the call hands its step callback)
    callback_tensor_inputs: tuple[str, ...] = ("latents",)
    component_names: tuple[str, ...] = ()
    offload_order: tuple[str, ...] = ()

    def __init__(self, **modules):
        missing = [name for name in self.component_names if name not in modules]
        if missing:
            raise TypeError(f"{type(self).__name__} needs components {missing}")
        for name, module in modules.items():
            setattr(self, name, module)
        self.progress_bar_config: dict = {}
        self._offload_device: torch.device | None = None  # offload's GPU (vidcore.pipelines.offload)
        self._offload_hooks: str | None = None

    # -- loading (declared here, done by vidcore.loading.pipeline) ------------------------------------
    # component -> folder loader (folder, torch_dtype, variant), in loading order: what from_pretrained reads
    loaders: ClassVar[Mapping[str, Any]] = {}
    # component -> argument loader (value, torch_dtype, variant, token) for one passed as a path / repo id / file
    arguments: ClassVar[Mapping[str, Any]] = {}
    # components taken as keyword arguments but never read from a folder
    accepts: ClassVar[tuple[str, ...]] = ()
    # how an original single file is read (None: no from_single_file)
    single_file: ClassVar[SingleFile | None] = None

    @classmethod
    def from_pretrained(cls, path_or_repo: str | Path, torch_dtype: torch.dtype | str | None = None,
                        variant: str | None = None, revision: str | None = None, token: str | None = None,
                        **components):
        """Load every component from a diffusers-layout folder (``model_index.json``) or hub repo id (only the
        components read are downloaded: configs and safetensors weights, ``variant`` ones when given).

        Components passed as keyword arguments (for example ``scheduler=...``) replace the stored ones.
        """
        return load_pipeline(cls, path_or_repo, torch_dtype, variant, revision, token, **components)

    @classmethod
    def from_single_file(cls, path, config_from=None, torch_dtype: torch.dtype | str | None = None,
                         variant: str | None = None, revision: str | None = None, token: str | None = None,
                         **components):
        """Load the components an original single file holds (``single_file``) from ``path``, the others from
        ``config_from`` (a pipeline folder or hub repo id, of which only configs, tokenizers and schedulers are
        fetched); components passed as keyword arguments replace the loaded ones."""
        return load_single_file(cls, path, config_from, torch_dtype, variant, revision, token, **components)

    @classmethod
    def needs(cls, name: str, modules: Mapping[str, Any]) -> bool:
        """Whether the declared component ``name`` is loaded, given ``modules`` (those loaded so far)."""
        return True

    @classmethod
    def missing_component(cls, name: str, where: str, single_file: bool) -> Exception:
        """The error when a needed component is neither passed nor found in ``where``."""
        advice = f"; pass {name}=... instead" if single_file else " (model_index.json lists none, or no such folder)"
        return ModelNotFoundError(f"component '{name}' is missing in {where}{advice}")

    @classmethod
    def index_options(cls, index: Mapping[str, Any]) -> dict:
        """Constructor options read from ``model_index.json`` (none here)."""
        return {}

    def __getattr__(self, name: str):
        """Only for names normal lookup misses: a sampling feature's switch (``enable_free_noise`` ...) on a
        pipeline without that feature raises UnsupportedFeatureError naming the pipelines that have it."""
        if name in SWITCHES:
            title, how = FEATURE_NAMES[SWITCHES[name]]
            raise UnsupportedFeatureError(f"{type(self).__name__} has no {title} ({how}); "
                                          "vidcore.pipelines.features.capability_table() lists who has it")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- devices --------------------------------------------------------------------------------
    def _modules(self) -> dict[str, torch.nn.Module]:
        return {n: getattr(self, n) for n in self.component_names if isinstance(getattr(self, n), torch.nn.Module)}

    def to(self, device=None, dtype: torch.dtype | None = None):
        self._check_move(device)
        for module in self._modules().values():
            module.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        if self._offload_device is not None:
            return self._offload_device
        for module in self._modules().values():
            for p in module.parameters():
                return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    # -- progress -------------------------------------------------------------------------------
    def schedule(self, num_inference_steps: int) -> torch.Tensor:
        """Set the scheduler's timesteps for ``num_inference_steps`` and return them (FreeInit reschedules per
        round through this)."""
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        return self.scheduler.timesteps

    def set_progress_bar_config(self, **kwargs) -> None:
        """``disable=True`` silences the bar; other keys go to tqdm."""
        self.progress_bar_config = kwargs

    def progress_bar(self, iterable=None, total=None):
        """A tqdm bar over ``iterable``; with ``total`` only, a sampling run's bar and step clock
        (:class:`vidcore.sampling.loop.Progress`, which also drives the step cache)."""
        if iterable is not None:
            return tqdm(iterable, total=total, **self.progress_bar_config)
        return Progress(total, self.progress_bar_config, self._step_cache(), self.sampling_scope())

    def sample(self, latents: torch.Tensor, timesteps, predict, step, step_end=None) -> torch.Tensor:
        """One run of :func:`vidcore.sampling.loop.denoise` over ``timesteps`` under this pipeline's progress bar."""
        with self.progress_bar(total=len(timesteps)) as progress:
            return denoise(latents, timesteps, predict, step, step_end, progress)

    @property
    def interrupt(self) -> bool:
        """diffusers' flag: a step callback sets ``pipe._interrupt = True`` to end the sampling early
        (:class:`vidcore.sampling.loop.StepEnd` consumes it)."""
        return getattr(self, "_interrupt", False)
