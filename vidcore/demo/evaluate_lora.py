"""Score a motion LoRA on the demo model: does it teach the new motion, and do the old prompts keep theirs?

``python -m vidcore.demo.evaluate_lora [--lora FILE] [--direction "up right"] [--seeds 8] [--old-seeds 4] [--json F]``

Two figures, each with and without the LoRA (the same pipeline, the same seeds):

* new motion: every color x shape prompt of the new direction (12) with ``--seeds`` noise seeds starting at
  ``--seed-offset`` (1000: seeds no training or tuning run looked at), scored by angle
  (``motions.score_motion``: the centroid velocity within 22.5 degrees of the wanted direction);
* old prompts: ``evaluate.py``'s standard evaluation (48 prompts, seeds 0..old-seeds-1): color accuracy and
  direction accuracy by dominant axis, plus the stricter 8-way angle accuracy (a "left" video that drifts
  diagonally counts as wrong there).

The LoRA goes onto ``pipe.unet`` with ``training.add_lora`` on exactly the layers the file names and
``training.set_lora_state_dict`` (``prefix="unet."``, peft layout as ``save_lora`` writes it).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from ..training.lora import LoRAConfig, add_lora, set_lora_state_dict
from .evaluate import generate, score_videos, summarize
from .motions import SECTOR, angle_error, motion_angle, motion_combinations

LORA_DIR = Path(__file__).resolve().parent / "lora_up_right"
LORA_FILE = LORA_DIR / "pytorch_lora_weights.safetensors"
NEW_SEED_OFFSET = 1000  # evaluation seeds of the new motion; training draws clips from other seed ranges


def read_lora(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def apply_lora(unet: torch.nn.Module, state: dict[str, torch.Tensor], prefix: str = "unet.") -> list[str]:
    """Add LoRA branches to the layers ``state`` names (its rank) and load it; returns the layer names."""
    layers = sorted({k[len(prefix):].rsplit(".lora_", 1)[0] for k in state if k.startswith(prefix)})
    if not layers:
        raise ValueError(f"no '{prefix}' LoRA keys in the state dict")
    rank = state[f"{prefix}{layers[0]}.lora_A.weight"].shape[0]
    target = tuple(f"^{re.escape(name)}$" for name in layers)
    added = add_lora(unet, LoRAConfig(rank=rank, target=target))
    set_lora_state_dict(unet, {k: v for k, v in state.items() if k.startswith(prefix)}, prefix=prefix)
    unet.eval()
    return added


def load_pipeline(model=None):
    import vidcore

    from . import demo_model_path

    pipe = vidcore.TextToVideoPipeline.from_pretrained(model or demo_model_path())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_seeds(pipe, combos, seeds: list[int], steps: int, guidance: float, batch: int = 48) -> np.ndarray:
    """Every combo with every seed in ``seeds`` -> videos ``n f h w 3`` (seed-major order, as ``generate``)."""
    from . import DEFAULTS
    from .data import prompt_for

    jobs = [(c, s) for s in seeds for c in combos]
    out = []
    for i in range(0, len(jobs), batch):
        part = jobs[i:i + batch]
        out.append(pipe([prompt_for(*c) for c, _ in part], num_frames=DEFAULTS["num_frames"],
                        num_inference_steps=steps, guidance_scale=guidance, height=DEFAULTS["height"],
                        width=DEFAULTS["width"], generator=[torch.Generator().manual_seed(s) for _, s in part],
                        output_type="np").frames)
    return np.concatenate(out)


def new_motion_score(pipe, direction: str, seeds: list[int], steps: int, guidance: float) -> dict:
    """Accuracy (within 22.5 degrees) and median angle error of ``direction``'s 12 prompts x ``seeds``."""
    combos = motion_combinations(direction)
    videos = generate_seeds(pipe, combos, seeds, steps, guidance)
    angles = [motion_angle(v) for v in videos]
    errors = [180.0 if a is None else angle_error(a, direction) for a in angles]
    return dict(videos=len(videos), accuracy=float(np.mean([e < SECTOR for e in errors])),
                median_angle_error=float(np.median(errors)))


def old_prompts_score(pipe, seeds: int, steps: int, guidance: float) -> dict:
    """``evaluate.py``'s standard evaluation (48 prompts x ``seeds``) plus the 8-way angle accuracy."""
    from . import DEFAULTS
    from .data import all_combinations

    videos, combos = generate(pipe, all_combinations(), seeds, DEFAULTS["num_frames"], steps, guidance,
                              height=DEFAULTS["height"], width=DEFAULTS["width"])
    s = summarize(score_videos(videos, combos))
    angle_ok = [(a := motion_angle(v)) is not None and angle_error(a, c[2]) < SECTOR for v, c in zip(videos, combos)]
    return dict(videos=s["videos"], color_accuracy=s["color_accuracy"], direction_accuracy=s["direction_accuracy"],
                angle_accuracy=float(np.mean(angle_ok)), per_direction=s["per_direction"])


def evaluate_lora(lora=LORA_FILE, direction: str = "up right", seeds: int = 8, old_seeds: int = 4,
                  seed_offset: int = NEW_SEED_OFFSET, steps: int | None = None, guidance: float | None = None,
                  model=None, verbose: bool = True, parts: tuple[str, ...] = ("base", "lora")) -> dict:
    """Both figures without and with the LoRA; ``retained``: old accuracy with / without, per measure.
    ``parts``: ("base",) or ("lora",) runs one half (the two halves of a long evaluation can run apart and be
    joined with :func:`join`)."""
    from . import DEFAULTS

    steps = steps or DEFAULTS["num_inference_steps"]
    guidance = DEFAULTS["guidance_scale"] if guidance is None else guidance
    say = print if verbose else (lambda *a: None)
    pipe = load_pipeline(model)
    new_seeds = list(range(seed_offset, seed_offset + seeds))
    result = {"lora_file": str(lora), "direction": direction, "new_seeds": [new_seeds[0], new_seeds[-1]],
              "old_seeds": [0, old_seeds - 1], "steps": steps, "guidance": guidance}
    start = time.perf_counter()
    for name in parts:
        if name == "lora":
            pipe.load_lora_weights(lora, adapter_name="lora")  # read like any LoRA file, fused into the weights
        result[name] = {"new": new_motion_score(pipe, direction, new_seeds, steps, guidance)}
        if old_seeds:
            result[name]["old"] = old_prompts_score(pipe, old_seeds, steps, guidance)
        say(f"{name}: {json.dumps(result[name])}")
    pipe.unload_lora_weights()
    result["seconds"] = round(time.perf_counter() - start, 1)
    if "base" in result and "lora" in result:
        result = join(result, result)
        if verbose:
            say(format_table(result))
    return result


def join(base: dict, lora: dict) -> dict:
    """One result from a base-only and a LoRA-only run of the same settings, with ``retained`` (old accuracy
    with the LoRA / without, per measure)."""
    same = ("direction", "new_seeds", "old_seeds", "steps", "guidance")
    if any(base[k] != lora[k] for k in same):
        raise ValueError(f"the two runs differ in {[k for k in same if base[k] != lora[k]]}")
    result = {**lora, "base": base["base"], "lora": lora["lora"]}
    if "old" in base["base"]:
        result["retained"] = {k: lora["lora"]["old"][k] / max(base["base"]["old"][k], 1e-9)
                              for k in ("color_accuracy", "direction_accuracy", "angle_accuracy")}
    return result


def format_table(r: dict) -> str:
    """A markdown before/after table of :func:`evaluate_lora`'s result."""
    b, a = r["base"], r["lora"]
    n = b["new"]["videos"]
    rows = [f"| measure | without LoRA | with LoRA |", "|---|---|---|",
            f"| \"moving {r['direction']}\" within 22.5 deg ({n} videos) | {b['new']['accuracy']:.1%} | "
            f"{a['new']['accuracy']:.1%} |",
            f"| \"moving {r['direction']}\" median angle error | {b['new']['median_angle_error']:.1f} deg | "
            f"{a['new']['median_angle_error']:.1f} deg |"]
    if "old" in b:
        m = b["old"]["videos"]
        for key, label in (("direction_accuracy", "direction (dominant axis)"), ("color_accuracy", "color"),
                           ("angle_accuracy", "direction within 22.5 deg")):
            rows.append(f"| old prompts {label} ({m} videos) | {b['old'][key]:.1%} | {a['old'][key]:.1%} "
                        f"(retained {r['retained'][key]:.3f}) |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vidcore.demo.evaluate_lora", description=__doc__.split("\n\n")[0])
    p.add_argument("--lora", default=str(LORA_FILE), help="LoRA safetensors (default: the shipped up-right LoRA)")
    p.add_argument("--direction", default="up right", help="the motion the LoRA teaches")
    p.add_argument("--seeds", type=int, default=8, help="noise seeds per new-motion prompt (default 8)")
    p.add_argument("--seed-offset", type=int, default=NEW_SEED_OFFSET)
    p.add_argument("--old-seeds", type=int, default=4, help="seeds per old prompt (default 4; 0 skips them)")
    p.add_argument("--model", default=None, help="pipeline folder (default: the shipped demo model)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", choices=("base", "lora"), default=None, help="run one half (see --join)")
    p.add_argument("--join", nargs=2, metavar=("BASE_JSON", "LORA_JSON"), default=None,
                   help="print the table of two --only runs' --json files (nothing is generated)")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.join:
        result = join(*(json.loads(Path(f).read_text()) for f in args.join))
        print(format_table(result))
    else:
        parts = (args.only,) if args.only else ("base", "lora")
        result = evaluate_lora(args.lora, args.direction, args.seeds, args.old_seeds, args.seed_offset,
                               model=args.model, parts=parts)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
