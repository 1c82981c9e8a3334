"""``--free-noise [CONTEXT_LENGTH]`` and ``--prompt-schedule FILE`` of ``vidcore generate`` (FreeNoise and prompt
travel, :mod:`vidcore.sampling.free_noise`), for the tasks whose pipelines have FreeNoise
(``Task.supports("free_noise")``)."""

from __future__ import annotations

from pathlib import Path

from .aliases import Options
from .common import UsageError, positive_int

AUTO_LENGTH = 0  # --free-noise without a number: the model's frame-position limit, else 16


def add_options(o: Options, text: bool) -> None:
    from ..sampling.free_noise import NOISE_TYPES, WEIGHTING_SCHEMES

    o.add("--free-noise", type=positive_int, nargs="?", const=AUTO_LENGTH, default=None, metavar="CONTEXT_LENGTH",
          help="FreeNoise for videos longer than the model's clips: the temporal attention runs on windows of "
               "CONTEXT_LENGTH frames (default: the motion adapter's motion_max_seq_length, else 16) and the "
               "initial noise is rescheduled")
    o.add("--free-noise-stride", type=positive_int, default=4, help="with --free-noise: frames between window starts")
    o.add("--free-noise-weighting", choices=WEIGHTING_SCHEMES, default="pyramid",
          help="with --free-noise: how overlapping windows are blended")
    o.add("--free-noise-noise", choices=NOISE_TYPES, default="shuffle_context",
          help="with --free-noise: the initial noise of later frames")
    if text:
        o.add("--prompt-schedule", default=None, metavar="FILE",
              help="prompt travel (needs --free-noise): lines 'FRAME: PROMPT' with increasing frames from 0, "
                   "the text embeddings interpolated between them (blank lines and # comments are skipped); "
                   "replaces --prompt")


def read_prompt_schedule(path: str | Path, num_frames: int) -> dict[int, str]:
    """``{frame: prompt}`` from a file of ``frame: prompt`` lines, or a UsageError naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UsageError(f"--prompt-schedule {path}: cannot read it ({err.strerror or err})") from None
    schedule: dict[int, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"--prompt-schedule {path} line {number}"
        frame, sep, prompt = line.partition(":")
        try:
            index = int(frame.strip())
        except ValueError:
            index = None
        if not sep or index is None:
            raise UsageError(f"{where}: expected 'FRAME: PROMPT' with an integer frame, got {line!r}")
        prompt = prompt.strip()
        if not prompt:
            raise UsageError(f"{where}: frame {index} has an empty prompt")
        if not 0 <= index < num_frames:
            raise UsageError(f"{where}: frame {index} is out of range for {num_frames} frames (0..{num_frames - 1})")
        if schedule and index <= max(schedule):
            kind = "duplicate" if index in schedule else "unsorted"
            raise UsageError(f"{where}: {kind} frame {index} (frames must increase; the previous one is "
                             f"{max(schedule)})")
        schedule[index] = prompt
    if not schedule:
        raise UsageError(f"--prompt-schedule {path}: no 'FRAME: PROMPT' lines")
    if 0 not in schedule:
        raise UsageError(f"--prompt-schedule {path}: the first entry must be frame 0, got frame {min(schedule)}")
    return schedule


def check_arguments(args) -> None:
    """Combinations the flags cannot express, before any model is loaded."""
    schedule = getattr(args, "prompt_schedule", None)
    if args.free_noise is None:
        used = [flag for flag, value, default in (("--free-noise-stride", args.free_noise_stride, 4),
                                                   ("--free-noise-weighting", args.free_noise_weighting, "pyramid"),
                                                   ("--free-noise-noise", args.free_noise_noise, "shuffle_context"))
                if value != default]
        if schedule is not None:
            used.insert(0, "--prompt-schedule")
        if used:
            raise UsageError(f"{used[0]} needs --free-noise [CONTEXT_LENGTH]")
        return
    if getattr(args, "context_length", None) is not None or getattr(args, "context_stride", None) is not None:
        raise UsageError("--free-noise and --context-length/--context-stride exclude each other (FreeNoise windows "
                         "the motion modules; --context-length windows the whole UNet)")
    if schedule is not None:
        if getattr(args, "prompt", None) is not None:
            raise UsageError("--prompt-schedule replaces --prompt; pass one of them")
        if getattr(args, "prompts", None) is not None:
            raise UsageError("--prompt-schedule and --prompts exclude each other")


def enable(pipe, args) -> None:
    """``pipe.enable_free_noise`` with the flags' values (a bad value is reported under its flag)."""
    if args.free_noise is None:
        return
    try:
        pipe.enable_free_noise(context_length=args.free_noise or None, context_stride=args.free_noise_stride,
                               weighting_scheme=args.free_noise_weighting, noise_type=args.free_noise_noise)
    except ValueError as err:
        flag = "--free-noise-stride" if "context_stride" in str(err) else "--free-noise"
        raise UsageError(f"{flag}: {err}") from None
