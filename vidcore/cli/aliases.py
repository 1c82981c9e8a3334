"""diffusers' argument names as CLI flags: the one list of aliases of ``vidcore generate``'s short flags.

People coming from diffusers type the Python argument names (``num_inference_steps`` ->
``--num-inference-steps``). Every option a task adds goes through :class:`Options`, which appends the
aliases listed here, so ``--help`` shows them beside the short flag and both spellings set the same value.
Flags that already are diffusers' names (``--decode-chunk-size``, ``--motion-bucket-id``,
``--noise-aug-strength``, ``--negative-prompt``, ``--strength``, ...) need no alias.
"""

from __future__ import annotations

import argparse

# short flag -> diffusers spellings, for every task that has the flag
ALIASES: dict[str, tuple[str, ...]] = {
    "--frames": ("--num-frames",),
    "--steps": ("--num-inference-steps",),
    "--guidance": ("--guidance-scale",),
    "--num-videos": ("--num-videos-per-prompt",),
    "--min-guidance": ("--min-guidance-scale",),  # Stable Video Diffusion
    "--max-guidance": ("--max-guidance-scale",),
    "--image-guidance": ("--image-guidance-scale",),  # InstructPix2Pix (edit)
    "--controlnet-scale": ("--controlnet-conditioning-scale",),  # ControlNet (controlled)
    "--dtype": ("--torch-dtype",),
    "--free-noise-weighting": ("--weighting-scheme",),  # enable_free_noise's argument names
    "--free-noise-noise": ("--noise-type",),
}
# where a task's pipeline names the argument differently
TASK_ALIASES: dict[str, dict[str, tuple[str, ...]]] = {
    "text2video-zero": {"--frames": ("--num-frames", "--video-length")},
    "i2vgen-xl": {"--fps": ("--target-fps",)},
}


def aliases_of(task: str, flag: str) -> tuple[str, ...]:
    return TASK_ALIASES.get(task, {}).get(flag, ALIASES.get(flag, ()))


class Options:
    """``parser.add_argument`` for one task, with the aliases of each flag appended."""

    def __init__(self, parser: argparse.ArgumentParser, task: str):
        self.parser, self.task = parser, task

    def add(self, *flags: str, **kwargs) -> argparse.Action:
        extra = [alias for flag in flags for alias in aliases_of(self.task, flag)]
        return self.parser.add_argument(*flags, *extra, **kwargs)
