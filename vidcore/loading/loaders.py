"""Component loaders: one function per kind of component, named by pipelines in their ``loaders`` declaration
(:mod:`vidcore.loading.pipeline`), all with one signature so any pipeline can use any of them:

* folder loaders ``(folder, torch_dtype=None, variant=None) -> module``: a component's folder of a pipeline repo,
  already local (the CLIP parts through transformers, the scheduler from its config, vidcore models through
  :func:`~vidcore.loading.models.load_model`);
* argument loaders ``(value, torch_dtype=None, variant=None, token=None) -> module``: what a user passed as a
  component (``motion_adapter=``, ``controlnet=``): a module (cast to ``torch_dtype``), a folder, a hub repo id, a
  native or original file.

Every model comes back in ``torch_dtype`` (float32 by default) and in eval mode.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import hub
from ..errors import ConfigError, ModelNotFoundError
from ..models.controlnet import ControlNet, MultiControlNet
from ..models.motion import MotionAdapter
from ..models.sparse_controlnet import SparseControlNet
from .fetch import fetch
from .models import load_model, load_unet_motion

EXAMPLE_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-2"
EXAMPLE_CONTROLNET = "lllyasviel/sd-controlnet-openpose"
SPARSECTRL_REPOS = ("guoyww/animatediff-sparsectrl-scribble", "guoyww/animatediff-sparsectrl-rgb")


# -- folder loaders ---------------------------------------------------------------------------------------

def _transformers_kwargs(folder: Path, torch_dtype, variant) -> dict:
    kwargs = {"dtype": torch_dtype or torch.float32}
    if variant and any(p.name.endswith(f".{variant}.safetensors") for p in Path(folder).iterdir()):
        kwargs["variant"] = variant
    return kwargs


def load_tokenizer(folder: Path, torch_dtype=None, variant=None):
    """CLIP tokenizer (``torch_dtype`` / ``variant`` do not apply)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))


def load_text_encoder(folder: Path, torch_dtype=None, variant=None):
    """CLIP text encoder (transformers ``CLIPTextModel``)."""
    from transformers import CLIPTextModel

    return CLIPTextModel.from_pretrained(str(folder), **_transformers_kwargs(folder, torch_dtype, variant)).eval()


def load_text_encoder_2(folder: Path, torch_dtype=None, variant=None):
    """SDXL's second text encoder (OpenCLIP ViT-bigG as a transformers ``CLIPTextModelWithProjection``)."""
    from transformers import CLIPTextModelWithProjection

    return CLIPTextModelWithProjection.from_pretrained(str(folder),
                                                       **_transformers_kwargs(folder, torch_dtype, variant)).eval()


def load_image_encoder(folder: Path, torch_dtype=None, variant=None):
    """CLIP vision encoder with projection (I2VGen-XL, SVD, IP-Adapter)."""
    from transformers import CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection.from_pretrained(str(folder),
                                                         **_transformers_kwargs(folder, torch_dtype, variant)).eval()


def load_feature_extractor(folder: Path, torch_dtype=None, variant=None):
    """The CLIP image processor (``preprocessor_config.json``). Without torchvision, transformers 5's
    ``CLIPImageProcessor`` falls back to the PIL backend with a warning; that class is picked directly."""
    import importlib.util

    import transformers

    name = "CLIPImageProcessor" if importlib.util.find_spec("torchvision") else "CLIPImageProcessorPil"
    cls = getattr(transformers, name, None) or transformers.CLIPImageProcessor
    return cls.from_pretrained(str(folder))


def load_scheduler(folder: Path, torch_dtype=None, variant=None):
    """The scheduler its ``scheduler_config.json`` names."""
    from ..schedulers import from_config

    return from_config(Path(folder) / "scheduler_config.json")


def load_vidcore_model(folder: Path, torch_dtype=None, variant=None):
    """Any model :func:`~vidcore.loading.models.load_model` reads (UNets, VAEs, adapters, ControlNets)."""
    return load_model(folder, torch_dtype=torch_dtype, variant=variant)


def load_unet(folder: Path, torch_dtype=None, variant=None):
    """A UNet folder: a diffusers ``UNetMotionModel`` (a saved AnimateDiff pipeline's) becomes a ``UNetMotion``,
    any other UNet goes through :func:`load_vidcore_model`."""
    if hub.load_config(folder).get("_class_name") == "UNetMotionModel":
        return load_unet_motion(folder, torch_dtype, variant)
    return load_vidcore_model(folder, torch_dtype, variant)


# -- argument loaders -------------------------------------------------------------------------------------

def load_module_argument(value, kind: type, arg: str, example: str, torch_dtype=None, variant: str | None = None,
                         revision: str | None = None, token: str | None = None, config_from=None,
                         wrong_kind: type[Exception] = ModelNotFoundError):
    """A model passed as ``arg=``: a ``kind`` module (cast to ``torch_dtype`` when given), or anything
    :func:`~vidcore.loading.models.load_model` reads (a folder, a hub repo id, of which only the config and weights
    are fetched, a vidcore native file, an original checkpoint whose config ``config_from`` gives). A model of
    another kind raises ``wrong_kind`` naming ``example``, a repo that holds the right one."""
    dtype = hub.parse_dtype(torch_dtype)
    if isinstance(value, kind):
        return value.to(dtype) if dtype is not None else value
    if isinstance(value, torch.nn.Module):
        raise TypeError(f"{arg} must be a vidcore {kind.__name__} (vidcore.load_model(...)), got {type(value).__name__}")
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{arg} must be a path, a hub repo id or a {kind.__name__}, got {type(value).__name__}")
    local = Path(os.fspath(value)).expanduser()
    if not local.exists():
        local = fetch(value, [""], variant, revision, token)
    module = load_model(local, torch_dtype=dtype, variant=variant, config_from=config_from if local.is_file() else None)
    if not isinstance(module, kind):
        raise wrong_kind(f"{arg}={os.fspath(value)!r} holds a {type(module).__name__}, not a {kind.__name__} "
                         f"(e.g. {example})")
    return module


def load_motion_adapter(adapter, torch_dtype=None, variant: str | None = None, token: str | None = None) -> MotionAdapter:
    """``motion_adapter=``, or a pipeline folder's ``motion_adapter/``: a MotionAdapter module, a diffusers
    MotionAdapter folder or hub repo id, a vidcore native file, or an original AnimateDiff checkpoint."""
    return load_module_argument(adapter, MotionAdapter, "motion_adapter", EXAMPLE_ADAPTER, torch_dtype, variant,
                                token=token, wrong_kind=ConfigError)


def load_controlnet(controlnet, torch_dtype=None, variant: str | None = None, token: str | None = None, *,
                    revision: str | None = None, config_from=None) -> ControlNet:
    """``controlnet=``: a ControlNet module, a diffusers ControlNet folder or hub repo id such as
    ``lllyasviel/sd-controlnet-openpose``, a vidcore native file, or an original ``control_*.pth`` /
    ``.safetensors`` file, whose config is SD1.5's unless ``config_from`` says."""
    return load_module_argument(controlnet, ControlNet, "controlnet", EXAMPLE_CONTROLNET, torch_dtype, variant,
                                revision, token, config_from)


def load_controlnets(controlnet, torch_dtype=None, variant: str | None = None, token: str | None = None):
    """``controlnet=`` of the AnimateDiff ControlNet pipeline: one ControlNet (or MultiControlNet), or a list of what
    :func:`load_controlnet` reads (several ControlNets combine)."""
    if isinstance(controlnet, MultiControlNet):
        return controlnet.to(hub.parse_dtype(torch_dtype)) if torch_dtype is not None else controlnet
    if isinstance(controlnet, (list, tuple)):
        return [load_controlnet(c, torch_dtype, variant, token) for c in controlnet]
    return [load_controlnet(controlnet, torch_dtype, variant, token)]


def load_sparse_controlnet(value, torch_dtype=None, variant: str | None = None, token: str | None = None,
                           config_from=None) -> SparseControlNet:
    """``controlnet=`` of the SparseCtrl pipeline: a SparseControlNet, a diffusers folder / hub repo id
    (``guoyww/animatediff-sparsectrl-rgb``), a vidcore native file, or an original SparseCtrl file
    (``v3_sd15_sparsectrl_rgb.ckpt``)."""
    return load_module_argument(value, SparseControlNet, "controlnet", SPARSECTRL_REPOS[0], torch_dtype, variant,
                                token=token, config_from=config_from)
