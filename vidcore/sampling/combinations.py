"""The sampling features by name, their switches, and which do not combine (design principle 12).

:data:`FEATURE_NAMES` are the columns of :func:`vidcore.pipelines.features.capability_table` (which reads off
the classes who has each); :data:`SWITCHES` the methods that turn the mixin features on and off; each entry of
:data:`EXCLUSIONS` names two features and why they exclude each other. Pipelines call :func:`check_combination`
with the features a call or a setting turns on, and every refusal is the same
:class:`~vidcore.errors.UnsupportedFeatureError`. No pipeline is imported here."""

from __future__ import annotations

from ..errors import UnsupportedFeatureError

# feature -> (title, how a user turns it on)
FEATURE_NAMES: dict[str, tuple[str, str]] = {
    "context_windows": ("context windows", "`pipe(..., context_length=16)`"),
    "free_noise": ("FreeNoise", "`pipe.enable_free_noise()`"),
    "prompt_travel": ("prompt travel", "`prompt={0: ..., 16: ...}`"),
    "free_init": ("FreeInit", "`pipe.enable_free_init()`"),
    "step_cache": ("step caches", "`pipe.enable_deep_cache()`"),
    "parallel": ("multi-GPU", "`pipe.enable_parallel()`"),
    "ip_adapter": ("IP-Adapter", "`pipe.load_ip_adapter(...)`"),
    "lora": ("LoRA", "`pipe.load_lora_weights(...)`"),
    "motion_scale": ("motion scale", "`pipe(..., motion_scale=0.8)`"),
    "keyframes": ("last frame", "`pipe(..., last_image=img)`"),
}

# the switches of the mixin features: asked for on a pipeline without the feature they raise
# UnsupportedFeatureError (VideoPipeline.__getattr__)
SWITCHES: dict[str, str] = {
    "enable_free_noise": "free_noise", "disable_free_noise": "free_noise",
    "enable_free_noise_split_inference": "free_noise", "disable_free_noise_split_inference": "free_noise",
    "enable_free_init": "free_init", "disable_free_init": "free_init",
    "enable_parallel": "parallel", "disable_parallel": "parallel",
    "load_ip_adapter": "ip_adapter", "set_ip_adapter_scale": "ip_adapter", "unload_ip_adapter": "ip_adapter",
    "load_lora_weights": "lora", "set_adapters": "lora", "fuse_lora": "lora", "unfuse_lora": "lora",
    "enable_deep_cache": "step_cache", "disable_deep_cache": "step_cache", "enable_block_cache": "step_cache",
    "disable_block_cache": "step_cache",
}

EXCLUSIONS: dict[frozenset[str], str] = {
    frozenset({"free_noise", "context_windows"}):
        "FreeNoise windows the temporal layers while the UNet sees every frame, context windows run the whole UNet "
        "on windows; set the windows in enable_free_noise(context_length=..., context_stride=...) or "
        "disable_free_noise()",
    frozenset({"free_noise", "frame_parallel"}):
        "frame-parallel ranks hold slices of the video, which FreeNoise's attention windows cannot see whole; use "
        "enable_parallel(frames=False)",
    frozenset({"block_cache", "frame_parallel"}):
        "the block cache decides per rank from its own data, and frame-parallel ranks could disagree and stall in "
        "the temporal layers' exchanges; use enable_deep_cache, or enable_parallel(frames=False)",
    frozenset({"ip_adapter", "parallel"}):
        "the parallel UNet forward does not carry image-prompt tokens yet; call disable_parallel() first",
    frozenset({"prompt_travel", "ip_adapter"}):
        "on the AnimateDiff pipelines FreeNoise's per-frame prompt embeddings do not reach the image-prompt attention "
        "yet; pass a text prompt (Text2Video-Zero's own prompt travel combines with an image prompt)",
    frozenset({"keyframes", "parallel"}):
        "the bidirectional keyframe sampler runs on one process; call disable_parallel() first",
    frozenset({"keyframes", "context_windows"}):
        "last_image samples the whole video in one pass each way: use context_length=None or >= num_frames",
}


def check_combination(pipe, **active: bool) -> None:
    """Raise :class:`UnsupportedFeatureError` when two of the ``active`` features exclude each other."""
    on = {name for name, value in active.items() if value}
    for pair, reason in EXCLUSIONS.items():
        if pair <= on:
            a, b = sorted(pair)
            raise UnsupportedFeatureError(f"{type(pipe).__name__}: {a} and {b} do not combine: {reason}")


__all__ = ["EXCLUSIONS", "FEATURE_NAMES", "SWITCHES", "check_combination"]
