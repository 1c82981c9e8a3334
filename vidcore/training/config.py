"""``TrainLoRAConfig``: every setting of a LoRA fine-tuning run, checked when it is made."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from ..errors import ArgumentError
from .data import CROPS
from .lora import TARGETS, LoRAConfig

MIXED_PRECISION = ("no", "bf16", "fp16")
# settings a resumed run must share with the checkpoint it continues (the rest, e.g. steps or sampling, may change)
RESUME_KEYS = ("model", "motion_adapter", "rank", "alpha", "target", "dropout", "batch_size",
               "gradient_accumulation_steps", "num_frames", "height", "width", "sample_stride", "crop", "seed",
               "motion_director", "ema")


@dataclass(frozen=True)
class TrainLoRAConfig:
    """A LoRA fine-tuning run (:func:`vidcore.training.trainer.train_lora`).

    ``model``: a ModelScope / Zeroscope text-to-video pipeline (folder or hub id), a saved AnimateDiff pipeline, or
    a Stable Diffusion 1.5 pipeline plus ``motion_adapter``. ``data_dir``: clips with captions
    (:mod:`vidcore.training.data`). ``output_dir`` receives ``pytorch_lora_weights.safetensors`` (peft layout,
    ``unet.`` keys: ``pipe.load_lora_weights(output_dir)`` in vidcore and diffusers), ``train_log.json``,
    ``checkpoints/`` and ``samples/``.

    One optimizer step sees ``batch_size x gradient_accumulation_steps x processes`` clips (under torchrun each
    process takes ``batch_size`` of each global batch). ``target`` is a :data:`vidcore.training.lora.TARGETS`
    preset or a regex over diffusers layer names; ``motion_director`` ignores it and trains MotionDirector's
    spatial and temporal LoRAs (:mod:`vidcore.training.motion_director`). ``resume``: True continues from the
    newest checkpoint in ``output_dir`` (starting fresh when there is none, so a preempted job can rerun the
    same command), or a checkpoint folder.
    """

    model: str
    data_dir: str
    output_dir: str
    motion_adapter: str | None = None
    variant: str | None = None
    # LoRA
    rank: int = 16
    alpha: float | None = None
    target: str = "temporal"
    dropout: float = 0.0
    # optimisation
    steps: int = 500
    learning_rate: float = 1e-4
    lr_warmup_steps: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float | None = 1.0
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    ema: bool = False
    ema_decay: float = 0.999
    motion_director: bool = False
    seed: int = 0
    # data
    num_frames: int = 16
    height: int = 256
    width: int = 256
    sample_stride: int = 1
    crop: str = "center"
    # checkpoints and samples
    checkpoint_every: int = 0
    keep_checkpoints: int | None = None
    resume: bool | str = False
    sample_every: int = 0
    sample_prompt: str | None = None
    sample_steps: int = 25
    sample_guidance_scale: float = 9.0
    device: str | None = None
    progress: bool = True

    def __post_init__(self):
        for name in ("rank", "steps", "batch_size", "gradient_accumulation_steps", "num_frames", "height", "width",
                     "sample_stride", "sample_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ArgumentError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr_warmup_steps", "checkpoint_every", "sample_every", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ArgumentError(f"{name} must be an integer >= 0, got {value!r}")
        keep = self.keep_checkpoints
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ArgumentError(f"keep_checkpoints must be a positive integer or None, got {self.keep_checkpoints!r}")
        if not self.learning_rate > 0:
            raise ArgumentError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.weight_decay < 0:
            raise ArgumentError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ArgumentError(f"max_grad_norm must be > 0 or None (no clipping), got {self.max_grad_norm!r}")
        if not 0 <= self.ema_decay < 1:
            raise ArgumentError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ArgumentError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.crop not in CROPS:
            raise ArgumentError(f"crop must be one of {CROPS}, got {self.crop!r}")
        if self.height % 8 or self.width % 8:
            raise ArgumentError(f"height and width must be multiples of 8, got {self.height}x{self.width}")
        if self.motion_director and self.target != "temporal":
            raise ArgumentError(f"motion_director trains its own spatial and temporal LoRAs; leave target at "
                                f"'temporal' (got {self.target!r})")
        if self.motion_director and self.num_frames < 2:
            raise ArgumentError("motion_director needs num_frames >= 2 (its temporal path learns how frames change)")
        if not isinstance(self.target, str) or not self.target:
            raise ArgumentError(f"target must be one of {sorted(TARGETS)} or a regular expression, got {self.target!r}")
        if not self.motion_director:  # rank, alpha, dropout and target as add_lora will take them, before any load
            LoRAConfig(self.rank, self.alpha, self.target, self.dropout)
        if not isinstance(self.resume, (bool, str, os.PathLike)):
            raise ArgumentError(f"resume must be True/False or a checkpoint folder, got {self.resume!r}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["resume"] = os.fspath(self.resume) if not isinstance(self.resume, bool) else self.resume
        return out


__all__ = ["MIXED_PRECISION", "RESUME_KEYS", "TrainLoRAConfig"]
