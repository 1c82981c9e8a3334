"""``vidcore train lora``: fine-tune a LoRA on a folder of captioned clips (:func:`vidcore.training.train_lora`).

    vidcore train lora --model cerspense/zeroscope_v2_576w --data clips/ --output out/ --num-frames 16 \\
        --height 320 --width 576 --steps 500 --checkpoint-every 100 --sample-every 100
    vidcore train lora --model SD15 --motion-adapter guoyww/animatediff-motion-adapter-v1-5-2 --data clips/ ...
    torchrun --nproc-per-node 2 -m vidcore.cli train lora ...      # data parallel, rank 0 writes the files

Each flag is one :class:`~vidcore.training.config.TrainLoRAConfig` field; the config checks the values, and bad
data (empty folder, unreadable or too short clip, missing caption) is reported before the model loads.
"""

from __future__ import annotations

import argparse
import os
import re

from .common import (EXIT_OK, DefaultsFormatter, device_name, nonnegative_int, positive_float, positive_int,
                     quiet_library_progress)

TARGET_PRESETS = ("temporal", "spatial", "both")


def lora_target(text: str) -> str:
    """``--target``: a preset or a regular expression over diffusers layer names."""
    if text in TARGET_PRESETS:
        return text
    try:
        re.compile(text)
    except re.error as err:
        raise argparse.ArgumentTypeError(f"expected {', '.join(TARGET_PRESETS)} or a regular expression, got "
                                         f"{text!r} ({err})") from None
    return text


def add_parser(commands) -> None:
    train = commands.add_parser("train", help="fine-tune a model (LoRA)", description="Fine-tune a model.")
    kinds = train.add_subparsers(dest="kind", metavar="KIND", required=True)
    p = kinds.add_parser(
        "lora", help="train a LoRA on captioned clips (ModelScope/Zeroscope, AnimateDiff)",
        formatter_class=DefaultsFormatter,
        description="Train a LoRA on a folder of captioned clips: video files (.mp4 .webm .mov .mkv .avi .gif) and "
                    "folders of frame images, captions in metadata.jsonl ({\"file_name\": ..., \"text\": ...}) or "
                    "<name>.txt. Writes OUTPUT/pytorch_lora_weights.safetensors (peft layout, diffusers layer "
                    "names: pipe.load_lora_weights(OUTPUT)), train_log.json, checkpoints/ and samples/. Under "
                    "torchrun each process takes its share of every batch and rank 0 writes the files.")
    p.add_argument("--model", required=True, metavar="PATH_OR_REPO",
                   help="ModelScope/Zeroscope text-to-video pipeline, saved AnimateDiff pipeline, or Stable Diffusion "
                        "1.5 pipeline with --motion-adapter (folder or hub repo id)")
    p.add_argument("--motion-adapter", default=None, metavar="PATH_OR_REPO",
                   help="AnimateDiff motion adapter for a Stable Diffusion --model")
    p.add_argument("--variant", default=None, help="weight file variant to load, e.g. fp16")
    p.add_argument("--data", required=True, metavar="DIR", help="folder of captioned clips")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the LoRA, log, checkpoints and samples")
    g = p.add_argument_group("LoRA")
    g.add_argument("--rank", type=positive_int, default=16, help="LoRA rank (> 0)")
    g.add_argument("--alpha", type=positive_float, default=None, help="scale alpha / rank (default: alpha = rank)")
    g.add_argument("--target", type=lora_target, default="temporal",
                   help="layers: temporal (motion modules / temporal attention), spatial (image attention), both, "
                        "or a regular expression over diffusers layer names")
    g.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout")
    g.add_argument("--motion-director", action="store_true",
                   help="MotionDirector: a spatial LoRA on single frames and a temporal LoRA on the clips (written "
                        "as pytorch_lora_weights.safetensors, the spatial one as spatial_lora_weights.safetensors)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=positive_int, default=500, help="optimizer steps")
    g.add_argument("--lr", type=positive_float, default=1e-4, help="AdamW learning rate")
    g.add_argument("--lr-warmup-steps", type=nonnegative_int, default=0, help="linear learning-rate warm-up steps")
    g.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay")
    g.add_argument("--max-grad-norm", type=positive_float, default=1.0, help="clip the gradient norm to this")
    g.add_argument("--batch-size", type=positive_int, default=1, help="clips per process per micro-step")
    g.add_argument("--gradient-accumulation-steps", type=positive_int, default=1,
                   help="micro-steps summed into each optimizer step")
    g.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no",
                   help="autocast dtype of the UNet (bf16 works on the CPU too)")
    g.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    g.add_argument("--ema", action="store_true", help="also write an EMA of the LoRA (..._ema.safetensors)")
    g.add_argument("--ema-decay", type=float, default=0.999,
                   help="with --ema: the decay (warmed up as (1 + n) / (10 + n))")
    g.add_argument("--seed", type=int, default=0, help="seeds the LoRA init, the data order and every noise draw")
    g = p.add_argument_group("data")
    g.add_argument("--num-frames", type=positive_int, default=16, help="frames per training clip")
    g.add_argument("--height", type=positive_int, default=256, help="training height (clips resized and cropped)")
    g.add_argument("--width", type=positive_int, default=256, help="training width")
    g.add_argument("--sample-stride", type=positive_int, default=1, help="take every N-th frame of the clips")
    g.add_argument("--crop", choices=("center", "random"), default="center")
    g = p.add_argument_group("checkpoints and samples")
    g.add_argument("--checkpoint-every", type=nonnegative_int, default=0, help="steps between checkpoints (0: none)")
    g.add_argument("--keep-checkpoints", type=positive_int, default=None, help="keep only the newest N checkpoints")
    g.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue from the newest checkpoint in --output (or from CHECKPOINT); starts fresh when "
                        "there is none")
    g.add_argument("--sample-every", type=nonnegative_int, default=0,
                   help="steps between sample videos in OUTPUT/samples (0: none)")
    g.add_argument("--sample-prompt", default=None, help="prompt of the samples (default: the first clip's caption)")
    g.add_argument("--sample-steps", type=positive_int, default=25, help="denoising steps of the samples")
    g.add_argument("--sample-guidance", type=float, default=9.0, help="guidance scale of the samples")
    p.add_argument("--device", type=device_name, default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..training import TrainLoRAConfig, train_lora

    if args.no_progress:
        quiet_library_progress()

    config = TrainLoRAConfig(
        model=args.model, data_dir=args.data, output_dir=args.output, motion_adapter=args.motion_adapter,
        variant=args.variant, rank=args.rank, alpha=args.alpha, target=args.target, dropout=args.dropout,
        steps=args.steps, learning_rate=args.lr, lr_warmup_steps=args.lr_warmup_steps,
        weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing, ema=args.ema, ema_decay=args.ema_decay,
        motion_director=args.motion_director, seed=args.seed, num_frames=args.num_frames, height=args.height,
        width=args.width, sample_stride=args.sample_stride, crop=args.crop, checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, resume=args.resume, sample_every=args.sample_every,
        sample_prompt=args.sample_prompt, sample_steps=args.sample_steps,
        sample_guidance_scale=args.sample_guidance, device=args.device,
        progress=not args.no_progress)
    path = train_lora(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {path}")
    return EXIT_OK
