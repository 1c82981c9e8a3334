"""The LoRA flags of ``vidcore generate`` (every task whose pipeline has ``load_lora_weights``: the capability table
decides): the options, their check and loading the LoRA into the pipeline."""

from __future__ import annotations

from .aliases import Options
from .common import UsageError


def add_options(o: Options) -> None:
    o.add("--lora", default=None, metavar="PATH_OR_REPO",
          help="a LoRA for the UNet (a motion LoRA, a spatial SD1.5 LoRA such as AnimateLCM's, or one trained with "
               "`vidcore train lora`): file, folder or hub repo id, e.g. wangfuyun/AnimateLCM with "
               "--lora-weight-name AnimateLCM_sd15_t2v_lora.safetensors")
    o.add("--lora-weight-name", default=None, metavar="FILE", help="the weight file inside a --lora folder or repo")
    o.add("--lora-scale", type=float, default=1.0, help="weight of --lora (default 1)")


def load(pipe, args) -> None:
    """``pipe.load_lora_weights`` for --lora, at --lora-scale."""
    if args.lora is not None:
        pipe.load_lora_weights(args.lora, weight_name=args.lora_weight_name, adapter_name="lora")
        if args.lora_scale != 1.0:
            pipe.set_adapters("lora", args.lora_scale)
    elif args.lora_weight_name is not None or args.lora_scale != 1.0:
        raise UsageError("--lora-weight-name and --lora-scale apply to a --lora")
