"""diffusers ``I2VGenXLUNet`` <-> vidcore ``I2VGenXLUNet``: the UNet3D map (the extra image-conditioning
modules keep diffusers' names, and their feed-forward/attention containers are handled by the same rules)."""

from ..engine import KeyMap
from .diffusers_unet3d import UNET3D_MAP

I2VGEN_MAP = KeyMap(list(UNET3D_MAP.rules), name="diffusers-i2vgen-xl-unet")
