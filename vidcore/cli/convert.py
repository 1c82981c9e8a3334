"""``vidcore convert SRC DST``: diffusers folder or original single file -> vidcore's native file, or back to a
diffusers folder. Writes atomically (a temporary sibling, then a rename) and never overwrites without --force."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .common import DTYPES, EXIT_OK, UsageError, dominant_float_dtype, file_dtypes, human_bytes, torch_dtype


def add_parser(commands) -> None:
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
    conv.set_defaults(func=run)


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
    from ..loading import save_diffusers

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


def run(args) -> int:
    from ..loading import load_model_with_info, save_native

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
    dtype = torch_dtype(args.dtype) if args.dtype else dominant_float_dtype(file_dtypes(info.files))
    module = module.to(dtype)
    if to == "vidcore":
        save_native(module, dst, diffusers_config=info.diffusers_config)
    else:
        _save_diffusers_atomic(module, dst, info.diffusers_config)
    tensors = sum(file_dtypes(_written_files(dst)).values())
    size = sum(f.stat().st_size for f in _written_files(dst))
    print(f"converted {info.architecture} {info.source_format} -> {to}: {tensors} tensors, "
          f"{str(dtype).removeprefix('torch.')}, {human_bytes(size)} -> {dst}")
    return EXIT_OK
