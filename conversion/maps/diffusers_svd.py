"""diffusers ``UNetSpatioTemporalConditionModel`` <-> vidcore ``SVDUNet``."""

from ..engine import KeyMap
from .common import attention_rules, identity
from .diffusers_unet3d import SAMPLER_RULES

SVD_UNET_MAP = KeyMap([*SAMPLER_RULES, *attention_rules(), identity()], name="diffusers-svd-unet")
