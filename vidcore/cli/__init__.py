"""The ``vidcore`` command: generate videos, convert checkpoints, inspect models.

    vidcore generate text-to-video  --model PATH_OR_REPO --prompt "a panda playing guitar" -o panda.mp4
    vidcore generate text-to-video  --model PATH_OR_REPO --prompts prompts.txt --outdir videos/ [--format gif]
    vidcore generate video-to-video --model PATH_OR_REPO --video in.mp4 --prompt "..." --strength 0.6
    vidcore generate i2vgen-xl      --model PATH_OR_REPO --image img.png --prompt "..." -o out.gif
    vidcore generate image-to-video --model PATH_OR_REPO --image rocket.png --num-frames 25 -o rocket.mp4
    vidcore generate animatediff    --model SD15 --motion-adapter ADAPTER --prompt "a panda surfing" -o panda.gif
    vidcore generate animatediff    --model civitai_model.safetensors --config-from SD15 --motion-adapter ADAPTER ...
    vidcore generate text2video-zero --model SD15 --prompt "a horse galloping on a street" -o horse.mp4
    vidcore generate edit           --model timbrooks/instruct-pix2pix --video in.mp4 --prompt "make it Van Gogh style"
    vidcore generate controlled     --control canny --video in.mp4 --model SD15 --controlnet CONTROLNET --prompt "..."
    vidcore convert  SRC DST [--to vidcore|diffusers] [--subfolder unet] [--dtype fp16] [--force]
    vidcore convert  mm_sd_v15_v2.ckpt motion-adapter-v2 --to diffusers
    vidcore convert  civitai_model.safetensors vae.safetensors --component vae
    vidcore inspect  PATH [--subfolder unet]
    vidcore train lora --model PATH_OR_REPO [--motion-adapter ADAPTER] --data CLIPS --output DIR [--motion-director]

One module per command (``generate`` with its ``tasks`` and diffusers-spelling ``aliases``, ``convert``,
``inspect``, ``train``); ``common`` and ``outputs`` hold what they share. Errors vidcore raises on purpose (and bad
arguments) print one ``error: ...`` line on stderr and exit with status 2; set ``VIDCORE_DEBUG=1`` to see the
traceback instead. Heavy imports (torch, transformers) happen inside the commands so ``vidcore --help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from ..errors import VidcoreError
from . import convert, generate, inspect, train
from .common import EXIT_INTERRUPTED, EXIT_RUNTIME, EXIT_USAGE, one_line


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="vidcore", description="Native PyTorch video diffusion: generate, "
                                     "convert, inspect and fine-tune models.")
    parser.add_argument("--version", action="version", version=f"vidcore {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    generate.add_parsers(commands)
    convert.add_parser(commands)
    inspect.add_parser(commands)
    train.add_parser(commands)

    rnd = commands.add_parser("make-random-model", help="write a random ModelScope-layout pipeline folder (offline)",
                              description="Write a randomly initialised text-to-video pipeline folder in the "
                                          "diffusers layout, to try the tool chain with no network. Its videos "
                                          "are structured noise.")
    rnd.add_argument("dst", metavar="DIR", help="folder to create (must not exist)")
    rnd.add_argument("--size", choices=("tiny", "small"), default="tiny")
    rnd.add_argument("--seed", type=int, default=0)
    rnd.set_defaults(func=_make_random_model)
    return parser


def _make_random_model(args) -> int:
    from ..tools.random_model import make_random_pipeline

    print(make_random_pipeline(args.dst, size=args.size, seed=args.seed))
    return 0


def _debug() -> bool:
    return os.environ.get("VIDCORE_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def _out_of_memory_types() -> tuple[type[BaseException], ...]:
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return (oom,) if oom is not None else ()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 runtime failure, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
        sys.stdout.flush()
        return status
    except BrokenPipeError:  # `vidcore inspect ... | head`: the reader left; stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        if _debug():
            raise
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (VidcoreError, ValueError, OSError) as err:
        if _debug():
            raise
        print(f"error: {one_line(str(err)) or type(err).__name__}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:
        if _debug() or not isinstance(err, _out_of_memory_types()):
            raise
        print("error: out of memory on the GPU; try --low-memory, --cpu-offload, --vae-slicing, --decode-chunk-size 1, "
              "fewer --frames or a smaller --height/--width", file=sys.stderr)
        return EXIT_RUNTIME


__all__ = ["build_parser", "main"]
