"""diffusers ``AutoencoderKLTemporalDecoder`` <-> vidcore ``AutoencoderKLTemporalDecoder`` (SVD's VAE).

Same naming as the 2D VAE: the encoder is SD's, and the temporal decoder's spatio-temporal res blocks
keep diffusers' names (``spatial_res_block``, ``temporal_res_block``, ``time_mixer.mix_factor``).
"""

from ..engine import KeyMap, Rule
from .common import attention_rules, identity
from .diffusers_unet3d import SAMPLER_RULES

SVD_VAE_MAP = KeyMap(
    [
        Rule("{p}.attentions.{i:int}.group_norm.{leaf}", "{p}.attentions.{i}.norm.{leaf}"),
        *SAMPLER_RULES,
        *attention_rules(),
        identity(),
    ],
    name="diffusers-autoencoderkl-temporal-decoder",
)
