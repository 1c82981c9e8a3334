"""diffusers ``AutoencoderKL`` <-> vidcore ``AutoencoderKL``."""

from ..engine import KeyMap, Rule
from .common import attention_rules, identity
from .diffusers_unet3d import SAMPLER_RULES

VAE_MAP = KeyMap(
    [
        Rule("{p}.attentions.{i:int}.group_norm.{leaf}", "{p}.attentions.{i}.norm.{leaf}"),
        *SAMPLER_RULES,
        *attention_rules(),
        identity(),
    ],
    name="diffusers-autoencoderkl",
)
