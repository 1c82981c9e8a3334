"""diffusers ``UNet2DConditionModel`` <-> vidcore ``UNet2D`` (Stable Diffusion 1.x / 2.x).

The layout depends on the config: with ``use_linear_projection=False`` (SD1.x) the spatial
transformers' ``proj_in``/``proj_out`` are stored as 1x1 convolutions, with ``True`` (SD2.x) as linear
layers; vidcore's are always linear. :func:`unet2d_map` picks the map for a config, so export
writes back the layout the config describes.
"""

from collections.abc import Mapping

from ..engine import KeyMap, Rule, conv1x1_to_linear, linear_to_conv1x1
from .common import attention_rules, identity
from .diffusers_unet3d import SAMPLER_RULES

CONV_PROJECTION_RULES = [
    Rule(f"{{p}}.attentions.{{i:int}}.{proj}.{{leaf}}", f"{{p}}.attentions.{{i}}.{proj}.{{leaf}}",
         forward=conv1x1_to_linear, reverse=linear_to_conv1x1, name=f"transformer {proj} (1x1 conv <-> linear)")
    for proj in ("proj_in", "proj_out")
]

UNET2D_LINEAR_MAP = KeyMap([*SAMPLER_RULES, *attention_rules(), identity()], name="diffusers-unet2d")
UNET2D_CONV_MAP = KeyMap([*CONV_PROJECTION_RULES, *SAMPLER_RULES, *attention_rules(), identity()],
                         name="diffusers-unet2d (conv projections)")


def unet2d_map(config: Mapping | None) -> KeyMap:
    """The map for a diffusers config dict (``use_linear_projection`` defaults to False, as in diffusers)."""
    return UNET2D_LINEAR_MAP if (config or {}).get("use_linear_projection", False) else UNET2D_CONV_MAP
