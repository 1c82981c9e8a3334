"""Files in and out of ``vidcore generate``: output names, video writing, the ``--prompts`` batch jobs and
their manifest, and the input video / image."""

from __future__ import annotations

import json
import os
import re
import tempfile
import unicodedata
from pathlib import Path

from .common import UsageError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")
OUTPUT_SUFFIXES = VIDEO_SUFFIXES + (".gif",)
BATCH_FORMATS = ("mp4", "gif")  # --prompts --format
MANIFEST = "prompts.json"  # written into --outdir by rank 0


def output_paths(output: str, count: int) -> list[Path]:
    path = Path(output)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(f"-o/--output must end with one of {', '.join(OUTPUT_SUFFIXES)}, got {output!r}")
    if path.exists() and path.is_dir():
        raise UsageError(f"-o/--output {output!r} is a directory; give a file name such as {path / 'video.mp4'}")
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(count)]


def write_video(frames, path: Path, fps: float) -> str:
    from ..io import export_to_gif, export_to_video

    if path.suffix.lower() == ".gif":
        return export_to_gif(frames, path, fps=fps)
    return export_to_video(frames, path, fps=fps)


def slug(prompt: str, max_length: int = 48) -> str:
    """Filename-safe slug: ASCII letters and digits in lower case, other runs -> '-' ('prompt' if none)."""
    text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii").lower()
    text = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    return text[:max_length].rstrip("-") or "prompt"


def read_prompts(path: str) -> list[str]:
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


def rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the world size from torchrun's environment; (0, 1) without torchrun."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UsageError(f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}: "
                         "expected integers") from None
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"RANK={rank} / WORLD_SIZE={world}: expected 0 <= RANK < WORLD_SIZE")
    return rank, world


def batch_jobs(args) -> list[dict]:
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
    prompts = read_prompts(args.prompts)
    width = max(4, len(str(len(prompts) - 1)))
    suffix = args.format or BATCH_FORMATS[0]
    return [dict(index=i, prompt=prompt, seed=args.seed + i, path=outdir / f"{i:0{width}d}_{slug(prompt)}.{suffix}")
            for i, prompt in enumerate(prompts)]


def write_manifest(jobs: list[dict], outdir: Path) -> None:
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


def load_input_video(args) -> tuple[list, float | None]:
    """``--video`` as PIL frames (after ``--frame-stride``, ``--frames``, ``--height/--width``) and its rate."""
    from ..io import load_video

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


def load_input_image(args):
    from ..io import load_image

    return load_image(args.image)
