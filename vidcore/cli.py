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

Errors vidcore raises on purpose (and bad arguments) print one ``error: ...`` line on stderr and
exit with status 2; set ``VIDCORE_DEBUG=1`` to see the traceback instead. Heavy imports (torch,
transformers) happen inside the commands so ``vidcore --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import sys
import tempfile
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Sequence

from .errors import VidcoreError

EXIT_OK = 0
EXIT_RUNTIME = 1  # the run itself failed (out of memory)
EXIT_USAGE = 2  # bad input: arguments, missing or corrupt models (argparse uses 2 as well)
EXIT_INTERRUPTED = 130

# Tasks whose --model is optional: without it they run vidcore's built-in demo model (vidcore/demo).
DEMO_TASKS = ("text-to-video",)
# text-to-video settings left unset on the command line: (for a --model, for the demo model)
TEXT_TO_VIDEO_DEFAULTS = {"frames": (16, "num_frames"), "guidance": (9.0, "guidance_scale"), "fps": (8.0, "fps"),
                          "steps": (25, "num_inference_steps")}
IMAGE_TASKS = ("i2vgen-xl", "image-to-video")  # tasks with an --image input
PARALLEL_TASKS = ("text-to-video", "video-to-video", "i2vgen-xl", "image-to-video", "animatediff")  # --parallel (vidcore.parallel)
PARALLEL_MODES = ("cfg", "frames", "cfg+frames")

# --scheduler value -> diffusers class name understood by ``vidcore.schedulers.from_config``
SCHEDULERS = {"ddim": "DDIMScheduler", "dpm++": "DPMSolverMultistepScheduler"}
ANIMATEDIFF_SCHEDULERS = {**SCHEDULERS, "euler": "EulerDiscreteScheduler", "euler-a": "EulerAncestralDiscreteScheduler",
                          "pndm": "PNDMScheduler"}
DTYPES = ("fp32", "fp16", "bf16")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")
OUTPUT_SUFFIXES = VIDEO_SUFFIXES + (".gif",)
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")  # animatediff --model: an original SD1.5 single file
BATCH_FORMATS = ("mp4", "gif")  # --prompts --format
MANIFEST = "prompts.json"  # written into --outdir by rank 0


class UsageError(ValueError):
    """A bad combination of arguments found after parsing (printed like any other error)."""


class _OutputAction(argparse.Action):
    """Store ``-o/--output`` and record that it was given (``--prompts`` excludes it)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.output_given = True


# =========================================================================== argument parsing


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _device(text: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or mps, got {text!r}")
    return text


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` except where the default is None (the help text says what happens then)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def _add_generate_parser(tasks, task: str, help_text: str) -> argparse.ArgumentParser:
    p = tasks.add_parser(task, help=help_text, description=help_text, formatter_class=_DefaultsFormatter)
    demo = task in DEMO_TASKS
    p.add_argument("--model", required=not demo, default=None, metavar="PATH_OR_REPO",
                   help="diffusers pipeline folder (with model_index.json) or hub repo id"
                        + (", or an original SD1.5 single file (.safetensors/.ckpt; see --config-from)"
                           if task == "animatediff" else "")
                        + ("; default: the built-in demo model (32x32 px shapes, offline), e.g. "
                           "cerspense/zeroscope_v2_576w for a real one" if demo else ""))
    svd = task == "image-to-video"  # Stable Video Diffusion: no text, its own sampler and conditions
    if not svd:
        p.add_argument("--prompt", default=None, help="the text prompt (required unless --prompts is given)")
        p.add_argument("--negative-prompt", default=None)
    if task == "edit":  # Text2Video-Zero's video InstructPix2Pix; defaults are diffusers' InstructPix2Pix pipeline's
        p.add_argument("--video", required=True, help="input video file (mp4, gif, ...) or http(s) URL")
        p.add_argument("--frames", type=_positive_int, default=None,
                       help="edit at most N frames (after --frame-stride; default all)")
        p.add_argument("--frame-stride", type=_positive_int, default=1, help="keep every S-th input frame")
        p.add_argument("--height", type=_positive_int, default=None, help="resize input frames to this height")
        p.add_argument("--width", type=_positive_int, default=None, help="resize input frames to this width")
        p.add_argument("--guidance", type=float, default=7.5, help="text (instruction) guidance scale")
        p.add_argument("--image-guidance", type=float, default=1.5,
                       help="how closely to follow the input frames (guidance runs when >= 1 and --guidance > 1)")
        p.add_argument("--fps", type=_positive_float, default=None,
                       help="output frame rate (default: the input's divided by the stride, else 8)")
    elif task == "controlled":  # Text2Video-Zero + ControlNet; defaults are diffusers' ControlNet pipeline's
        p.add_argument("--control", required=True, choices=("pose", "canny"),
                       help="pose: --video's frames are pose images; canny: edges are computed from its frames")
        p.add_argument("--video", required=True, help="input video file (mp4, gif, ...) or http(s) URL")
        p.add_argument("--controlnet", default=None, metavar="PATH_OR_REPO",
                       help="ControlNet folder, file or hub repo id (lllyasviel/sd-controlnet-openpose, "
                            "lllyasviel/sd-controlnet-canny); default: --model's controlnet/")
        p.add_argument("--frames", type=_positive_int, default=None,
                       help="use at most N frames (after --frame-stride; default all)")
        p.add_argument("--frame-stride", type=_positive_int, default=1, help="keep every S-th input frame")
        p.add_argument("--height", type=_positive_int, default=None, help="resize input frames to this height")
        p.add_argument("--width", type=_positive_int, default=None, help="resize input frames to this width")
        p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
        p.add_argument("--controlnet-scale", type=float, default=1.0, help="weight of the ControlNet residuals")
        p.add_argument("--guess-mode", action="store_true", help="ControlNet on the conditional half only")
        p.add_argument("--canny-low", type=float, default=100.0, help="Canny hysteresis low threshold (0..255 scale)")
        p.add_argument("--canny-high", type=float, default=200.0, help="Canny strong-edge threshold (0..255 scale)")
        p.add_argument("--fps", type=_positive_float, default=None,
                       help="output frame rate (default: the input's divided by the stride, else 8)")
    elif task == "text2video-zero":  # defaults are diffusers' TextToVideoZeroPipeline's
        p.add_argument("--frames", type=_positive_int, default=8, help="number of frames (video_length)")
        p.add_argument("--height", type=_positive_int, default=None, help="multiple of 8 (default: the model's size)")
        p.add_argument("--width", type=_positive_int, default=None, help="multiple of 8 (default: the model's size)")
        p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
        p.add_argument("--motion-field-strength-x", type=float, default=12.0,
                       help="horizontal motion per frame, in pixels of a 512x512 grid")
        p.add_argument("--motion-field-strength-y", type=float, default=12.0,
                       help="vertical motion per frame, in pixels of a 512x512 grid")
        p.add_argument("--t0", type=int, default=44, help="step (from the end) where the first frame is copied")
        p.add_argument("--t1", type=int, default=47, help="step (from the end) the copies are noised back to; < --steps")
        p.add_argument("--fps", type=_positive_float, default=4.0, help="output frame rate")
    elif task == "video-to-video":
        p.add_argument("--video", required=True, help="input video file (mp4, gif, ...) or http(s) URL")
        p.add_argument("--strength", type=_unit_float, default=0.6,
                       help="how much to change the input: 0 keeps it, 1 ignores it")
        p.add_argument("--frames", type=_positive_int, default=None, help="use the first N input frames (default all)")
        p.add_argument("--height", type=_positive_int, default=None, help="resize input frames to this height")
        p.add_argument("--width", type=_positive_int, default=None, help="resize input frames to this width")
        p.add_argument("--guidance", type=float, default=15.0, help="classifier-free guidance scale")
        p.add_argument("--fps", type=_positive_float, default=None, help="output frame rate (default: the input's, else 8)")
    elif task == "i2vgen-xl":  # defaults are diffusers' I2VGenXLPipeline's
        p.add_argument("--image", required=True, help="image to animate: file path or http(s) URL")
        p.add_argument("--frames", type=_positive_int, default=16, help="number of frames")
        p.add_argument("--height", type=_positive_int, default=704, help="multiple of 8")
        p.add_argument("--width", type=_positive_int, default=1280, help="multiple of 8")
        p.add_argument("--guidance", type=float, default=9.0, help="classifier-free guidance scale")
        p.add_argument("--fps", type=_positive_float, default=16.0,
                       help="frame rate: the model's target_fps condition and the output's rate")
    elif svd:  # defaults are diffusers' StableVideoDiffusionPipeline's
        p.add_argument("--image", required=True, help="image to animate: file path or http(s) URL")
        p.add_argument("--num-frames", "--frames", dest="frames", type=_positive_int, default=None,
                       help="number of frames (default: the model's, 14 for SVD, 25 for SVD-XT)")
        p.add_argument("--height", type=_positive_int, default=576, help="multiple of 8")
        p.add_argument("--width", type=_positive_int, default=1024, help="multiple of 8")
        p.add_argument("--fps", type=_positive_int, default=7,
                       help="frame rate: the model's fps condition and the output's rate")
        p.add_argument("--motion-bucket-id", type=int, default=127, help="motion condition: higher moves more")
        p.add_argument("--noise-aug-strength", type=float, default=0.02, help="noise added to the input image")
        p.add_argument("--min-guidance", type=float, default=1.0, help="guidance scale of the first frame")
        p.add_argument("--max-guidance", type=float, default=3.0,
                       help="guidance scale of the last frame (classifier-free guidance runs iff > 1)")
    elif task == "animatediff":  # defaults are diffusers' AnimateDiffPipeline's
        p.add_argument("--motion-adapter", default=None, metavar="PATH_OR_REPO",
                       help="motion adapter folder, file or hub repo id (e.g. guoyww/animatediff-motion-adapter-v1-5-2); "
                            "optional when --model is a saved AnimateDiff pipeline")
        p.add_argument("--config-from", default=None, metavar="PATH_OR_REPO",
                       help="with --model an original SD1.5 single file (.safetensors/.ckpt, e.g. from civitai): the "
                            "SD1.5 pipeline folder or hub repo giving configs, tokenizer and scheduler (default: "
                            "stable-diffusion-v1-5/stable-diffusion-v1-5; no weights are downloaded)")
        p.add_argument("--frames", type=_positive_int, default=16,
                       help="number of frames; more than the adapter's motion_max_seq_length uses context windows")
        p.add_argument("--height", type=_positive_int, default=None, help="multiple of 8 (default: the model's size)")
        p.add_argument("--width", type=_positive_int, default=None, help="multiple of 8 (default: the model's size)")
        p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
        p.add_argument("--fps", type=_positive_float, default=8.0, help="output frame rate")
        p.add_argument("--context-length", type=_positive_int, default=None,
                       help="frames per sliding window for long videos (default: the adapter's motion_max_seq_length)")
        p.add_argument("--context-stride", type=_positive_int, default=None,
                       help="frames between window starts (default: context length // 4)")
        p.add_argument("--context-weighting", choices=("pyramid", "flat"), default="pyramid",
                       help="how overlapping windows are blended")
    else:  # text-to-video: unset values come from TEXT_TO_VIDEO_DEFAULTS (different for the demo model)
        p.add_argument("--frames", type=_positive_int, default=None, help="number of frames (default 16; demo model 8)")
        p.add_argument("--height", type=_positive_int, default=None, help="multiple of 8 (default: the model's size)")
        p.add_argument("--width", type=_positive_int, default=None, help="multiple of 8 (default: the model's size)")
        p.add_argument("--guidance", type=float, default=None,
                       help="classifier-free guidance scale (default 9; demo model 5)")
        p.add_argument("--fps", type=_positive_float, default=None, help="output frame rate (default 8; demo model 4)")
    p.add_argument("-o", "--output", default="output.mp4", action=_OutputAction,
                   help=f"output file, {'/'.join(OUTPUT_SUFFIXES)}; with --num-videos N: NAME_0.mp4 ... NAME_{{N-1}}.mp4")
    if not svd:
        p.add_argument("--prompts", default=None, metavar="FILE",
                       help="batch: one prompt per line (blank lines and lines starting with # are skipped), one "
                            "video each written to --outdir as NNNN_slug.FORMAT with seed --seed + N (N = the "
                            "prompt's index); under torchrun prompt N goes to rank N %% WORLD_SIZE; existing "
                            f"outputs are skipped; rank 0 writes DIR/{MANIFEST}. Excludes --prompt, -o, --parallel")
        p.add_argument("--outdir", default=None, metavar="DIR", help="output folder of --prompts")
        p.add_argument("--format", choices=BATCH_FORMATS, default=None,
                       help="file format of the --prompts videos (default: mp4)")
    p.add_argument("--steps", type=_positive_int, default=None if demo else 25, help="number of denoising steps"
                   + (" (default 25)" if demo else ""))
    p.add_argument("--seed", type=int, default=0, help="seed of the CPU torch.Generator")
    if not svd:  # SVD samples with its stored Euler (Karras sigmas, v-prediction) scheduler
        p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 is deterministic)")
        p.add_argument("--scheduler", choices=sorted(ANIMATEDIFF_SCHEDULERS if task in ("animatediff", "edit")
                                                     else SCHEDULERS),
                       default=None,
                       help="sampler (default: the one stored with the model)")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="weights dtype (default: fp16 on cuda, fp32 on cpu)")
    p.add_argument("--device", type=_device, default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--variant", default=None, help="weight file variant to load, e.g. fp16")
    p.add_argument("--cpu-offload", action="store_true",
                   help="keep models on the CPU and move each to the GPU only while it runs")
    if not svd:  # the temporal decoder decodes in frame chunks (--decode-chunk-size) instead
        p.add_argument("--vae-slicing", action="store_true", help="decode one image at a time")
    p.add_argument("--vae-tiling", action="store_true", help="decode in overlapping tiles (large sizes)")
    p.add_argument("--forward-chunking", action="store_true", help="run the UNet feed-forward layers in chunks")
    if not svd:
        p.add_argument("--freeu", type=float, nargs=4, metavar=("S1", "S2", "B1", "B2"), default=None,
                       help="enable FreeU with these factors")
    p.add_argument("--decode-chunk-size", type=_positive_int, default=None,
                   help="frames per VAE decode call" + (" (default: all; fewer saves memory)" if svd else ""))
    p.add_argument("--num-videos", type=_positive_int, default=1,
                   help="videos to generate for the " + ("image" if svd else "prompt"))
    if task in PARALLEL_TASKS:
        p.add_argument("--parallel", choices=PARALLEL_MODES, default=None,
                       help="split the denoising over the processes of a torchrun launch (torchrun "
                            "--nproc-per-node N -m vidcore.cli generate ...): cfg = guidance halves on 2 processes, "
                            "frames = a slice of frames per process, cfg+frames = both (2 x frame processes); "
                            "exact, rank 0 writes the video")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_generate, task=task, output_given=False)
    if task == "i2vgen-xl":
        p.set_defaults(steps=50, decode_chunk_size=1)
    if task == "animatediff":
        p.set_defaults(decode_chunk_size=16)
    if task in ("text2video-zero", "edit"):
        p.set_defaults(steps=50 if task == "text2video-zero" else 100)
    return p


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="vidcore", description="Native PyTorch video diffusion: generate, "
                                     "convert and inspect models.")
    parser.add_argument("--version", action="version", version=f"vidcore {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    gen = commands.add_parser("generate", help="generate a video", description="Generate a video.")
    tasks = gen.add_subparsers(dest="task", metavar="TASK", required=True)
    _add_generate_parser(tasks, "text-to-video", "text -> video (ModelScope / Zeroscope)")
    _add_generate_parser(tasks, "video-to-video", "video + text -> video (Zeroscope)")
    _add_generate_parser(tasks, "i2vgen-xl", "image + text -> video (I2VGen-XL)")
    _add_generate_parser(tasks, "image-to-video", "image -> video (Stable Video Diffusion, SVD / SVD-XT)")
    _add_generate_parser(tasks, "animatediff", "text -> video (AnimateDiff: Stable Diffusion 1.5 + motion adapter)")
    _add_generate_parser(tasks, "text2video-zero", "text -> video (Text2Video-Zero: any Stable Diffusion 1.5 model)")
    _add_generate_parser(tasks, "edit", "video + instruction -> edited video (Text2Video-Zero with InstructPix2Pix)")
    _add_generate_parser(tasks, "controlled", "pose or edge video + text -> video (Text2Video-Zero with ControlNet)")

    conv = commands.add_parser(
        "convert", help="convert a model between the diffusers layout and vidcore's native file",
        description="diffusers model folder (or pipeline folder + --subfolder) or original single file (AnimateDiff "
                    "motion module, Stable Diffusion LDM + --component, SVD sgm, ModelScope, I2VGen-XL) -> vidcore "
                    "native .safetensors file, or native file -> diffusers model folder. Writes atomically.")
    conv.add_argument("src", metavar="SRC", help="diffusers model folder, pipeline folder, native file, original "
                                                 "single file (.ckpt/.pth/.safetensors), or hub repo id")
    conv.add_argument("dst", metavar="DST", help="output: a .safetensors file (vidcore) or a folder (diffusers)")
    conv.add_argument("--to", choices=("vidcore", "diffusers"), default=None,
                      help="output format (default: the opposite of SRC's)")
    conv.add_argument("--subfolder", default=None, help="component of a pipeline folder, e.g. unet or vae")
    conv.add_argument("--component", choices=("unet", "vae"), default=None,
                      help="model to take from an original file holding several (Stable Diffusion LDM / civitai, "
                           "Stable Video Diffusion sgm); default unet")
    conv.add_argument("--config-from", default=None, metavar="PATH_OR_REPO",
                      help="config for an original single file (a diffusers model or pipeline folder, config.json "
                           "or hub repo); default: the released model's (motion modules: read from the keys)")
    conv.add_argument("--dtype", choices=DTYPES, default=None, help="cast the weights (default: keep SRC's dtype)")
    conv.add_argument("--variant", default=None, help="SRC weight file variant to read, e.g. fp16")
    conv.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    conv.set_defaults(func=cmd_convert)

    insp = commands.add_parser("inspect", help="show what a model or pipeline folder contains",
                               description="Show architecture, format, parameters, dtypes, files and the "
                                           "key conversion of a model (or of each model of a pipeline).")
    insp.add_argument("path", metavar="PATH", help="model folder, pipeline folder, native file or hub repo id")
    insp.add_argument("--subfolder", default=None, help="component of a pipeline folder, e.g. unet")
    insp.add_argument("--variant", default=None, help="weight file variant, e.g. fp16")
    insp.set_defaults(func=cmd_inspect)

    rnd = commands.add_parser("make-random-model", help="write a random ModelScope-layout pipeline folder (offline)",
                              description="Write a randomly initialised text-to-video pipeline folder in the "
                                          "diffusers layout, to try the tool chain with no network. Its videos "
                                          "are structured noise.")
    rnd.add_argument("dst", metavar="DIR", help="folder to create (must not exist)")
    rnd.add_argument("--size", choices=("tiny", "small"), default="tiny")
    rnd.add_argument("--seed", type=int, default=0)
    rnd.set_defaults(func=cmd_make_random_model)
    return parser


def cmd_make_random_model(args) -> int:
    from .tools.random_model import make_random_pipeline

    print(make_random_pipeline(args.dst, size=args.size, seed=args.seed))
    return 0


# =========================================================================== helpers


def _torch_dtype(name: str | None):
    from . import hub

    return hub.parse_dtype(name)


def _resolve_device(requested: str | None) -> str:
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {requested}: no CUDA GPU is available here (use --device cpu)")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: MPS is not available here (use --device cpu)")
    return requested


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _millions(n: int) -> str:
    return f"{n / 1e6:,.1f} M"


_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}  # fmt: skip
_FLOAT_NAMES = ("float64", "float32", "float16", "bfloat16")


def _safetensors_dtypes(path: Path) -> Counter:
    """dtype name -> tensor count, read from the file header only (no tensor data)."""
    from .errors import CheckpointError

    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(100_000_000, os.path.getsize(path) - 8):
                raise ValueError(f"header length {n} exceeds the file")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as err:
        raise CheckpointError(f"{path}: cannot read the safetensors header ({err})") from err
    return Counter(_SAFETENSORS_DTYPES.get(v["dtype"], v["dtype"]) for k, v in header.items() if k != "__metadata__")


def file_dtypes(files: Sequence[Path]) -> Counter:
    """dtype name -> number of tensors over ``files`` (safetensors: header only; pickles: safe load)."""
    from . import hub

    counts: Counter = Counter()
    for path in files:
        if path.suffix == ".safetensors":
            counts += _safetensors_dtypes(path)
        else:
            counts += Counter(str(t.dtype).removeprefix("torch.") for t in hub.load_state_dict(path).values())
    return counts


def _dominant_float_dtype(counts: Counter):
    """The floating dtype most tensors have (a module holds one), as a torch.dtype; float32 if none."""
    import torch

    floats = [(n, name) for name, n in counts.items() if name in _FLOAT_NAMES]
    return getattr(torch, max(floats)[1]) if floats else torch.float32


def _format_dtypes(counts: Counter) -> str:
    return ", ".join(f"{name} ({n} tensors)" for name, n in counts.most_common())


def _one_line(message: str) -> str:
    """Multi-line messages (conversion reports) -> one line: sections joined by '; ', items by ', '."""
    sections: list[str] = []
    for line in str(message).splitlines():
        if not line.strip():
            continue
        if line[:1].isspace() and sections:
            sep = " " if sections[-1].endswith(":") else ", "
            sections[-1] += sep + line.strip()
        else:
            sections.append(line.strip())
    return "; ".join(sections).replace(":;", ":")


def _quiet_library_progress() -> None:
    """Hide the weight-loading / download bars of transformers and huggingface_hub (for --no-progress)."""
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


# =========================================================================== generate


def _output_paths(output: str, count: int) -> list[Path]:
    path = Path(output)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(f"-o/--output must end with one of {', '.join(OUTPUT_SUFFIXES)}, got {output!r}")
    if path.exists() and path.is_dir():
        raise UsageError(f"-o/--output {output!r} is a directory; give a file name such as {path / 'video.mp4'}")
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(count)]


def _write_video(frames, path: Path, fps: float) -> str:
    from .io import export_to_gif, export_to_video

    if path.suffix.lower() == ".gif":
        return export_to_gif(frames, path, fps=fps)
    return export_to_video(frames, path, fps=fps)


def _slug(prompt: str, max_length: int = 48) -> str:
    """Filename-safe slug: ASCII letters and digits in lower case, other runs -> '-' ('prompt' if none)."""
    text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    return slug[:max_length].rstrip("-") or "prompt"


def _read_prompts(path: str) -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--prompts {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--prompts {path}: cannot read it ({err})") from None
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [line for line in prompts if line and not line.startswith("#")]
    if not prompts:
        raise UsageError(f"--prompts {path}: no prompts (blank lines and lines starting with # are skipped)")
    return prompts


def _rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the world size from torchrun's environment; (0, 1) without torchrun."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UsageError(f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}: "
                         "expected integers") from None
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"RANK={rank} / WORLD_SIZE={world}: expected 0 <= RANK < WORLD_SIZE")
    return rank, world


def _batch_jobs(args) -> list[dict]:
    """``--prompts``: check the arguments and return every prompt's job (index, prompt, seed, path)."""
    if args.prompt is not None:
        raise UsageError("--prompts and --prompt exclude each other; put the prompt in the --prompts file")
    if args.output_given:
        raise UsageError("--prompts writes into --outdir; drop -o/--output")
    if getattr(args, "parallel", None) is not None:
        raise UsageError("--prompts spreads the prompts over the torchrun processes, one whole video each; "
                         "drop --parallel")
    if args.num_videos != 1:
        raise UsageError("--prompts writes one video per prompt; drop --num-videos")
    if args.outdir is None:
        raise UsageError("--prompts needs --outdir DIR")
    outdir = Path(args.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"--outdir {args.outdir!r} is not a directory")
    prompts = _read_prompts(args.prompts)
    width = max(4, len(str(len(prompts) - 1)))
    suffix = args.format or BATCH_FORMATS[0]
    return [dict(index=i, prompt=prompt, seed=args.seed + i, path=outdir / f"{i:0{width}d}_{_slug(prompt)}.{suffix}")
            for i, prompt in enumerate(prompts)]


def _write_manifest(jobs: list[dict], outdir: Path) -> None:
    """``DIR/prompts.json``: index, prompt, seed and file name of every prompt (written atomically)."""
    entries = [dict(index=j["index"], prompt=j["prompt"], seed=j["seed"], file=j["path"].name) for j in jobs]
    outdir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=outdir, prefix=f".{MANIFEST}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=1, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, outdir / MANIFEST)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_input_video(args) -> tuple[list, float | None]:
    from .io import load_video

    frames, fps = load_video(args.video, return_fps=True)
    stride = getattr(args, "frame_stride", 1)
    if stride > 1:
        frames, fps = frames[::stride], (fps / stride if fps else fps)
    if args.frames is not None:
        if args.frames > len(frames):
            raise UsageError(f"--frames {args.frames}: the input video has only {len(frames)} frames"
                             + (f" at --frame-stride {stride}" if stride > 1 else ""))
        frames = frames[: args.frames]
    if args.height is not None or args.width is not None:
        w, h = frames[0].size
        size = (args.width or w, args.height or h)
        if size != (w, h):
            import PIL.Image

            frames = [f.resize(size, PIL.Image.Resampling.LANCZOS) for f in frames]
    return frames, fps


def _load_input_image(args):
    from .io import load_image

    return load_image(args.image)


def _configure_pipeline(pipe, args, device: str) -> None:
    if getattr(args, "scheduler", None) is not None:
        from .schedulers import from_config

        name = ANIMATEDIFF_SCHEDULERS[args.scheduler]
        pipe.scheduler = from_config(pipe.scheduler.to_diffusers_config() | {"_class_name": name})
    if getattr(args, "vae_slicing", False):
        pipe.vae.enable_slicing()
    if args.vae_tiling:
        pipe.vae.enable_tiling()
    if args.forward_chunking:
        pipe.unet.enable_forward_chunking()
    if getattr(args, "freeu", None) is not None:
        pipe.unet.enable_freeu(*args.freeu)
    if args.cpu_offload:
        pipe.enable_model_cpu_offload(device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=args.no_progress)


def _enable_parallel(pipe, args, num_frames: int) -> None:
    """``--parallel``: process groups from torchrun's environment; input errors before any work."""
    mode = args.parallel
    if "WORLD_SIZE" not in os.environ:
        raise UsageError(f"--parallel {mode} runs under torchrun: torchrun --nproc-per-node N -m vidcore.cli "
                         f"generate {args.task} ... --parallel {mode}")
    flag, guidance = ("--max-guidance", args.max_guidance) if args.task == "image-to-video" else ("--guidance", args.guidance)
    if "cfg" in mode and guidance <= 1.0:
        raise UsageError(f"--parallel {mode} splits classifier-free guidance; it needs {flag} > 1, got {guidance}")
    try:
        pipe.enable_parallel(cfg="cfg" in mode, frames="frames" in mode)
        pipe.parallel.check(num_frames)
    except ValueError as err:
        raise UsageError(f"--parallel {mode}: {err}") from None
    if pipe.parallel.config.rank != 0:
        pipe.set_progress_bar_config(disable=True)


def _text_to_video_defaults(args) -> str:
    """The model to load; fills the settings left unset (the demo model has its own, see vidcore.demo)."""
    from .demo import DEFAULTS as DEMO, demo_model_path

    model = args.model
    if model is None:
        try:
            model = str(demo_model_path())
        except VidcoreError as err:
            raise UsageError(str(err)) from None
        print(f"no --model given: using vidcore's built-in demo model ({DEMO['height']}x{DEMO['width']} px, "
              f"{DEMO['num_frames']} frames, colored shapes moving left/right/up/down); pass --model "
              f"cerspense/zeroscope_v2_576w (or any hub id or folder) for a real model")
    for name, (default, demo_key) in TEXT_TO_VIDEO_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, DEMO[demo_key] if args.model is None else default)
    return model


def cmd_generate(args) -> int:
    model = args.model
    if args.task in DEMO_TASKS:
        model = _text_to_video_defaults(args)
    batch = getattr(args, "prompts", None) is not None
    if batch:  # one video per prompt; the prompts are spread over torchrun's processes (no process group)
        jobs = _batch_jobs(args)
        rank, world = _rank_and_world_size()
        todo = []
        for job in jobs[rank::world]:
            if job["path"].exists():
                print(f"skipped {job['path']} (exists)")
            else:
                todo.append(job)
        runs = [(job["prompt"], job["seed"], [job["path"]]) for job in todo]
    else:
        if args.task != "image-to-video" and args.prompt is None:
            raise UsageError(f"generate {args.task}: --prompt is required (or --prompts FILE --outdir DIR)")
        for flag in ("outdir", "format"):
            if getattr(args, flag, None) is not None:
                raise UsageError(f"--{flag} applies to --prompts; with --prompt, -o names the output file")
        runs = [(getattr(args, "prompt", None), args.seed, _output_paths(args.output, args.num_videos))]
    device = _resolve_device(args.device)
    parallel = getattr(args, "parallel", None)
    if parallel is not None and args.cpu_offload:
        raise UsageError("--parallel keeps every model on its process's device; drop --cpu-offload")
    if (parallel is not None or batch and "WORLD_SIZE" in os.environ) and device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"  # one GPU per torchrun process
    if args.cpu_offload and not device.startswith("cuda"):
        raise UsageError("--cpu-offload moves models to a GPU while they run; it needs --device cuda")
    dtype_name = args.dtype or ("fp16" if device.startswith("cuda") else "fp32")
    video_task = args.task in ("video-to-video", "edit", "controlled")
    video, input_fps = _load_input_video(args) if video_task else (None, None)
    image = _load_input_image(args) if args.task in IMAGE_TASKS else None
    if batch:
        if rank == 0:
            _write_manifest(jobs, Path(args.outdir))
        if not runs:  # this process's share is done (or empty): no model to load
            return EXIT_OK
    if args.no_progress:
        _quiet_library_progress()

    import torch

    from .pipelines.animatediff import AnimateDiffPipeline
    from .pipelines.controlled_video import ControlledVideoPipeline
    from .pipelines.i2vgen_xl import I2VGenXLPipeline
    from .pipelines.stable_video_diffusion import StableVideoDiffusionPipeline
    from .pipelines.text2video_zero import TextToVideoZeroPipeline
    from .pipelines.text_to_video import TextToVideoPipeline
    from .pipelines.video_instruct_pix2pix import VideoInstructPix2PixPipeline
    from .pipelines.video_to_video import VideoToVideoPipeline

    cls = {"video-to-video": VideoToVideoPipeline, "i2vgen-xl": I2VGenXLPipeline,
           "image-to-video": StableVideoDiffusionPipeline, "text2video-zero": TextToVideoZeroPipeline,
           "edit": VideoInstructPix2PixPipeline}.get(args.task, TextToVideoPipeline)
    if args.task == "animatediff" and Path(model).suffix in SINGLE_FILE_SUFFIXES:
        kwargs = {} if args.config_from is None else {"config_from": args.config_from}
        pipe = AnimateDiffPipeline.from_single_file(model, motion_adapter=args.motion_adapter,
                                                    torch_dtype=_torch_dtype(dtype_name), variant=args.variant,
                                                    **kwargs)
    elif args.task == "animatediff":
        if args.config_from is not None:
            raise UsageError(f"--config-from applies to a single-file --model ({'/'.join(SINGLE_FILE_SUFFIXES)}); "
                             f"'{model}' is a pipeline folder or repo")
        pipe = AnimateDiffPipeline.from_pretrained(model, motion_adapter=args.motion_adapter,
                                                   torch_dtype=_torch_dtype(dtype_name), variant=args.variant)
    elif args.task == "controlled":
        pipe = ControlledVideoPipeline.from_pretrained(model, controlnet=args.controlnet,
                                                       torch_dtype=_torch_dtype(dtype_name), variant=args.variant)
    else:
        pipe = cls.from_pretrained(model, torch_dtype=_torch_dtype(dtype_name), variant=args.variant)
    _configure_pipeline(pipe, args, device)
    if parallel is not None:
        _enable_parallel(pipe, args, len(video) if video is not None else args.frames or pipe.unet.config.num_frames)

    call = dict(num_inference_steps=args.steps, output_type="np", num_videos_per_prompt=args.num_videos,
                decode_chunk_size=args.decode_chunk_size)
    if args.task != "image-to-video":
        call.update(negative_prompt=args.negative_prompt, guidance_scale=args.guidance, eta=args.eta)
    if args.task == "image-to-video":
        call.update(image=image, height=args.height, width=args.width, num_frames=args.frames, fps=args.fps,
                    motion_bucket_id=args.motion_bucket_id, noise_aug_strength=args.noise_aug_strength,
                    min_guidance_scale=args.min_guidance, max_guidance_scale=args.max_guidance)
        fps = args.fps
    elif args.task == "video-to-video":
        call.update(video=video, strength=args.strength)
        fps = args.fps or input_fps or 8.0
    elif args.task == "i2vgen-xl":
        target_fps = int(args.fps) if float(args.fps).is_integer() else args.fps  # the model saw integer rates
        call.update(image=image, height=args.height, width=args.width, num_frames=args.frames, target_fps=target_fps)
        fps = args.fps
    elif args.task == "text2video-zero":
        call.update(height=args.height, width=args.width, video_length=args.frames, t0=args.t0, t1=args.t1,
                    motion_field_strength_x=args.motion_field_strength_x,
                    motion_field_strength_y=args.motion_field_strength_y)
        fps = args.fps
    elif args.task == "controlled":
        from .controls import canny

        control = canny(video, args.canny_low, args.canny_high) if args.control == "canny" else video
        call.update(conditioning_frames=control, controlnet_conditioning_scale=args.controlnet_scale,
                    guess_mode=args.guess_mode)
        fps = args.fps or input_fps or 8.0
    elif args.task == "edit":
        call.update(video=video, image_guidance_scale=args.image_guidance)
        fps = args.fps or input_fps or 8.0
    elif args.task == "animatediff":
        call.update(height=args.height, width=args.width, num_frames=args.frames, context_length=args.context_length,
                    context_stride=args.context_stride, context_weighting=args.context_weighting)
        fps = args.fps
    else:
        call.update(height=args.height, width=args.width, num_frames=args.frames)
        fps = args.fps
    for prompt, seed, outputs in runs:
        call["generator"] = torch.Generator("cpu").manual_seed(seed)
        if args.task != "image-to-video":
            call["prompt"] = prompt
        frames = pipe(**call).frames  # b f h w 3 in [0, 1]; None on processes other than rank 0 (--parallel)
        for video_frames, path in zip(frames if frames is not None else (), outputs):
            print(_write_video(video_frames, path, fps))  # atomic: a temporary sibling, then os.replace
    if parallel is not None:
        torch.distributed.destroy_process_group()
    return EXIT_OK


# =========================================================================== convert


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _check_destination(dst: Path, to: str, force: bool) -> None:
    if to == "vidcore" and dst.suffix != ".safetensors":
        raise UsageError(f"DST for --to vidcore is one file and must end with .safetensors, got '{dst}'")
    if dst.exists() or dst.is_symlink():
        if not force:
            raise UsageError(f"'{dst}' already exists; pass --force to overwrite it")
        if to == "vidcore" and dst.is_dir():
            raise UsageError(f"'{dst}' is a directory; --to vidcore writes a single .safetensors file")


def _replace_folder(tmp: Path, dst: Path) -> None:
    """Move the finished folder ``tmp`` to ``dst``; an existing ``dst`` is removed only once ``tmp`` is in place."""
    backup = None
    if dst.exists() or dst.is_symlink():
        backup = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, backup)
    try:
        os.replace(tmp, dst)
    except BaseException:
        if backup is not None:
            os.replace(backup, dst)
        raise
    if backup is not None:
        if backup.is_dir() and not backup.is_symlink():
            shutil.rmtree(backup, ignore_errors=True)
        else:
            backup.unlink(missing_ok=True)


def _save_diffusers_atomic(module, dst: Path, config: dict) -> Path:
    from .loading import save_diffusers

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result should look like a normal folder
    try:
        save_diffusers(module, tmp, diffusers_config=config)
        _replace_folder(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dst


def _written_files(dst: Path) -> list[Path]:
    return [dst] if dst.is_file() else sorted(p for p in dst.iterdir() if p.suffix == ".safetensors")


def cmd_convert(args) -> int:
    from .loading import load_model_with_info, save_native

    src, dst = args.src, Path(args.dst)
    if args.to is not None:  # check before the (slow) load when we already know the format
        _check_destination(dst, args.to, args.force)
    module, info = load_model_with_info(src, subfolder=args.subfolder, variant=args.variant,
                                        config_from=args.config_from, component=args.component)
    if args.config_from is not None and info.source_format != "original":
        raise UsageError(f"--config-from applies to original single files; '{src}' is a {info.source_format} "
                         "checkpoint with its own config")
    to = args.to or ("diffusers" if info.source_format == "vidcore" else "vidcore")
    _check_destination(dst, to, args.force)
    if any(_same_path(dst, f) or _same_path(dst, f.parent) for f in info.files):
        raise UsageError(f"DST '{dst}' is the source itself; write to another path")

    # load_model_with_info hands back float32 unless told otherwise; casting back to the source's own
    # dtype is exact (fp16/bf16 -> fp32 -> fp16/bf16), so without --dtype the tensors are bit-identical.
    dtype = _torch_dtype(args.dtype) if args.dtype else _dominant_float_dtype(file_dtypes(info.files))
    module = module.to(dtype)
    if to == "vidcore":
        save_native(module, dst, diffusers_config=info.diffusers_config)
    else:
        _save_diffusers_atomic(module, dst, info.diffusers_config)
    tensors = sum(file_dtypes(_written_files(dst)).values())
    size = sum(f.stat().st_size for f in _written_files(dst))
    print(f"converted {info.architecture} {info.source_format} -> {to}: {tensors} tensors, "
          f"{str(dtype).removeprefix('torch.')}, {_human_bytes(size)} -> {dst}")
    return EXIT_OK


# =========================================================================== inspect


def _describe_model(path, subfolder: str | None, variant: str | None, indent: str = "") -> list[str]:
    from .loading import BY_NAME, load_model_with_info

    module, info = load_model_with_info(path, subfolder=subfolder, variant=variant)
    params = sum(p.numel() for p in module.parameters())
    arch = BY_NAME[info.architecture]
    files = [(f, f.stat().st_size) for f in info.files]
    lines = [
        f"architecture:  {info.architecture} (diffusers class {arch.diffusers_class})",
        f"format:        {info.source_format}",
        f"parameters:    {_millions(params)}",
        f"dtypes:        {_format_dtypes(file_dtypes(info.files))}",
        f"files:         {len(files)}, {_human_bytes(sum(s for _, s in files))}",
    ]
    lines += [f"  {f}  {_human_bytes(s)}" for f, s in files]
    if info.report is None:
        lines.append("conversion:    none (native file: keys and shapes match the module as stored)")
    else:
        summary = info.report.summary().splitlines()
        lines.append(f"conversion:    {summary[0]}")
        lines += summary[1:]  # "  count  rule" lines
    return [indent + line for line in lines]


def _pipeline_components(root: Path) -> tuple[str | None, dict[str, list]]:
    index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
    comps = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list)}
    return index.get("_class_name"), comps


def _loadable_component(folder: Path) -> bool:
    from .loading import BY_DIFFUSERS

    config = folder / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("_class_name") in BY_DIFFUSERS
    except (OSError, ValueError, AttributeError):
        return False


def cmd_inspect(args) -> int:
    from . import hub

    root = hub.resolve(args.path)
    if args.subfolder or root.is_file() or not (root / "model_index.json").is_file():
        print(f"path:          {root / args.subfolder if args.subfolder else root}")
        print("\n".join(_describe_model(root, args.subfolder, args.variant)))
        return EXIT_OK

    class_name, comps = _pipeline_components(root)
    print(f"pipeline:      {class_name or '?'} ({root})")
    status = EXIT_OK
    others = []
    for name, spec in comps.items():
        library, cls = (spec + [None, None])[:2]
        if cls is None:
            others.append(f"  {name}: (none)")
        elif _loadable_component(root / name):
            print(f"[{name}]  {library}.{cls}")
            try:
                print("\n".join(_describe_model(root, name, args.variant, indent="  ")))
            except VidcoreError as err:  # report a broken component, go on with the others
                print(f"  error: {_one_line(err)}")
                status = EXIT_USAGE
        else:
            others.append(f"  {name}: {library}.{cls}")
    if others:
        print("other components:")
        print("\n".join(others))
    return status


# =========================================================================== main


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
        print(f"error: {_one_line(str(err)) or type(err).__name__}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:
        if _debug() or not isinstance(err, _out_of_memory_types()):
            raise
        print("error: out of memory on the GPU; try --cpu-offload, --vae-slicing, --decode-chunk-size 1, "
              "fewer --frames or a smaller --height/--width", file=sys.stderr)
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
