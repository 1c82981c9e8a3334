"""Fine-tuning: trainable LoRA layers on any vidcore UNet (:mod:`.lora`), named as diffusers names them, saved in
peft's layout (read by diffusers and vidcore) or the original AnimateDiff motion-LoRA layout (:data:`LAYOUTS`)."""

from .lora import (LAYOUTS, TARGETS, LoRABranch, LoRAConfig, add_lora, diffusers_linear_names, lora_layers,
                   lora_parameters, lora_state_dict, merge_lora, remove_lora, save_lora, set_lora_state_dict)

__all__ = ["LAYOUTS", "TARGETS", "LoRABranch", "LoRAConfig", "add_lora", "diffusers_linear_names", "lora_layers",
           "lora_parameters", "lora_state_dict", "merge_lora", "remove_lora", "save_lora", "set_lora_state_dict"]

# the LoRA trainer (``vidcore train lora``): its config, data folders (.data), checkpoints and torchrun support
from .config import TrainLoRAConfig  # noqa: E402
from .trainer import train_lora  # noqa: E402

__all__ += ["TrainLoRAConfig", "train_lora"]
