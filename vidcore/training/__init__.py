"""Fine-tuning: trainable LoRA layers on any vidcore UNet (:mod:`.lora`), named as diffusers names them, and the
LoRA trainer (:func:`.trainer.train_lora`, ``vidcore train lora``) with its data folder reader (:mod:`.data`)."""

from .lora import (TARGETS, LoRABranch, LoRAConfig, add_lora, diffusers_linear_names, lora_layers, lora_parameters,
                   lora_state_dict, merge_lora, remove_lora, save_lora, set_lora_state_dict)
from .config import TrainLoRAConfig
from .trainer import train_lora

__all__ = ["TrainLoRAConfig", "train_lora", "TARGETS", "LoRABranch", "LoRAConfig", "add_lora", "diffusers_linear_names", "lora_layers",
           "lora_parameters", "lora_state_dict", "merge_lora", "remove_lora", "save_lora", "set_lora_state_dict"]
