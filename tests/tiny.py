"""Tiny random models and pipelines for parity tests (no downloads, builds in well under 2 s).

How to import: ``tests/`` is not a package. ``tests/conftest.py`` puts this folder on ``sys.path``,
so test files write ``import tiny`` / ``from tiny import build_tiny_t2v_pipeline``; conftest also
offers fixtures (``tiny_t2v``, ``tiny_v2v``). diffusers is imported inside the functions that need it,
so importing this module never imports diffusers (the "vidcore never imports diffusers" check stays
meaningful).

Every parameter gets seeded random values (``randomize_``), including the layers diffusers
zero-initialises, so a wrong or missing layer changes the output. Values are rounded to the nearest
float16, so the ``fp16`` variant files hold exactly the same numbers as the float32 files.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from vidcore.tools.clip_vocab import write_clip_vocab

# scheduler_config.json of damo-vilab/text-to-video-ms-1.7b (also Zeroscope)
MODELSCOPE_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

# ----------------------------------------------------------------------------- tokenizer / text encoder


def make_tiny_tokenizer(folder, pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """Write a small CLIP BPE vocab (``vocab.json``, ``merges.txt``) into ``folder`` and load it.

    Vocabulary laid out like CLIP's: the 256 byte characters, the same with ``</w>``, the merge
    results (so each of ``DEFAULT_WORDS`` is one token), then ``<|startoftext|>`` and ``<|endoftext|>``. Any text
    tokenizes (unknown words fall back to characters). bos/eos/unk are ``<|startoftext|>`` /
    ``<|endoftext|>`` / ``<|endoftext|>``; ``pad_token`` defaults to ``<|endoftext|>`` as in OpenAI
    CLIP (pass ``"!"`` for the OpenCLIP / SD2 convention). ``model_max_length`` is 77.
    """
    write_clip_vocab(folder)
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77, pad_token=pad_token)


def make_tiny_text_encoder(
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    tokenizer: CLIPTokenizer | None = None,
    intermediate: int = 37,
    hidden_act: str = "gelu",
) -> CLIPTextModel:
    """Random ``CLIPTextModel`` sized for ``make_tiny_tokenizer`` (vocab size and special ids taken
    from ``tokenizer`` when given), ``max_position_embeddings`` 77, every weight ``randomize_``-d."""
    if tokenizer is None:
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer = make_tiny_tokenizer(tmp)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return randomize_(CLIPTextModel(config), seed).eval()


# ----------------------------------------------------------------------------- randomize


_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._NormBase)


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0, scale: float = 1.0) -> nn.Module:
    """Overwrite every parameter of ``module`` in place with seeded random values; returns ``module``.

    - norm weights (``*Norm*`` modules, 1-D): ``1 + 0.1 * scale * N(0, 1)``; norm biases ``0.1 * scale * N``
    - other weights (>= 2-D): ``scale * N(0, 1) / sqrt(fan_in)``, fan_in = prod(shape[1:])
    - biases and other 1-D / 0-D parameters: ``0.1 * scale * N(0, 1)``

    Values are rounded to float16 precision (kept in the parameter's dtype) so saving an fp16
    variant is lossless. The same seed and architecture always give the same values.
    """
    gen = torch.Generator().manual_seed(seed)
    for mod_name, mod in module.named_modules():
        is_norm = isinstance(mod, _NORMS) or "norm" in type(mod).__name__.lower()
        for name, p in mod.named_parameters(recurse=False):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.ndim >= 2:
                value = noise * (scale / math.sqrt(math.prod(p.shape[1:])))
            elif is_norm and name == "weight":
                value = 1.0 + 0.1 * scale * noise
            else:
                value = 0.1 * scale * noise
            p.copy_(value.half().float())
    return module


# ----------------------------------------------------------------------------- configs


def tiny_unet3d_config(**overrides) -> dict:
    """``UNet3DConditionModel`` kwargs: 2 levels (32, 64), 8 heads (diffusers' ``attention_head_dim`` is
    really the head count), cross-attention dim 32. Overriding ``block_out_channels`` alone re-derives
    the block types in ModelScope's pattern (cross-attention everywhere but the deepest level)."""
    config = dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(32, 64),
        layers_per_block=2,
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    if "block_out_channels" in overrides:
        n = len(overrides["block_out_channels"])
        config["down_block_types"] = ("CrossAttnDownBlock3D",) * (n - 1) + ("DownBlock3D",)
        config["up_block_types"] = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (n - 1)
    config.update(overrides)
    return config


def tiny_vae_config(**overrides) -> dict:
    """``AutoencoderKL`` kwargs: 2 levels (32, 64) -> spatial factor 2, 4 latent channels, SD's
    scaling factor. Overriding ``block_out_channels`` alone re-derives the block types."""
    config = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=0.18215,
    )
    if "block_out_channels" in overrides:
        n = len(overrides["block_out_channels"])
        config["down_block_types"] = ("DownEncoderBlock2D",) * n
        config["up_block_types"] = ("UpDecoderBlock2D",) * n
    config.update(overrides)
    return config


def tiny_unet2d_config(**overrides) -> dict:
    """``UNet2DConditionModel`` kwargs in SD1.5's pattern at toy size: 2 levels (32, 64), 4 heads (diffusers'
    ``attention_head_dim`` is the head count), 1x1-conv transformer projections, cross-attention dim 24."""
    config = dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=2,
        norm_num_groups=8,
        cross_attention_dim=24,
        attention_head_dim=4,
    )
    config.update(overrides)
    return config


def tiny_sdxl_unet_config(**overrides) -> dict:
    """``UNet2DConditionModel`` kwargs in SDXL's pattern at toy size: 3 levels (16, 32, 48), the first without
    attention, linear projections, per-level heads (2, 4, 6) and transformer depths (1, 2, 3), cross-attention
    dim 40, ``text_time`` micro-conditioning sized for a pooled embedding of 20 (6 time ids x 8 features)."""
    config = tiny_unet2d_config(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32, 48), attention_head_dim=(2, 4, 6), transformer_layers_per_block=(1, 2, 3),
        use_linear_projection=True, cross_attention_dim=40, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=20 + 6 * 8,
    )
    config.update(overrides)
    return config


def tiny_sdxl_motion_adapter_config(**overrides) -> dict:
    """``MotionAdapter`` kwargs matching ``tiny_sdxl_unet_config`` (as guoyww's sdxl-beta: no mid block, 32
    frame positions)."""
    return tiny_motion_adapter_config(**{"block_out_channels": (16, 32, 48), "motion_num_attention_heads": 2,
                                         "motion_max_seq_length": 32, **overrides})


def tiny_motion_adapter_config(**overrides) -> dict:
    """``MotionAdapter`` kwargs matching ``tiny_unet2d_config`` (levels 32, 64; 8 norm groups, as the UNet's:
    diffusers' UNetMotionModel normalises motion modules with the UNet's group count). v1-style by default:
    24 frame positions, no mid-block module."""
    config = dict(block_out_channels=(32, 64), motion_layers_per_block=2, motion_norm_num_groups=8,
                  motion_num_attention_heads=4, motion_max_seq_length=24, use_motion_mid_block=False)
    config.update(overrides)
    return config


# ----------------------------------------------------------------------------- pipelines


def make_scheduler(kind: str = "ddim"):
    """ModelScope's DDIM scheduler, or DPM-Solver++ built from its config (as Zeroscope users do)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    ddim = DDIMScheduler(**MODELSCOPE_SCHEDULER_CONFIG)
    if kind == "ddim":
        return ddim
    if kind == "dpm":
        return DPMSolverMultistepScheduler.from_config(ddim.config)
    raise ValueError(f"scheduler must be 'ddim' or 'dpm', got {kind!r}")


def build_tiny_t2v_components(
    seed: int = 0,
    unet_overrides: dict | None = None,
    vae_overrides: dict | None = None,
    scheduler: str = "ddim",
) -> dict:
    """The five ModelScope components (float32, eval mode, randomized), keyed like the pipeline's
    constructor arguments: vae, text_encoder, tokenizer, unet, scheduler."""
    from diffusers import AutoencoderKL, UNet3DConditionModel

    unet_config = tiny_unet3d_config(**(unet_overrides or {}))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_tiny_tokenizer(tmp)
    text_encoder = make_tiny_text_encoder(
        hidden=unet_config["cross_attention_dim"], seed=seed + 1, tokenizer=tokenizer
    )
    unet = randomize_(UNet3DConditionModel(**unet_config), seed + 2).eval()
    vae = randomize_(AutoencoderKL(**tiny_vae_config(**(vae_overrides or {}))), seed + 3).eval()
    scheduler = make_scheduler(scheduler)
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


def _build_and_save(pipeline_cls, folder, variant_fp16, **component_kwargs):
    folder = Path(folder)
    pipe = pipeline_cls(**build_tiny_t2v_components(**component_kwargs))
    pipe.set_progress_bar_config(disable=True)
    # hub folders (e.g. damo-vilab/text-to-video-ms-1.7b) ship vocab.json + merges.txt; save_pretrained
    # adds tokenizer.json, so both kinds of tokenizer loader find their files
    make_tiny_tokenizer(folder / "tokenizer")
    if variant_fp16:
        # weights are fp16-exact (see randomize_), so the round trip leaves the float32 pipeline unchanged
        pipe.to(torch.float16)
        pipe.save_pretrained(folder, variant="fp16")
        pipe.to(torch.float32)
    # saved last so the config files (text_encoder/config.json records a dtype) describe float32
    pipe.save_pretrained(folder)
    return pipe


def build_tiny_t2v_pipeline(
    folder,
    seed: int = 0,
    variant_fp16: bool = False,
    unet_overrides: dict | None = None,
    vae_overrides: dict | None = None,
    scheduler: str = "ddim",
):
    """Build a random tiny ``diffusers.TextToVideoSDPipeline`` (float32), ``save_pretrained(folder)``
    (plus ``variant="fp16"`` files when ``variant_fp16``), and return it. The text encoder's width
    follows ``cross_attention_dim``. Default sizes need height/width divisible by 4 (VAE x2, UNet x2)."""
    from diffusers import TextToVideoSDPipeline

    return _build_and_save(
        TextToVideoSDPipeline, folder, variant_fp16,
        seed=seed, unet_overrides=unet_overrides, vae_overrides=vae_overrides, scheduler=scheduler,
    )


def build_tiny_v2v_pipeline(
    folder,
    seed: int = 0,
    variant_fp16: bool = False,
    unet_overrides: dict | None = None,
    vae_overrides: dict | None = None,
    scheduler: str = "ddim",
):
    """As ``build_tiny_t2v_pipeline`` (same components, same seed -> same weights) but a
    ``diffusers.VideoToVideoSDPipeline``."""
    from diffusers import VideoToVideoSDPipeline

    return _build_and_save(
        VideoToVideoSDPipeline, folder, variant_fp16,
        seed=seed, unet_overrides=unet_overrides, vae_overrides=vae_overrides, scheduler=scheduler,
    )


class TinyPipeline(NamedTuple):
    pipe: object  # the diffusers pipeline, float32
    folder: Path  # where it was saved


# Files save_pretrained writes per subfolder (weights listed without the variant infix).
EXPECTED_LAYOUT = {
    "": ["model_index.json"],
    "scheduler": ["scheduler_config.json"],
    "tokenizer": ["tokenizer_config.json", "tokenizer.json", "vocab.json", "merges.txt"],
    "text_encoder": ["config.json", "model.safetensors"],
    "unet": ["config.json", "diffusion_pytorch_model.safetensors"],
    "vae": ["config.json", "diffusion_pytorch_model.safetensors"],
}


def missing_files(folder, variant: str | None = None) -> list[str]:
    """Files of ``EXPECTED_LAYOUT`` absent from ``folder``; with ``variant`` ("fp16") the weight
    files are looked up under their variant names (``model.fp16.safetensors``)."""
    folder = Path(folder)
    missing = []
    for sub, names in EXPECTED_LAYOUT.items():
        for name in names:
            if variant and name.endswith(".safetensors"):
                name = name.replace(".safetensors", f".{variant}.safetensors")
            if not (folder / sub / name).is_file():
                missing.append(f"{sub}/{name}" if sub else name)
    return missing


# ----------------------------------------------------------------------------- I2VGen-XL


# scheduler_config.json of ali-vilab/i2vgen-xl
I2VGEN_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "squaredcos_cap_v2",
    "clip_sample": False,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "leading",
}


def tiny_i2vgen_unet_config(**overrides) -> dict:
    """``I2VGenXLUNet`` kwargs: 2 levels (32, 64), 8 heads, cross-attention dim 32 (which is also the
    CLIP image embedding width the UNet expects)."""
    config = dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=8,
        num_attention_heads=64,
    )
    config.update(overrides)
    return config


def make_tiny_image_encoder(projection_dim: int = 32, image_size: int = 32, seed: int = 0):
    """Random ``CLIPVisionModelWithProjection``: 32 x 32 images, 8 x 8 patches, 2 layers, width 32."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=8,
        projection_dim=projection_dim,
    )
    return randomize_(CLIPVisionModelWithProjection(config), seed).eval()


def make_tiny_feature_extractor(size: int = 32):
    """``CLIPImageProcessor`` with CLIP's normalisation and a ``size`` x ``size`` crop."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def build_tiny_i2vgen_components(seed: int = 0, unet_overrides: dict | None = None,
                                 vae_overrides: dict | None = None, image_size: int = 32) -> dict:
    """The seven I2VGen-XL components (float32, eval mode, randomized), keyed like the pipeline's
    constructor arguments; the scheduler has the real ali-vilab/i2vgen-xl config."""
    from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLUNet

    unet_config = tiny_i2vgen_unet_config(**(unet_overrides or {}))
    ctx = unet_config["cross_attention_dim"]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_tiny_tokenizer(tmp)
    return dict(
        vae=randomize_(AutoencoderKL(**tiny_vae_config(**(vae_overrides or {}))), seed + 3).eval(),
        text_encoder=make_tiny_text_encoder(hidden=ctx, seed=seed + 1, tokenizer=tokenizer),
        tokenizer=tokenizer,
        image_encoder=make_tiny_image_encoder(ctx, image_size, seed + 4),
        feature_extractor=make_tiny_feature_extractor(image_size),
        unet=randomize_(I2VGenXLUNet(**unet_config), seed + 2).eval(),
        scheduler=DDIMScheduler(**I2VGEN_SCHEDULER_CONFIG),
    )


def build_tiny_i2vgen_pipeline(folder, seed: int = 0, variant_fp16: bool = False, unet_overrides: dict | None = None,
                               vae_overrides: dict | None = None, image_size: int = 32):
    """Build a random tiny ``diffusers.I2VGenXLPipeline`` (float32), ``save_pretrained(folder)`` (plus
    ``variant="fp16"`` files when ``variant_fp16``), and return it. Default sizes need height/width
    divisible by 8 (the pipeline's check; the VAE scales by 2, the UNet by 2)."""
    from diffusers import I2VGenXLPipeline

    folder = Path(folder)
    pipe = I2VGenXLPipeline(**build_tiny_i2vgen_components(seed, unet_overrides, vae_overrides, image_size))
    pipe.set_progress_bar_config(disable=True)
    make_tiny_tokenizer(folder / "tokenizer")
    if variant_fp16:
        pipe.to(torch.float16)
        pipe.save_pretrained(folder, variant="fp16")
        pipe.to(torch.float32)
    pipe.save_pretrained(folder)
    return pipe


# ----------------------------------------------------------------------------- Stable Video Diffusion


# scheduler_config.json of stabilityai/stable-video-diffusion-img2vid(-xt)
SVD_SCHEDULER_CONFIG = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "trained_betas": None,
    "use_karras_sigmas": True,
}


def tiny_svd_unet_config(**overrides) -> dict:
    """``UNetSpatioTemporalConditionModel`` kwargs: 2 levels (32, 64), 2 / 4 heads, CLIP width 32,
    added-time embedding 3 x 8, 8 input channels (noise + image latents), 3 frames by default."""
    config = dict(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        num_attention_heads=(2, 4),
        cross_attention_dim=32,
        layers_per_block=1,
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24,
        in_channels=8,
        out_channels=4,
        num_frames=3,
        sample_size=8,
    )
    config.update(overrides)
    return config


def tiny_svd_vae_config(**overrides) -> dict:
    """``AutoencoderKLTemporalDecoder`` kwargs: 2 levels (32, 64; the model's norms use 32 groups) ->
    spatial factor 2, 4 latent channels, SVD's scaling factor, ``force_upcast``."""
    config = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        sample_size=16,
        scaling_factor=0.18215,
        force_upcast=True,
    )
    config.update(overrides)
    return config


def build_tiny_svd_components(seed: int = 0, unet_overrides: dict | None = None,
                              vae_overrides: dict | None = None) -> dict:
    """The five SVD components (float32, eval mode, randomized), keyed like the pipeline's constructor
    arguments. The image encoder takes 224 x 224 inputs (the pipeline resizes to that size whatever
    the encoder) in 32 x 32 patches; the scheduler has the real SVD config."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    unet_config = tiny_svd_unet_config(**(unet_overrides or {}))
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=224, patch_size=32, projection_dim=unet_config["cross_attention_dim"])
    return dict(
        vae=randomize_(AutoencoderKLTemporalDecoder(**tiny_svd_vae_config(**(vae_overrides or {}))), seed + 3).eval(),
        image_encoder=randomize_(CLIPVisionModelWithProjection(vision), seed + 4).eval(),
        unet=randomize_(UNetSpatioTemporalConditionModel(**unet_config), seed + 2).eval(),
        scheduler=EulerDiscreteScheduler.from_config(SVD_SCHEDULER_CONFIG),
        feature_extractor=make_tiny_feature_extractor(224),
    )


def build_tiny_svd_pipeline(folder, seed: int = 0, variant_fp16: bool = False, unet_overrides: dict | None = None,
                            vae_overrides: dict | None = None):
    """Build a random tiny ``diffusers.StableVideoDiffusionPipeline`` (float32), ``save_pretrained(folder)``
    (plus ``variant="fp16"`` files when ``variant_fp16``), and return it. Height and width must be
    multiples of 8 (the pipeline's check); the VAE scales by 2, the UNet by 2."""
    from diffusers import StableVideoDiffusionPipeline

    folder = Path(folder)
    pipe = StableVideoDiffusionPipeline(**build_tiny_svd_components(seed, unet_overrides, vae_overrides))
    pipe.set_progress_bar_config(disable=True)
    if variant_fp16:
        pipe.to(torch.float16)
        pipe.save_pretrained(folder, variant="fp16")
        pipe.to(torch.float32)
    pipe.save_pretrained(folder)
    return pipe


def cli_spelling(spelling: str, argv) -> list[str]:
    """``vidcore generate TASK ...`` argv as typed with vidcore's short flags (``"vidcore"``) or with diffusers'
    argument names (``"diffusers"``: each flag that has aliases replaced by its last one, e.g. ``--steps`` ->
    ``--num-inference-steps``). The diffusers spelling must change at least one flag."""
    from vidcore.cli.aliases import aliases_of

    argv = [str(a) for a in argv]
    if spelling == "vidcore":
        return argv
    assert spelling == "diffusers" and argv[0] == "generate", (spelling, argv[:2])
    task = argv[1]
    out = [(aliases_of(task, a) or (a,))[-1] if a.startswith("--") else a for a in argv]
    assert out != argv, f"no flag of {argv} has a diffusers spelling"
    return out
