"""The trainer's own checkpoints: everything a resumed run needs to continue bit for bit.

``OUTPUT/checkpoints/step_000100/`` holds

- ``trainer_state.pt``: the LoRA branches' raw parameters (by vidcore module name: ``lora_state_dict`` would
  premultiply B by alpha / rank, not exactly invertible in floating point), the optimizer (and fp16 grad
  scaler) state, the EMA weights, the step, the loss log, the data order (epoch permutation and position), the
  RNG states of every process (torch CPU, CUDA when present, Python's ``random``) and the config it ran with;
- ``pytorch_lora_weights.safetensors``: the LoRA at that step in the peft layout, to try it while training runs.

A checkpoint is written into a hidden temporary folder beside it and renamed into place, so a run killed
mid-write leaves the previous checkpoints and no partial one; ``latest_checkpoint`` ignores anything else.
The state is read back with ``torch.load(weights_only=True)`` (design principle 6): it holds only tensors,
numbers, strings, lists, tuples and dicts.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import CheckpointError

STATE_FILE = "trainer_state.pt"
_NAME = re.compile(r"step_(\d+)")


def checkpoint_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under ``output_dir``, oldest first."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        m = _NAME.fullmatch(path.name)
        if m and (path / STATE_FILE).is_file():
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def capture_rng() -> dict:
    """This process's random states (the global generators LoRA dropout and user code draw from)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: Path, step: int, state: dict, write_lora: Callable[[Path], object],
                    keep: int | None = None) -> Path:
    """Write checkpoint ``step`` atomically (temporary folder, then rename); ``write_lora(path)`` adds the peft
    file. Checkpoints past ``step`` belong to a run this one abandoned (it resumed from an older checkpoint), so
    they are removed: a later ``resume`` must continue this run. With ``keep``, only the newest ``keep`` stay.
    Temporary folders left by a killed write are swept."""
    root = checkpoint_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step_*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / checkpoint_name(step)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a checkpoint should look like a normal folder
    try:
        torch.save(state, tmp / STATE_FILE)
        write_lora(tmp / "pytorch_lora_weights.safetensors")
        if final.exists():  # a rerun of the same step (resumed from an older checkpoint): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for other_step, old in list_checkpoints(output_dir):
        if other_step > step:
            shutil.rmtree(old, ignore_errors=True)
    if keep is not None:
        for _, old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(folder: Path) -> dict:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a training checkpoint: {STATE_FILE} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated file, or one holding more than tensors and plain values
        raise CheckpointError(f"cannot read {path}: {err}") from err


__all__ = ["STATE_FILE", "capture_rng", "checkpoint_dir", "checkpoint_name", "latest_checkpoint", "list_checkpoints",
           "load_checkpoint", "restore_rng", "save_checkpoint"]
