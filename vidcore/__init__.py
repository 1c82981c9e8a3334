"""vidcore: native PyTorch video diffusion models that load hub checkpoints and match diffusers.

Heavy pieces (pipelines, transformers) are imported lazily so ``import vidcore`` stays fast.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

__version__ = "0.1.0"


def _leave_checkout_root_off_path() -> None:
    """In a source checkout the root holds kernels/ (shipped as vidcore.kernels). ``python -m`` from there
    puts the root on sys.path, where that folder would shadow PyPI's `kernels`, which transformers imports;
    vidcore itself is found through its install, so the root entry is dropped."""
    root = Path(__file__).resolve().parent.parent
    if not ((root / "pyproject.toml").is_file() and (root / "kernels").is_dir() and (root / "conversion").is_dir()):
        return  # an installed copy (site-packages): nothing to shadow
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != root]


_leave_checkout_root_off_path()

_LAZY = {
    "TextToVideoPipeline": "vidcore.pipelines.text_to_video",
    "VideoToVideoPipeline": "vidcore.pipelines.video_to_video",
    "I2VGenXLPipeline": "vidcore.pipelines.i2vgen_xl",
    "StableVideoDiffusionPipeline": "vidcore.pipelines.stable_video_diffusion",
    "AnimateDiffPipeline": "vidcore.pipelines.animatediff",
    "AnimateDiffVideoToVideoPipeline": "vidcore.pipelines.animatediff_video2video",
    "AnimateDiffControlNetPipeline": "vidcore.pipelines.animatediff_controlnet",
    "AnimateDiffSparseControlNetPipeline": "vidcore.pipelines.animatediff_sparsectrl",
    "SparseControlNet": "vidcore.models.sparse_controlnet",
    "SparseControlNetConfig": "vidcore.models.sparse_controlnet",
    "AnimateDiffSDXLPipeline": "vidcore.pipelines.animatediff_sdxl",
    "ControlledVideoPipeline": "vidcore.pipelines.controlled_video",
    "TextToVideoZeroPipeline": "vidcore.pipelines.text2video_zero",
    "VideoInstructPix2PixPipeline": "vidcore.pipelines.video_instruct_pix2pix",
    "VideoPipelineOutput": "vidcore.pipelines.base",
    # diffusers' Stable Diffusion image pipelines (Text2Video-Zero's recipes run them on frames)
    "StableDiffusionPipeline": "vidcore.pipelines.stable_diffusion",
    "StableDiffusionControlNetPipeline": "vidcore.pipelines.stable_diffusion_controlnet",
    "StableDiffusionInstructPix2PixPipeline": "vidcore.pipelines.stable_diffusion_instruct_pix2pix",
    "ImagePipelineOutput": "vidcore.pipelines.sd_image",
    "load_model": "vidcore.loading",
    "save_native": "vidcore.loading",
    "save_diffusers": "vidcore.loading",
    "save_original": "vidcore.loading",
    "load_sd_single_file": "vidcore.loading",
    "load_sdxl_single_file": "vidcore.loading",
    "UNet3D": "vidcore.models.unet3d",
    "UNet3DConfig": "vidcore.models.unet3d",
    "UNet2D": "vidcore.models.unet2d",
    "UNet2DConfig": "vidcore.models.unet2d",
    "ControlNet": "vidcore.models.controlnet",
    "ControlNetConfig": "vidcore.models.controlnet",
    "canny": "vidcore.controls",
    "IPAdapter": "vidcore.models.ip_adapter",
    "MotionAdapter": "vidcore.models.motion",
    "MotionAdapterConfig": "vidcore.models.motion",
    "UNetMotion": "vidcore.models.motion",
    "LoRA": "vidcore.models.lora",
    "MotionLoRA": "vidcore.models.motion_lora",  # old name of LoRA
    "load_lora": "vidcore.loading.lora",
    "load_motion_lora": "vidcore.loading.lora",  # old name of load_lora
    "fuse_lora": "vidcore.loading.lora",  # also reads files (models.lora: loaded LoRAs)
    "unfuse_lora": "vidcore.models.lora",
    "fused_loras": "vidcore.models.lora",
    "AutoencoderKL": "vidcore.models.vae",
    "AutoencoderKLConfig": "vidcore.models.vae",
    "export_to_video": "vidcore.io",
    "export_to_gif": "vidcore.io",
    "load_image": "vidcore.io",
    "load_video": "vidcore.io",
    "set_attention_backend": "vidcore.nn.attention",
    "attention_backend": "vidcore.nn.attention",
    "AttnProcessor": "vidcore.nn.processors",
    "CrossFrameAttnProcessor": "vidcore.nn.processors",
    # diffusers' names (DESIGN.md principle 14): moving from diffusers is changing the import
    "DiffusionPipeline": "vidcore.pipelines.auto",
    "TextToVideoSDPipeline": "vidcore.pipelines.text_to_video",
    "VideoToVideoSDPipeline": "vidcore.pipelines.video_to_video",
    "DDIMScheduler": "vidcore.schedulers",
    "DDPMScheduler": "vidcore.schedulers",
    "PNDMScheduler": "vidcore.schedulers",
    "EulerDiscreteScheduler": "vidcore.schedulers",
    "EulerAncestralDiscreteScheduler": "vidcore.schedulers",
    "DPMSolverMultistepScheduler": "vidcore.schedulers",
    "LCMScheduler": "vidcore.schedulers",
    "TCDScheduler": "vidcore.schedulers",
    "UNet3DConditionModel": "vidcore.models.unet3d",
    "UNet2DConditionModel": "vidcore.models.unet2d",
    "UNetSpatioTemporalConditionModel": "vidcore.models.svd_unet",
    "I2VGenXLUNet": "vidcore.models.i2vgen_unet",
    "ControlNetModel": "vidcore.models.controlnet",
    "AutoencoderKLTemporalDecoder": "vidcore.models.svd_vae",
    "UNetMotionModel": "vidcore.models.motion",
}

# old public names, and diffusers' names, -> the names they were given (the same objects; their __name__ is the new
# name): vidcore.TextToVideoSDPipeline is vidcore.TextToVideoPipeline, vidcore.ControlNetModel is vidcore.ControlNet
ALIASES = {"MotionLoRA": "LoRA", "load_motion_lora": "load_lora",
           "TextToVideoSDPipeline": "TextToVideoPipeline", "VideoToVideoSDPipeline": "VideoToVideoPipeline",
           "UNet3DConditionModel": "UNet3D", "UNet2DConditionModel": "UNet2D",
           "UNetSpatioTemporalConditionModel": "SVDUNet", "ControlNetModel": "ControlNet",
           "UNetMotionModel": "UNetMotion"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), ALIASES.get(name, name))
    raise AttributeError(f"module 'vidcore' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
