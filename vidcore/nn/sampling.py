"""Old name of :mod:`vidcore.nn.resample` (up/down-sampling convolutions), kept so existing imports work; the
diffusion-time tools are :mod:`vidcore.sampling`."""

from .resample import Downsample, Upsample

__all__ = ["Downsample", "Upsample"]
