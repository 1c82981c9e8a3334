"""diffusers ``ControlNetModel`` <-> vidcore ``ControlNet`` (Stable Diffusion 1.x / 2.x ControlNets).

The encoder half uses the UNet's own names, so the UNet2D rules apply unchanged (with SD1.x configs the
spatial transformers' ``proj_in``/``proj_out`` are stored as 1x1 convolutions; vidcore's are linear). The
ControlNet's own parts keep diffusers' names: ``controlnet_cond_embedding.{conv_in, blocks.i, conv_out}``,
the zero convs ``controlnet_down_blocks.i`` and ``controlnet_mid_block``.
"""

from collections.abc import Mapping

from ..engine import KeyMap
from .common import attention_rules, identity
from .diffusers_unet2d import CONV_PROJECTION_RULES
from .diffusers_unet3d import SAMPLER_RULES

CONTROLNET_LINEAR_MAP = KeyMap([*SAMPLER_RULES, *attention_rules(), identity()], name="diffusers-controlnet")
CONTROLNET_CONV_MAP = KeyMap([*CONV_PROJECTION_RULES, *SAMPLER_RULES, *attention_rules(), identity()],
                             name="diffusers-controlnet (conv projections)")


def controlnet_map(config: Mapping | None) -> KeyMap:
    """The map for a diffusers config dict (``use_linear_projection`` defaults to False, as in diffusers)."""
    return CONTROLNET_LINEAR_MAP if (config or {}).get("use_linear_projection", False) else CONTROLNET_CONV_MAP
