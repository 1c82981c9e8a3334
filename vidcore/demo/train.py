"""Train the built-in demo text-to-video model from scratch on synthetic clips, on the CPU.

``python -m vidcore.demo.train --out DIR [--vae-steps N] [--unet-steps N] [--seed 0] [--set FIELD=VALUE]``

Three stages, all seeded and logged (printed and written to ``DIR/train_log.json``):

1. a tiny KL autoencoder (vidcore ``AutoencoderKL``) on single frames: L1 + L2 reconstruction plus a
   small KL term; its latent scaling factor is then measured as 1 / std of the latents (as SD did);
2. a tiny CLIP text encoder (transformers ``CLIPTextModel``) pretrained to tell every color, shape and
   direction apart in its outputs (the stand-in for a pretrained CLIP), then frozen;
3. a tiny vidcore ``UNet3D`` on the scaled VAE latents with the DDPM epsilon objective on ModelScope's
   beta schedule (scaled_linear 0.00085..0.012, 1000 steps), v-weighted, dropping the prompt to "" 10% of
   the time so classifier-free guidance works, with an EMA copy of the weights that is shipped.

Two choices were measured to matter (see the demo section of benchmarks/RESULTS.md): the text encoder must
stay frozen after its pretraining (trained on with the UNet it lets the direction words collapse, and the
model moves its shape in a random direction), and the UNet gets ``frame_positions`` (a sinusoidal
frame table before each temporal attention, vidcore's one extension of ModelScope's UNet3D): at 2000
steps 98 % of the videos move the prompt's way with it, 79 % without.

The result is a diffusers-layout ``TextToVideoSDPipeline`` folder (fp16 safetensors) that
``vidcore.TextToVideoPipeline.from_pretrained`` loads.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..loading import save_diffusers
from ..models.unet3d import UNet3D, UNet3DConfig
from ..models.vae import AutoencoderKL, AutoencoderKLConfig
from ..schedulers import from_config
from ..tools.clip_vocab import write_clip_vocab
from .data import COLORS, DIRECTIONS, NUM_FRAMES, SHAPES, SIZE, all_prompts, make_dataset

SCHEDULER = {  # ModelScope's scheduler_config.json
    "_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
    "prediction_type": "epsilon",
}
VOCAB = ("a", "moving", *COLORS, *SHAPES, *DIRECTIONS)


@dataclass(frozen=True)
class DemoConfig:
    size: int = SIZE
    num_frames: int = NUM_FRAMES
    num_clips: int = 48 * 128  # training clips (each prompt equally often)
    # autoencoder
    vae_channels: tuple[int, ...] = (16, 32, 32)  # 3 levels -> 4x downsampling
    vae_steps: int = 1200
    vae_batch: int = 64  # frames
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-4
    vae_bf16: bool = True  # bf16 autocast: measured 1.8x faster for the autoencoder on this CPU
    # text encoder + unet
    text_width: int = 32
    text_layers: int = 2
    unet_channels: tuple[int, ...] = (32, 64)
    unet_layers: int = 1
    head_dim: int = 8
    frame_positions: int | None = 32  # UNet3DConfig.frame_positions (None = ModelScope's UNet3D, see below)
    unet_steps: int = 3000
    unet_batch: int = 24  # clips
    unet_lr: float = 1e-3
    warmup: int = 100
    prompt_dropout: float = 0.1
    ema_decay: float = 0.999
    text_pretrain_steps: int = 200
    train_text_encoder: bool = False  # keep training it with the UNet after the pretraining (collapses directions)
    high_noise_fraction: float = 0.0  # share of each batch with t drawn from the top 30 % of the schedule
    loss_weighting: str = "v"  # epsilon-MSE weight per timestep, see loss_weight()
    max_loss_weight: float = 50.0
    snapshot_every: int = 0
    speed: tuple[float, float] = (3.0, 3.5)  # pixels per frame (data): clips cross the whole frame
    trail: int = 0  # fading copies behind the shape (data), see data.make_clip
    seed: int = 0
    threads: int = 1
    device: str = "cpu"  # the recipe is for the CPU; "cuda" only speeds up experiments
    log_every: int = 50

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)


def build_vae(cfg: DemoConfig) -> AutoencoderKL:
    n = len(cfg.vae_channels)
    return AutoencoderKL(AutoencoderKLConfig(
        block_out_channels=cfg.vae_channels, layers_per_block=1, latent_channels=4, norm_num_groups=8,
        sample_size=cfg.size, down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        mid_block_add_attention=False, force_upcast=False))


def build_unet(cfg: DemoConfig) -> UNet3D:
    n = len(cfg.unet_channels)
    return UNet3D(UNet3DConfig(
        block_out_channels=cfg.unet_channels, layers_per_block=cfg.unet_layers, attention_head_dim=cfg.head_dim,
        cross_attention_dim=cfg.text_width, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock3D",) * (n - 1) + ("DownBlock3D",),
        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (n - 1), sample_size=cfg.size // cfg.vae_factor,
        frame_positions=cfg.frame_positions))


def build_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    write_clip_vocab(folder, VOCAB)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)
    tokenizer.save_pretrained(str(folder))
    return CLIPTokenizer.from_pretrained(str(folder))


def build_text_encoder(cfg: DemoConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    w = cfg.text_width
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=w, intermediate_size=4 * w, num_hidden_layers=cfg.text_layers,
        num_attention_heads=max(w // 16, 1), max_position_embeddings=77, projection_dim=w,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))


def loss_weight(snr: torch.Tensor, kind: str, cap: float) -> torch.Tensor:
    """Per-sample weight of the epsilon MSE at signal-to-noise ratio ``snr``.

    ``"uniform"``: 1 (DDPM's simple loss). ``"min_snr"``: min(SNR, cap) / SNR (Hang et al. 2023).
    ``"v"``: min(1 + 1/SNR, cap), the v-prediction loss written on epsilon. It up-weights the high-noise
    steps where the layout (where the shape is in each frame, hence its direction) is decided; with the
    uniform weight the model learned color from the prompt but took the direction from the noise.
    """
    if kind == "uniform":
        return torch.ones_like(snr)
    if kind == "min_snr":
        return snr.clamp(max=cap) / snr
    if kind == "v":
        return (1 + 1 / snr).clamp(max=cap)
    raise ValueError(f"loss_weighting must be 'uniform', 'min_snr' or 'v', got {kind!r}")


def sample_timesteps(n: int, num_train_timesteps: int, high_noise_fraction: float, generator) -> torch.Tensor:
    """Uniform training timesteps, except that a ``high_noise_fraction`` share is drawn from the top
    30 % of the schedule (where the prompt alone decides the layout, so its gradient is the signal
    that ties the prompt to where the shape is)."""
    t = torch.randint(0, num_train_timesteps, (n,), generator=generator)
    high = torch.rand(n, generator=generator) < high_noise_fraction
    top = num_train_timesteps * 7 // 10
    return torch.where(high, top + t % (num_train_timesteps - top), t)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(total - warmup, 1)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


class Log:
    """Loss curve: printed every ``every`` steps (running mean) and kept for the JSON log."""

    def __init__(self, name: str, total: int, every: int = 50, quiet: bool = False):
        self.name, self.total, self.every, self.quiet = name, total, every, quiet
        self.points: list[dict] = []
        self._acc: list[float] = []
        self.start = time.perf_counter()

    def add(self, step: int, **losses: float) -> None:
        self._acc.append(losses["loss"])
        if (step + 1) % self.every == 0 or step + 1 == self.total:
            point = {"step": step + 1, "loss": sum(self._acc) / len(self._acc),
                     **{k: round(v, 6) for k, v in losses.items() if k != "loss"},
                     "seconds": round(time.perf_counter() - self.start, 1)}
            self._acc = []
            self.points.append(point)
            if not self.quiet:
                extra = " ".join(f"{k} {v:.4g}" for k, v in point.items() if k not in ("step", "seconds"))
                print(f"[{self.name}] step {point['step']:>5}/{self.total}  {extra}  ({point['seconds']} s)", flush=True)


# -- stage 1: autoencoder ----------------------------------------------------------------------------

def train_vae(cfg: DemoConfig, frames: torch.Tensor, quiet: bool = False) -> tuple[AutoencoderKL, Log]:
    """frames: n 3 h w in [-1, 1]."""
    torch.manual_seed(cfg.seed)
    dev = torch.device(cfg.device)
    vae = build_vae(cfg).to(dev).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    log = Log("vae", cfg.vae_steps, cfg.log_every, quiet)
    for step in range(cfg.vae_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg.vae_steps, cfg.vae_lr, cfg.warmup)
        x = frames[torch.randint(len(frames), (cfg.vae_batch,), generator=g)].to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.vae_bf16):
            post = vae.encode(x)
            recon = vae.decode(post.sample(g)).float()
        l1 = (recon - x).abs().mean()
        l2 = F.mse_loss(recon, x)
        kl = 0.5 * (post.mean.pow(2) + post.logvar.exp() - 1 - post.logvar).mean()
        loss = l1 + l2 + cfg.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        log.add(step, loss=loss.item(), l1=l1.item(), kl=kl.item())
    return vae.eval(), log


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, videos: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """videos n f 3 h w -> posterior (mean, std), each n c f h' w' (unscaled)."""
    n, f = videos.shape[:2]
    means, stds = [], []
    dev = next(vae.parameters()).device
    for part in videos.flatten(0, 1).split(batch):
        post = vae.encode(part.to(dev))
        means.append(post.mean.cpu())
        stds.append(post.std.cpu())
    def unfold(x):  # (n f) c h w -> n c f h w
        x = torch.cat(x)
        return x.reshape(n, f, *x.shape[1:]).transpose(1, 2).contiguous()
    return unfold(means), unfold(stds)


# -- stage 2: text encoder + UNet ---------------------------------------------------------------------

def pretrain_text_encoder(cfg: DemoConfig, text_encoder, ids: torch.Tensor, eos_id: int, quiet: bool = False) -> Log:
    """Teach the text encoder to spell out the prompt's attributes in its end/padding states.

    A text encoder trained from scratch only by the diffusion loss learns the attribute with the
    strongest signal (color) and leaves the others nearly indistinguishable, and then the UNet never
    learns to use them. Real text-to-video models start from a pretrained CLIP; this stand-in trains
    cosine classifiers for color, shape and direction on every end/padding position (71 of the 77
    tokens the UNet cross-attends to), so every prompt starts with well separated embeddings.
    ``ids``: the 48 demo prompts, in ``all_combinations()`` order.
    """
    from .data import all_combinations

    combos = all_combinations()
    labels = [torch.tensor([list(options).index(c[k]) for c in combos], device=ids.device) for k, options in
              enumerate((COLORS, SHAPES, DIRECTIONS))]
    heads = [torch.nn.Parameter(torch.randn(len(o), cfg.text_width).to(ids.device)) for o in (COLORS, SHAPES, DIRECTIONS)]
    mask = (ids == eos_id).float()[..., None]  # 48 77 1
    opt = torch.optim.AdamW(list(text_encoder.parameters()) + heads, lr=cfg.unet_lr, weight_decay=0.0)
    log = Log("text", cfg.text_pretrain_steps, cfg.log_every, quiet)
    for step in range(cfg.text_pretrain_steps):
        hidden = F.normalize(text_encoder(ids)[0], dim=-1)  # 48 77 d
        loss = 0.0
        for head, y in zip(heads, labels):
            logits = 10.0 * hidden @ F.normalize(head, dim=-1).T  # 48 77 classes
            ce = F.cross_entropy(logits.flatten(0, 1), y.repeat_interleave(ids.shape[1]), reduction="none")
            loss = loss + (ce.view(mask.shape[:2]) * mask[..., 0]).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.add(step, loss=loss.item())
    return log


def train_unet(cfg: DemoConfig, latents: tuple[torch.Tensor, torch.Tensor], prompts: list[str], tokenizer,
               scaling_factor: float, quiet: bool = False, callback=None):
    """Pretrain a CLIP text encoder (frozen afterwards unless ``cfg.train_text_encoder``), then train a UNet3D
    on (scaled) VAE latents.

    Returns (text_encoder, unet_ema, unet, log). ``callback(step, text_encoder, unet_ema, unet)`` runs
    every ``cfg.snapshot_every`` steps when given.
    """
    torch.manual_seed(cfg.seed + 2)
    dev = torch.device(cfg.device)
    text_encoder = build_text_encoder(cfg, tokenizer).to(dev).train()
    unet = build_unet(cfg).to(dev).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    scheduler = from_config(SCHEDULER)
    alphas_cumprod = scheduler.alphas_cumprod

    vocab = [""] + all_prompts()
    ids = tokenizer(vocab, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(dev)  # (1 + 48) 77
    index = {p: i for i, p in enumerate(vocab)}
    prompt_idx = torch.tensor([index[p] for p in prompts], device=dev)
    if cfg.text_pretrain_steps:
        pretrain_text_encoder(cfg, text_encoder, ids[1:], tokenizer.eos_token_id, quiet)

    if not cfg.train_text_encoder:
        # frozen after pretraining, as real text-to-video models freeze their pretrained CLIP: trained on by
        # the diffusion loss, the text encoder let the direction words collapse (the UNet learned color
        # first and took the motion direction from the noise)
        text_encoder.eval().requires_grad_(False)
        with torch.no_grad():
            frozen_context = text_encoder(ids)[0]  # (1 + 48) 77 d
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if cfg.train_text_encoder else [])
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(cfg.seed + 3)
    mean, std = (x.to(dev) for x in latents)
    log = Log("unet", cfg.unet_steps, cfg.log_every, quiet)
    for step in range(cfg.unet_steps):
        lr = lr_at(step, cfg.unet_steps, cfg.unet_lr, cfg.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        pick = torch.randint(len(mean), (cfg.unet_batch,), generator=g).to(dev)
        x0 = (mean[pick] + std[pick] * torch.randn(mean[pick].shape, generator=g).to(dev)) * scaling_factor
        which = prompt_idx[pick].clone()
        which[(torch.rand(cfg.unet_batch, generator=g) < cfg.prompt_dropout).to(dev)] = 0  # "" -> unconditional
        t = sample_timesteps(cfg.unet_batch, scheduler.num_train_timesteps, cfg.high_noise_fraction, g).to(dev)
        noise = torch.randn(x0.shape, generator=g).to(dev)
        xt = scheduler.add_noise(x0, noise, t)
        if cfg.train_text_encoder:  # encode the unique prompts of this batch once
            uniq, inverse = which.unique(return_inverse=True)
            context = text_encoder(ids[uniq])[0][inverse]
        else:
            context = frozen_context[which]
        pred = unet(xt, t, context)
        per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3, 4))
        a = alphas_cumprod.to(dev)[t]
        snr = a / (1 - a)
        loss = (per_sample * loss_weight(snr, cfg.loss_weighting, cfg.max_loss_weight)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        log.add(step, loss=loss.item(), lr=lr)
        if callback is not None and cfg.snapshot_every and (step + 1) % cfg.snapshot_every == 0:
            callback(step + 1, text_encoder, ema, unet)
    return text_encoder.eval(), ema, unet.eval(), log


# -- writing -----------------------------------------------------------------------------------------

def write_pipeline(folder: Path, tokenizer_dir: Path, text_encoder, unet: UNet3D, vae: AutoencoderKL) -> None:
    """A diffusers-layout TextToVideoSDPipeline folder with fp16 weights under the plain file names."""
    shutil.copytree(tokenizer_dir, folder / "tokenizer")
    copy.deepcopy(text_encoder).cpu().half().save_pretrained(str(folder / "text_encoder"))
    # weights are stored as fp16, but the config asks transformers to load them as float32 by default
    config_file = folder / "text_encoder" / "config.json"
    config = json.loads(config_file.read_text())
    config["dtype"] = "float32"
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_diffusers(copy.deepcopy(unet).cpu().half(), folder / "unet")
    save_diffusers(copy.deepcopy(vae).cpu().half(), folder / "vae")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2) + "\n")
    index = {
        "_class_name": "TextToVideoSDPipeline", "_diffusers_version": "0.33.1",
        "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet3DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def _normal_permissions(folder: Path) -> None:
    """Temp folders and some writers use owner-only modes; give the output the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def train(cfg: DemoConfig, out: str | os.PathLike, force: bool = False, quiet: bool = False,
          vae_from: str | os.PathLike | None = None, callback=None) -> Path:
    """Run both stages and write the pipeline folder ``out`` (atomically). Returns its path.

    ``vae_from``: a pipeline folder whose autoencoder is reused (stage 1 is skipped). ``callback(step,
    text_encoder, unet_ema, unet, tokenizer=, vae=)`` runs every ``cfg.snapshot_every`` UNet steps (progress
    checks during long runs).
    """
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists (pass --force to replace it)")
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, out, quiet, vae_from, callback)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: DemoConfig, out: Path, quiet: bool, vae_from, callback=None) -> Path:
    t0 = time.perf_counter()
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    videos, prompts = make_dataset(cfg.num_clips, seed=cfg.seed, num_frames=cfg.num_frames, size=cfg.size,
                                   speed=cfg.speed, trail=cfg.trail)
    say(f"data: {len(videos)} clips {tuple(videos.shape[1:])} ({time.perf_counter() - t0:.1f} s)")

    if vae_from is None:
        vae, vae_log = train_vae(cfg, videos.flatten(0, 1), quiet)
    else:
        from ..loading import load_model

        vae, vae_log = load_model(vae_from, subfolder="vae").float().eval(), Log("vae", 0, quiet=True)
        cfg = replace(cfg, vae_channels=tuple(vae.config.block_out_channels), vae_steps=0)
    mean, std = encode_latents(vae, videos)
    g = torch.Generator().manual_seed(cfg.seed + 4)
    scaling_factor = float(1.0 / (mean + std * torch.randn(mean.shape, generator=g)).std())
    vae.config = replace(vae.config, scaling_factor=round(scaling_factor, 5))
    with torch.no_grad():  # reconstruction check on the first 96 clips
        recon = vae.decode(mean[:96].transpose(1, 2).flatten(0, 1).to(cfg.device)).cpu()
    recon_l1 = (recon - videos[:96].flatten(0, 1)).abs().mean().item()
    say(f"vae: scaling_factor {scaling_factor:.4f}, reconstruction L1 {recon_l1:.4f} "
        f"({time.perf_counter() - t0:.1f} s)")

    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}."))
    try:
        tokenizer = build_tokenizer(tmp / "_tokenizer")
        snapshot = None if callback is None else (
            lambda step, te, ema, unet: callback(step, te, ema, unet, tokenizer=tokenizer, vae=vae))
        text_encoder, unet_ema, unet, unet_log = train_unet(cfg, (mean, std), prompts, tokenizer, scaling_factor, quiet,
                                                            callback=snapshot)
        wall = time.perf_counter() - t0
        write_pipeline(tmp, tmp / "_tokenizer", text_encoder, unet_ema, vae)
        shutil.rmtree(tmp / "_tokenizer")
        log = {
            "command": "python -m vidcore.demo.train " + " ".join(_cli_args(cfg)),
            "config": asdict(cfg), "wall_seconds": round(wall, 1), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "scaling_factor": scaling_factor, "vae_reconstruction_l1": recon_l1,
            "parameters": {"vae": _count(vae), "unet": _count(unet), "text_encoder": _count(text_encoder)},
            "vae_loss": vae_log.points, "unet_loss": unet_log.points,
        }
        (tmp / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
        _normal_permissions(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"wrote {out} ({_folder_bytes(out) / 1e6:.2f} MB) in {time.perf_counter() - t0:.0f} s")
    return out


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _cli_args(cfg: DemoConfig) -> list[str]:
    default = DemoConfig()
    args = ["--out", "DIR"]
    for name in ("vae_steps", "unet_steps", "seed", "threads"):
        if getattr(cfg, name) != getattr(default, name):
            args += [f"--{name.replace('_', '-')}", str(getattr(cfg, name))]
    for name in default.__dataclass_fields__:
        if name not in ("vae_steps", "unet_steps", "seed", "threads") and getattr(cfg, name) != getattr(default, name):
            value = getattr(cfg, name)
            args += ["--set", f"{name}={json.dumps(list(value) if isinstance(value, tuple) else value)}"]
    return args


def config_overrides(parser: argparse.ArgumentParser, items: list[str], config_cls: type) -> dict:
    """``--set FIELD=VALUE`` items (JSON values; lists become tuples) -> {field: value} for ``config_cls``; an
    unknown field is a usage error naming the fields."""
    overrides = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in config_cls.__dataclass_fields__:
            parser.error(f"--set: unknown field {key!r}; fields: {sorted(config_cls.__dataclass_fields__)}")
        value = json.loads(value)
        overrides[key] = tuple(value) if isinstance(value, list) else value
    return overrides


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vidcore.demo.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="pipeline folder to write (must not exist unless --force)")
    p.add_argument("--vae-steps", type=int, default=DemoConfig.vae_steps)
    p.add_argument("--unet-steps", type=int, default=DemoConfig.unet_steps)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=DemoConfig.threads,
                   help="torch CPU threads (default 1: fastest on a busy 2-core machine)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--vae-from", default=None, help="reuse the autoencoder of this pipeline folder (skip stage 1)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any DemoConfig field (JSON value), e.g. --set unet_channels=[32,64]")
    args = p.parse_args(argv)
    overrides = config_overrides(p, args.set, DemoConfig)
    cfg = DemoConfig(vae_steps=args.vae_steps, unet_steps=args.unet_steps, seed=args.seed, threads=args.threads,
                     **overrides)
    train(cfg, args.out, force=args.force, vae_from=args.vae_from)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
