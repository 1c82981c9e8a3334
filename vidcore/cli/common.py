"""What every command shares: exit statuses, the usage error, argparse value types, the help formatter,
device/dtype resolution, weight-file dtype counts and one-line error messages."""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
from collections import Counter
from pathlib import Path
from typing import Sequence

EXIT_OK = 0
EXIT_RUNTIME = 1  # the run itself failed (out of memory)
EXIT_USAGE = 2  # bad input: arguments, missing or corrupt models (argparse uses 2 as well)
EXIT_INTERRUPTED = 130

DTYPES = ("fp32", "fp16", "bf16")


class UsageError(ValueError):
    """A bad combination of arguments found after parsing (printed like any other error)."""


# --------------------------------------------------------------------------- argparse value types


def _number(convert, ok, expected: str):
    """An argparse ``type=``: ``convert`` the text, then require ``ok(value)``; errors say ``expected``."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
unit_float = _number(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
positive_float = _number(float, lambda v: v > 0, "a positive number")


def chunk_size(text: str):
    """``--decode-chunk-size``: a positive integer, or "auto" (sized from the memory budget)."""
    return "auto" if text == "auto" else _number(int, lambda v: v >= 1, "a positive integer or auto")(text)


def memory_size(text: str) -> int:
    """``--max-memory``: bytes, or a size such as 2GB / 512MiB."""
    from ..sampling.memory import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def device_name(text: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or mps, got {text!r}")
    return text


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` except where the default is None (the help text says what happens then)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


# --------------------------------------------------------------------------- devices and dtypes


def torch_dtype(name: str | None):
    from .. import hub

    return hub.parse_dtype(name)


def resolve_device(requested: str | None) -> str:
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {requested}: no CUDA GPU is available here (use --device cpu)")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: MPS is not available here (use --device cpu)")
    return requested


_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}  # fmt: skip
_FLOAT_NAMES = ("float64", "float32", "float16", "bfloat16")


def _safetensors_dtypes(path: Path) -> Counter:
    """dtype name -> tensor count, read from the file header only (no tensor data)."""
    from ..errors import CheckpointError

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
    from .. import hub

    counts: Counter = Counter()
    for path in files:
        if path.suffix == ".safetensors":
            counts += _safetensors_dtypes(path)
        else:
            counts += Counter(str(t.dtype).removeprefix("torch.") for t in hub.load_state_dict(path).values())
    return counts


def dominant_float_dtype(counts: Counter):
    """The floating dtype most tensors have (a module holds one), as a torch.dtype; float32 if none."""
    import torch

    floats = [(n, name) for name, n in counts.items() if name in _FLOAT_NAMES]
    return getattr(torch, max(floats)[1]) if floats else torch.float32


# --------------------------------------------------------------------------- messages


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def one_line(message: str) -> str:
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


def quiet_library_progress() -> None:
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
