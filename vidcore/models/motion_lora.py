"""Old name of :mod:`vidcore.models.lora` (the LoRA it holds is not only a motion LoRA: spatial SD LoRAs load the
same way), kept so existing imports work."""

from .lora import LoRA, fuse_lora, fused_loras, unfuse_lora

MotionLoRA = LoRA

__all__ = ["LoRA", "MotionLoRA", "fuse_lora", "fused_loras", "unfuse_lora"]
