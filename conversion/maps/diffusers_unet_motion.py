"""diffusers ``UNetMotionModel`` (a saved AnimateDiff pipeline's ``unet/``) <-> vidcore ``UNet2D`` + ``MotionAdapter``.

A ``UNetMotionModel`` checkpoint is a Stable Diffusion UNet's tensors under their ``UNet2DConditionModel``
names plus, at every level, a ``motion_modules.{j}`` container named exactly as in a ``MotionAdapter``
checkpoint. So no new key rules are needed: :func:`split_state_dict` routes each tensor to one of the two
existing maps (``unet2d_map`` / ``MOTION_ADAPTER_MAP``), and :func:`split_config` derives the two configs
from the one ``config.json``; :func:`merge_config` goes back (writing a UNetMotionModel folder: the two maps'
reverse outputs side by side, under this config).
"""

from __future__ import annotations

from collections.abc import Mapping

# UNetMotionModel block type -> the UNet2DConditionModel block it extends
BLOCK_TYPES = {
    "CrossAttnDownBlockMotion": "CrossAttnDownBlock2D",
    "DownBlockMotion": "DownBlock2D",
    "CrossAttnUpBlockMotion": "CrossAttnUpBlock2D",
    "UpBlockMotion": "UpBlock2D",
}
# keys copied unchanged into the UNet2DConditionModel config
UNET2D_KEYS = ("sample_size", "in_channels", "out_channels", "block_out_channels", "layers_per_block",
               "downsample_padding", "mid_block_scale_factor", "act_fn", "norm_num_groups", "norm_eps",
               "cross_attention_dim", "transformer_layers_per_block", "use_linear_projection", "time_cond_proj_dim",
               "addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim")
# options of UNetMotionModel outside what AnimateDiffPipeline (SD1.5) and AnimateDiffSDXLPipeline use -> the
# only value accepted
FIXED = {"encoder_hid_dim_type": None, "reverse_transformer_layers_per_block": None,
         "reverse_temporal_transformer_layers_per_block": None, "reverse_motion_num_attention_heads": None,
         "transformer_layers_per_mid_block": None, "mid_block_layers": 1}

MOTION_KEY = ".motion_modules."


def split_config(config: Mapping) -> tuple[dict, dict]:
    """UNetMotionModel config -> (UNet2DConditionModel config, MotionAdapter config). Raises ValueError
    naming the option for layouts vidcore's UNet2D + MotionAdapter do not cover (PIA, asymmetric, IP-Adapter).
    SDXL's ``addition_embed_type="text_time"`` and its sizes go to the UNet config (UNetMotionModel's time-id
    features are always cos-first with no shift, as SDXL's)."""
    name = config.get("_class_name", "UNetMotionModel")
    if name != "UNetMotionModel":
        raise ValueError(f"expected a UNetMotionModel config, got {name!r}")
    for key, allowed in FIXED.items():
        if config.get(key, allowed) != allowed:
            raise ValueError(f"UNetMotionModel config: {key}={config[key]!r} is not supported (vidcore loads the "
                             f"Stable Diffusion 1.x / XL AnimateDiff layouts; expected {allowed!r})")
    if config.get("in_channels", 4) != config.get("out_channels", 4):
        raise ValueError(f"UNetMotionModel config: in_channels={config.get('in_channels')} differs from "
                         f"out_channels={config.get('out_channels')} (a PIA UNet); load the SD UNet and the PIA "
                         "adapter separately instead")
    unknown = [t for t in (*config.get("down_block_types", ()), *config.get("up_block_types", ())) if t not in BLOCK_TYPES]
    if unknown:
        raise ValueError(f"UNetMotionModel config: unknown block types {unknown}; known: {sorted(BLOCK_TYPES)}")

    unet = {k: config[k] for k in UNET2D_KEYS if k in config}
    unet.update(_class_name="UNet2DConditionModel", mid_block_type="UNetMidBlock2DCrossAttn",
                down_block_types=[BLOCK_TYPES[t] for t in config.get("down_block_types", ())] or None,
                up_block_types=[BLOCK_TYPES[t] for t in config.get("up_block_types", ())] or None,
                attention_head_dim=config.get("num_attention_heads", 8))  # diffusers' head count under both names
    unet = {k: v for k, v in unet.items() if v is not None or k in ("time_cond_proj_dim", "addition_embed_type")}

    adapter = {
        "_class_name": "MotionAdapter",
        "block_out_channels": config.get("block_out_channels", [320, 640, 1280, 1280]),
        "motion_layers_per_block": config.get("layers_per_block", 2),
        "motion_transformer_layers_per_block": config.get("temporal_transformer_layers_per_block", 1),
        "motion_mid_block_layers_per_block": config.get("mid_block_layers", 1),
        "motion_transformer_layers_per_mid_block": config.get("temporal_transformer_layers_per_mid_block", 1),
        "motion_num_attention_heads": config.get("motion_num_attention_heads", 8),
        # UNetMotionModel normalises its motion modules with the UNet's group count
        "motion_norm_num_groups": config.get("norm_num_groups", 32),
        "motion_max_seq_length": config.get("motion_max_seq_length", 32),
        "use_motion_mid_block": config.get("use_motion_mid_block", True),
    }
    return unet, adapter


def split_state_dict(state: Mapping) -> tuple[dict, dict]:
    """UNetMotionModel tensors -> (UNet2DConditionModel tensors, MotionAdapter tensors), names unchanged."""
    unet = {k: v for k, v in state.items() if MOTION_KEY not in k}
    motion = {k: v for k, v in state.items() if MOTION_KEY in k}
    return unet, motion


def merge_config(unet: Mapping, adapter: Mapping) -> dict:
    """(UNet2DConditionModel config, MotionAdapter config) -> the UNetMotionModel config diffusers builds from them
    (``UNetMotionModel.from_unet2d``'s choices: motion block types, the adapter's layer and head counts)."""
    config = {k: unet[k] for k in UNET2D_KEYS if k in unet}
    motion = {v: k for k, v in BLOCK_TYPES.items()}
    config.update(
        _class_name="UNetMotionModel",
        down_block_types=[motion[t] for t in unet["down_block_types"]],
        up_block_types=[motion[t] for t in unet["up_block_types"]],
        num_attention_heads=unet.get("num_attention_heads") or unet.get("attention_head_dim", 8),
        layers_per_block=adapter["motion_layers_per_block"],
        temporal_transformer_layers_per_block=adapter["motion_transformer_layers_per_block"],
        temporal_transformer_layers_per_mid_block=adapter["motion_transformer_layers_per_mid_block"],
        motion_num_attention_heads=adapter["motion_num_attention_heads"],
        motion_max_seq_length=adapter["motion_max_seq_length"],
        use_motion_mid_block=adapter["use_motion_mid_block"],
    )
    return config
