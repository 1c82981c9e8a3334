"""``DiffusionPipeline.from_pretrained``: the pipeline class named by a folder's ``model_index.json``.

diffusers' ``DiffusionPipeline.from_pretrained(path)`` reads ``_class_name`` and builds that class. Here the
diffusers class names map to vidcore's pipeline classes (``TextToVideoSDPipeline`` -> ``TextToVideoPipeline``,
``VideoToVideoSDPipeline`` -> ``VideoToVideoPipeline``; the others keep their names), vidcore's own class names map to
themselves, and the chosen class's ``from_pretrained`` does the loading. Only ``model_index.json`` is read here (from
the hub, only that file is fetched before the class's own loader runs).
"""

from __future__ import annotations

import importlib
import os

from .. import hub
from ..errors import ModelNotFoundError

# _class_name in model_index.json -> (vidcore module, vidcore class), imported only when chosen
PIPELINES: dict[str, tuple[str, str]] = {
    "TextToVideoSDPipeline": ("vidcore.pipelines.text_to_video", "TextToVideoPipeline"),
    "TextToVideoPipeline": ("vidcore.pipelines.text_to_video", "TextToVideoPipeline"),
    "VideoToVideoSDPipeline": ("vidcore.pipelines.video_to_video", "VideoToVideoPipeline"),
    "VideoToVideoPipeline": ("vidcore.pipelines.video_to_video", "VideoToVideoPipeline"),
    "I2VGenXLPipeline": ("vidcore.pipelines.i2vgen_xl", "I2VGenXLPipeline"),
    "StableVideoDiffusionPipeline": ("vidcore.pipelines.stable_video_diffusion", "StableVideoDiffusionPipeline"),
    "AnimateDiffPipeline": ("vidcore.pipelines.animatediff", "AnimateDiffPipeline"),
    "AnimateDiffVideoToVideoPipeline": ("vidcore.pipelines.animatediff_video2video", "AnimateDiffVideoToVideoPipeline"),
    "AnimateDiffControlNetPipeline": ("vidcore.pipelines.animatediff_controlnet", "AnimateDiffControlNetPipeline"),
    "AnimateDiffSparseControlNetPipeline": ("vidcore.pipelines.animatediff_sparsectrl",
                                            "AnimateDiffSparseControlNetPipeline"),
    "AnimateDiffSDXLPipeline": ("vidcore.pipelines.animatediff_sdxl", "AnimateDiffSDXLPipeline"),
    "TextToVideoZeroPipeline": ("vidcore.pipelines.text2video_zero", "TextToVideoZeroPipeline"),
    "ControlledVideoPipeline": ("vidcore.pipelines.controlled_video", "ControlledVideoPipeline"),
    "VideoInstructPix2PixPipeline": ("vidcore.pipelines.video_instruct_pix2pix", "VideoInstructPix2PixPipeline"),
    "StableDiffusionPipeline": ("vidcore.pipelines.stable_diffusion", "StableDiffusionPipeline"),
    "StableDiffusionControlNetPipeline": ("vidcore.pipelines.stable_diffusion_controlnet",
                                          "StableDiffusionControlNetPipeline"),
    "StableDiffusionInstructPix2PixPipeline": ("vidcore.pipelines.stable_diffusion_instruct_pix2pix",
                                               "StableDiffusionInstructPix2PixPipeline"),
}


def pipeline_class(class_name: str) -> type:
    """The vidcore pipeline class for a ``model_index.json`` ``_class_name`` (diffusers' or vidcore's)."""
    if class_name not in PIPELINES:
        raise ValueError(f"vidcore has no pipeline for _class_name {class_name!r}; supported: {', '.join(PIPELINES)} "
                         "(or load the folder with a vidcore pipeline class's from_pretrained, e.g. "
                         "vidcore.AnimateDiffPipeline.from_pretrained(sd_folder, motion_adapter=...))")
    module, name = PIPELINES[class_name]
    return getattr(importlib.import_module(module), name)


class DiffusionPipeline:
    """diffusers' entry point: ``DiffusionPipeline.from_pretrained(folder_or_repo, **kwargs)`` returns the vidcore
    pipeline that ``model_index.json`` names. Not a base class: the object returned is e.g. a
    :class:`~vidcore.pipelines.text_to_video.TextToVideoPipeline`."""

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, revision: str | None = None, token: str | None = None,
                        **kwargs):
        """Read ``_class_name`` from ``model_index.json`` of a diffusers-layout folder or hub repo id and call that
        class's ``from_pretrained(path_or_repo, revision=, token=, **kwargs)`` (``torch_dtype=``, ``variant=``,
        components such as ``scheduler=``)."""
        root = hub.resolve(path_or_repo, allow_patterns=["model_index.json"], revision=revision, token=token)
        if not (root / "model_index.json").is_file():
            raise ModelNotFoundError(f"'{os.fspath(path_or_repo)}' is not a pipeline folder: model_index.json is "
                                     f"missing (looked in {root})")
        index = hub.load_config(root, "model_index.json")
        if "_class_name" not in index:
            raise ValueError(f"{root / 'model_index.json'} has no '_class_name'; supported: {', '.join(PIPELINES)}")
        return pipeline_class(index["_class_name"]).from_pretrained(path_or_repo, revision=revision, token=token,
                                                                     **kwargs)
