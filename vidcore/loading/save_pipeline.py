"""``pipe.save_pretrained(folder)``: a pipeline as a diffusers-layout folder that diffusers' ``from_pretrained``
and vidcore's load.

``model_index.json`` names diffusers' pipeline class and, per component, diffusers' library and class. vidcore
models are written through their key maps (:func:`vidcore.loading.save.save_diffusers`: ``config.json`` +
``diffusion_pytorch_model[.variant].safetensors``); an AnimateDiff ``UNetMotion`` is split back into the SD
``unet`` (``UNet2DConditionModel``) and the ``motion_adapter`` (``MotionAdapter``), as a diffusers AnimateDiff
folder made from an SD repo and an adapter is (an SDXL one is written whole as a ``UNetMotionModel``, since
diffusers rebuilding it from the parts drops the UNet's ``add_embedding``); schedulers write
``scheduler_config.json``; the CLIP parts go through transformers' ``save_pretrained``. Everything is written into a temp folder beside the target first, so
an error leaves the target untouched; the files are then moved in one by one (an existing folder is updated, so
``variant="fp16"`` files can be added beside the float32 ones, as with diffusers). Weights are safetensors only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from ..models.controlnet import MultiControlNet
from ..models.motion import UNetMotion
from .architectures import ARCHITECTURES, architecture_of
from .save import save_diffusers, save_diffusers_unet_motion

DIFFUSERS_VERSION = "0.33.1"  # written as _diffusers_version (the last release with every video pipeline)


def _library(module: Any) -> tuple[str, str]:
    """(library, class name) of one component, as ``model_index.json`` lists it."""
    if isinstance(module, UNetMotion):
        return "diffusers", "UNetMotionModel"
    if isinstance(module, nn.Module) and any(type(module) is a.module for a in ARCHITECTURES):
        return "diffusers", architecture_of(module).diffusers_class
    if hasattr(module, "to_diffusers_config") and hasattr(module, "diffusers_name"):  # a vidcore scheduler
        return "diffusers", module.diffusers_name
    cls = type(module)
    if cls.__module__.startswith("transformers"):
        return "transformers", cls.__name__.removesuffix("Pil")  # CLIPImageProcessorPil saves as CLIPImageProcessor
    raise TypeError(f"save_pretrained cannot write a {cls.__name__} (vidcore models, vidcore schedulers and "
                    "transformers tokenizers / encoders / image processors can be written)")


def _write_component(module: Any, folder: Path, variant: str | None) -> None:
    folder.mkdir(parents=True)
    if isinstance(module, UNetMotion):
        save_diffusers_unet_motion(module, folder, variant)
    elif isinstance(module, nn.Module) and any(type(module) is a.module for a in ARCHITECTURES):
        save_diffusers(module, folder, variant=variant)
    elif hasattr(module, "to_diffusers_config"):
        (folder / "scheduler_config.json").write_text(json.dumps(module.to_diffusers_config(), indent=2,
                                                                 sort_keys=True))
    elif isinstance(module, nn.Module):  # transformers CLIPTextModel / CLIPVisionModelWithProjection
        module.save_pretrained(folder, variant=variant, safe_serialization=True)
    else:  # tokenizer, image processor
        module.save_pretrained(folder)


def expand(components: Mapping[str, Any]) -> dict[str, Any]:
    """The components as diffusers stores them: a ``UNetMotion`` becomes ``unet`` (its SD UNet) plus
    ``motion_adapter``."""
    out = {}
    for name, module in components.items():
        if isinstance(module, UNetMotion) and module.unet.add_embedding is not None:
            # SDXL: diffusers' UNetMotionModel.from_unet2d drops the UNet's add_embedding (left random), so the
            # motion UNet is written whole, as a diffusers-saved AnimateDiffSDXLPipeline's unet/ is
            out[name], out["motion_adapter"] = module, module.adapter
        elif isinstance(module, UNetMotion):
            out[name], out["motion_adapter"] = module.unet, module.adapter
        elif name == "motion_adapter" and name in out:
            continue
        elif isinstance(module, MultiControlNet):
            if len(module.nets) != 1:
                raise NotImplementedError("save_pretrained writes one ControlNet; this pipeline has "
                                          f"{len(module.nets)} (save each with vidcore.save_diffusers)")
            out[name] = module.nets[0]
        else:
            out[name] = module
    return out


def save_pipeline(components: Mapping[str, Any], save_directory: str | os.PathLike, class_name: str,
                  variant: str | None = None, safe_serialization: bool = True,
                  index_extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``components`` (``pipe.components``) as a diffusers pipeline folder whose ``model_index.json`` names
    ``class_name``; ``index_extra`` adds entries (``requires_safety_checker``, ``safety_checker: [None, None]`` ...).
    Components that are None are listed as ``[null, null]`` (diffusers' optional components)."""
    if not safe_serialization:
        raise ValueError("safe_serialization=False is not supported: vidcore writes safetensors weights only "
                         "(design principle 6); pass safe_serialization=True")
    if variant is not None and (not isinstance(variant, str) or not variant or "/" in variant or "." in variant):
        raise ValueError(f"variant must be a short name such as 'fp16' (no '.' or '/'), got {variant!r}")
    target = Path(save_directory)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"save_pretrained: {target} exists and is not a folder")
    parts = expand(components)
    index: dict[str, Any] = {"_class_name": class_name, "_diffusers_version": DIFFUSERS_VERSION}
    index.update({name: ([None, None] if module is None else list(_library(module))) for name, module in parts.items()})
    index.update(index_extra or {})
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        for name, module in parts.items():
            if module is not None:
                _write_component(module, tmp / name, variant)
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
        target.mkdir(exist_ok=True)
        files = [p for p in sorted(tmp.rglob("*")) if p.is_file() and p.name != "model_index.json"]
        for path in [*files, tmp / "model_index.json"]:  # the index last: it names a complete folder
            dest = target / path.relative_to(tmp)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


__all__ = ["expand", "save_pipeline"]
