"""diffusers ``UNet3DConditionModel`` <-> vidcore ``UNet3D`` (ModelScope, Zeroscope)."""

from ..engine import KeyMap, Rule
from .common import attention_rules, identity

TEMPORAL_CONV_RULES = [
    Rule("{p}.temp_convs.{i:int}.conv1.0.{leaf}", "{p}.temp_convs.{i}.layers.0.norm.{leaf}"),
    Rule("{p}.temp_convs.{i:int}.conv1.2.{leaf}", "{p}.temp_convs.{i}.layers.0.conv.{leaf}"),
    *[
        rule
        for k in (2, 3, 4)
        for rule in (
            Rule(f"{{p}}.temp_convs.{{i:int}}.conv{k}.0.{{leaf}}", f"{{p}}.temp_convs.{{i}}.layers.{k - 1}.norm.{{leaf}}"),
            Rule(f"{{p}}.temp_convs.{{i:int}}.conv{k}.3.{{leaf}}", f"{{p}}.temp_convs.{{i}}.layers.{k - 1}.conv.{{leaf}}"),
        )
    ],
]

SAMPLER_RULES = [
    Rule("{p}.downsamplers.0.conv.{leaf}", "{p}.downsample.conv.{leaf}"),
    Rule("{p}.upsamplers.0.conv.{leaf}", "{p}.upsample.conv.{leaf}"),
]

UNET3D_MAP = KeyMap([*TEMPORAL_CONV_RULES, *SAMPLER_RULES, *attention_rules(), identity()], name="diffusers-unet3d")
