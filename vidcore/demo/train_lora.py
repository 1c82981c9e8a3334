"""Teach the demo model a new motion with a LoRA on its UNet3D: ``"a red circle moving up right"``.

``python -m vidcore.demo.train_lora --out DIR [--steps N] [--seed 0] [--set FIELD=VALUE]``

The base demo model knows left / right / up / down; asked for "moving up right" it moves the shape up
(``evaluate_lora.py`` measures it). This script fine-tunes only LoRA branches (``training.add_lora``; the
UNet, text encoder and autoencoder stay frozen) on clips of the new motion (``motions.make_motion_clip``)
captioned ``"a {color} {shape} moving up right"``, mixed with clips of the old directions under their own
captions (and some empty prompts) so the old prompts and the unconditional prediction that guidance uses
keep what they had. The objective is the base model's (``train.py``): DDPM epsilon loss on ModelScope's
betas, v-weighted, latents from the frozen autoencoder's posterior times its scaling factor.

Seeded and logged: the loss every ``log_every`` steps and a fixed validation loss (new-motion clips, fixed
timesteps and noise) at the start and every ``val_every`` steps are printed and written with the config and
wall time to ``DIR/train_log.json``; the LoRA goes to ``DIR/pytorch_lora_weights.safetensors`` in peft layout
(``training.save_lora``, keys ``unet.<diffusers layer>.lora_A/B.weight``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..training.lora import LoRAConfig, add_lora, lora_parameters, save_lora
from .data import all_combinations, make_clip
from .motions import make_motion_clip, motion_combinations
from .train import SCHEDULER, Log, config_overrides, encode_latents, loss_weight, lr_at, sample_timesteps

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # the file name diffusers' load_lora_weights looks for


@dataclass(frozen=True)
class LoRATrainConfig:
    direction: str = "up right"  # the motion taught (a motions.MOTIONS name)
    rank: int = 8
    alpha: float | None = None  # None: alpha = rank (scale 1)
    target: str = "both"  # training.lora.TARGETS preset or a regex over diffusers layer names
    steps: int = 400
    batch: int = 16  # clips per step
    new_fraction: float = 0.5  # share of each batch from the new motion; the rest are old-direction clips
    lr: float = 1e-2  # measured: 2e-3 and 5e-3 (400 steps) gave 50 % and 77 % up-right, 1e-2 gave 88 %
    warmup: int = 20
    high_noise_fraction: float = 0.5  # share of t drawn from the top 30 % of the schedule (train.sample_timesteps)
    prompt_dropout: float = 0.1  # old-direction clips trained with "" (the unconditional branch guidance uses)
    new_clips: int = 12 * 32  # training clips of the new motion (each color x shape equally often)
    old_clips: int = 48 * 8  # regularisation clips of the 48 old prompts
    loss_weighting: str = "v"  # as the base model (train.loss_weight)
    max_loss_weight: float = 50.0
    speed: tuple[float, float] = (3.0, 3.5)  # the base model's training speed (train.DemoConfig.speed)
    val_clips: int = 24
    val_every: int = 100
    log_every: int = 25
    seed: int = 0
    threads: int = 1

    def __post_init__(self):
        if not 0 < self.new_fraction <= 1:
            raise ValueError(f"new_fraction must be in (0, 1], got {self.new_fraction}")
        if self.steps < 1 or self.batch < 1:
            raise ValueError(f"steps and batch must be >= 1, got {self.steps}, {self.batch}")


# clip seeds: far from the base model's training clips (seed * 1_000_003 + i, i < 6144) and from each other
NEW_SEEDS, OLD_SEEDS, VAL_SEEDS = 500_000, 600_000, 700_000


def make_clips(cfg: LoRATrainConfig) -> tuple[torch.Tensor, list[str], torch.Tensor, list[str], torch.Tensor]:
    """(new-motion videos, prompts, old-direction videos, prompts, validation videos of the new motion);
    videos ``n f 3 h w`` in [-1, 1], every clip determined by ``cfg.seed`` and its index."""
    base = cfg.seed * 1_000_003
    new_combos, old_combos = motion_combinations(cfg.direction), all_combinations()

    def clips(offset, combos, n, maker):
        out = [maker(base + offset + i, *combos[i % len(combos)], speed=cfg.speed) for i in range(n)]
        return torch.stack([v for v, _ in out]), [p for _, p in out]

    new, new_prompts = clips(NEW_SEEDS, new_combos, cfg.new_clips, make_motion_clip)
    old, old_prompts = clips(OLD_SEEDS, old_combos, cfg.old_clips, make_clip)
    val, _ = clips(VAL_SEEDS, new_combos, cfg.val_clips, make_motion_clip)  # prompts: val i has new_prompts[i % 12]
    return new, new_prompts, old, old_prompts, val


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """Frozen text-encoder states ``n 77 d``, computed as the pipeline does (last hidden state)."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids)[0].float()


def train_lora(cfg: LoRATrainConfig, out: str | os.PathLike, model=None, force: bool = False,
               quiet: bool = False) -> Path:
    """Train the LoRA and write ``out/pytorch_lora_weights.safetensors`` and ``out/train_log.json``."""
    out = Path(out)
    if (out / WEIGHTS_NAME).exists() and not force:
        raise FileExistsError(f"{out / WEIGHTS_NAME} already exists (pass --force to replace it)")
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, out, model, quiet)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: LoRATrainConfig, out: Path, model, quiet: bool) -> Path:
    from ..loading import load_model
    from ..schedulers import from_config
    from . import demo_model_path

    t0 = time.perf_counter()
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    folder = Path(model or demo_model_path())
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    text_encoder = CLIPTextModel.from_pretrained(str(folder / "text_encoder")).float().eval()
    vae = load_model(folder, subfolder="vae").float().eval()
    unet = load_model(folder, subfolder="unet").float()

    new, new_prompts, old, old_prompts, val = make_clips(cfg)
    scaling = vae.config.scaling_factor
    (new_mean, new_std), (old_mean, old_std), (val_mean, _) = (encode_latents(vae, v) for v in (new, old, val))
    vocab = ["", *sorted(set(new_prompts) | set(old_prompts))]
    index = {p: i for i, p in enumerate(vocab)}
    context = encode_prompts(tokenizer, text_encoder, vocab)  # (1 + prompts) 77 d
    new_idx = torch.tensor([index[p] for p in new_prompts])
    old_idx = torch.tensor([index[p] for p in old_prompts])
    say(f"data: {len(new)} '{cfg.direction}' clips + {len(old)} old-direction clips, {len(vocab) - 1} prompts "
        f"({time.perf_counter() - t0:.1f} s)")

    torch.manual_seed(cfg.seed)  # LoRA init
    layers = add_lora(unet, LoRAConfig(rank=cfg.rank, alpha=cfg.alpha, target=cfg.target))
    unet.train()
    params = lora_parameters(unet)
    say(f"LoRA: rank {cfg.rank} on {len(layers)} layers ({cfg.target}), {sum(p.numel() for p in params)} parameters")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    scheduler = from_config(SCHEDULER)
    alphas_cumprod = scheduler.alphas_cumprod

    # fixed validation batch: new-motion clips at 8 spread timesteps with fixed noise (posterior means)
    gv = torch.Generator().manual_seed(cfg.seed + 1)
    val_x0 = val_mean * scaling
    val_t = torch.linspace(50, 950, len(val_x0)).long()
    val_noise = torch.randn(val_x0.shape, generator=gv)
    val_ctx = context[[index[new_prompts[i % len(set(new_prompts))]] for i in range(len(val_x0))]]

    def weighted(pred, noise, t):
        a = alphas_cumprod[t]
        per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3, 4))
        return per_sample * loss_weight(a / (1 - a), cfg.loss_weighting, cfg.max_loss_weight)

    @torch.no_grad()
    def val_loss() -> float:
        unet.eval()
        loss = weighted(unet(scheduler.add_noise(val_x0, val_noise, val_t), val_t, val_ctx), val_noise, val_t)
        unet.train()
        return loss.mean().item()

    val_points = [{"step": 0, "val_loss": val_loss()}]
    say(f"[val] step 0  val_loss {val_points[0]['val_loss']:.4g}")
    g = torch.Generator().manual_seed(cfg.seed + 2)
    n_new = max(1, round(cfg.batch * cfg.new_fraction))
    n_old = cfg.batch - n_new
    log = Log("lora", cfg.steps, cfg.log_every, quiet)
    for step in range(cfg.steps):
        lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        pick_new = torch.randint(len(new_mean), (n_new,), generator=g)
        pick_old = torch.randint(len(old_mean), (n_old,), generator=g)
        mean = torch.cat([new_mean[pick_new], old_mean[pick_old]])
        std = torch.cat([new_std[pick_new], old_std[pick_old]])
        x0 = (mean + std * torch.randn(mean.shape, generator=g)) * scaling
        which_old = old_idx[pick_old].clone()
        which_old[torch.rand(n_old, generator=g) < cfg.prompt_dropout] = 0  # "" -> unconditional
        which = torch.cat([new_idx[pick_new], which_old])
        t = sample_timesteps(cfg.batch, scheduler.num_train_timesteps, cfg.high_noise_fraction, g)
        noise = torch.randn(x0.shape, generator=g)
        pred = unet(scheduler.add_noise(x0, noise, t), t, context[which])
        loss = weighted(pred, noise, t).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        log.add(step, loss=loss.item(), lr=lr)
        if cfg.val_every and ((step + 1) % cfg.val_every == 0 or step + 1 == cfg.steps):
            val_points.append({"step": step + 1, "val_loss": val_loss()})
            say(f"[val] step {step + 1}  val_loss {val_points[-1]['val_loss']:.4g}")
    wall = time.perf_counter() - t0
    unet.eval()
    out.mkdir(parents=True, exist_ok=True)
    save_lora(unet, out / WEIGHTS_NAME, prefix="unet.")
    record = {
        "command": "python -m vidcore.demo.train_lora " + " ".join(_cli_args(cfg)),
        "config": asdict(cfg), "layers": layers, "wall_seconds": round(wall, 1), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "loss": log.points, "val_loss": val_points,
    }
    (out / "train_log.json").write_text(json.dumps(record, indent=1) + "\n")
    say(f"wrote {out / WEIGHTS_NAME} ({(out / WEIGHTS_NAME).stat().st_size / 1e3:.0f} kB) in {wall:.0f} s")
    return out


def _cli_args(cfg: LoRATrainConfig) -> list[str]:
    default = LoRATrainConfig()
    args = ["--out", "DIR"]
    for name in default.__dataclass_fields__:
        value = getattr(cfg, name)
        if value != getattr(default, name):
            args += ["--set", f"{name}={json.dumps(list(value) if isinstance(value, tuple) else value)}"]
    return args


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vidcore.demo.train_lora", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for pytorch_lora_weights.safetensors and train_log.json")
    p.add_argument("--model", default=None, help="base pipeline folder (default: the shipped demo model)")
    p.add_argument("--force", action="store_true", help="replace an existing LoRA file in --out")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any LoRATrainConfig field (JSON value), e.g. --set steps=200")
    args = p.parse_args(argv)
    overrides = config_overrides(p, args.set, LoRATrainConfig)
    train_lora(replace(LoRATrainConfig(), **overrides), args.out, model=args.model, force=args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
