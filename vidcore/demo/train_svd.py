"""Train the built-in demo image-to-video model (Stable Video Diffusion architecture) on synthetic clips, on the CPU.

``python -m vidcore.demo.train_svd --out DIR [--vae-steps N] [--unet-steps N] [--seed 0] [--set FIELD=VALUE]``

The clips are the text-to-video demo's (one colored shape on black, 32x32, 8 frames) with the shape starting near
one edge, centred across, and crossing to the far side; so the first frame alone says where the video goes
("toward the far side"). Three parts, seeded and logged (``DIR/train_log.json``):

1. a tiny temporal autoencoder (vidcore ``AutoencoderKLTemporalDecoder``: 2D encoder per frame, temporal decoder
   over the clip): L1 + L2 reconstruction plus a small KL term; the latent scaling factor is then measured as
   1 / std of the latents;
2. a tiny CLIP vision tower (transformers ``CLIPVisionModelWithProjection``), left at its seeded random weights and
   frozen: SVD reads the first frame mostly through its VAE latent, concatenated to every frame's input, and a
   random projection still tells the images apart;
3. a tiny vidcore ``SVDUNet`` trained as SVD was: EDM preconditioning with v-prediction (``c_in = 1/sqrt(s^2+1)``,
   ``c_skip = 1/(s^2+1)``, ``c_out = -s/sqrt(s^2+1)``, timestep ``log(s)/4``), log-normal sigmas, loss weight
   ``(s^2+1)/s^2`` on the clean estimate, the first frame's latent (noise-augmented) as the condition, both
   conditions dropped 10 % of the time for classifier-free guidance, and an EMA copy of the weights shipped.

The result is a diffusers-layout ``StableVideoDiffusionPipeline`` folder (fp16 safetensors) that
``vidcore.StableVideoDiffusionPipeline.from_pretrained`` loads and ``vidcore generate image-to-video`` uses when no
``--model`` is given.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..loading import save_diffusers
from ..models.svd_unet import SVDUNet, SVDUNetConfig
from ..models.svd_vae import AutoencoderKLTemporalDecoder, AutoencoderKLTemporalDecoderConfig
from .data import NUM_FRAMES, SIZE, all_combinations, make_clip

# stabilityai/stable-video-diffusion-img2vid(-xt) scheduler_config.json
SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "interpolation_type": "linear", "num_train_timesteps": 1000,
    "prediction_type": "v_prediction", "set_alpha_to_one": False, "sigma_max": 700.0, "sigma_min": 0.002,
    "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading", "timestep_type": "continuous",
    "trained_betas": None, "use_karras_sigmas": True,
}
FPS, MOTION_BUCKET = 7, 127  # the micro-conditions the demo is trained (and sampled) with


@dataclass(frozen=True)
class SVDDemoConfig:
    size: int = SIZE
    num_frames: int = NUM_FRAMES
    num_clips: int = 48 * 64
    speed: tuple[float, float] = (3.0, 3.5)  # pixels per frame: the shape crosses the frame
    across: tuple[float, float] = (0.35, 0.65)  # where across its path the shape runs (fraction of the free range)
    vae_channels: tuple[int, ...] = (32, 32, 32)  # 3 levels -> 4x downsampling (the decoder's norms use 32 groups)
    vae_steps: int = 600
    vae_batch: int = 8  # clips
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-4
    vae_bf16: bool = True  # bf16 autocast (as the text-to-video demo's autoencoder; faster on this CPU)
    vision_width: int = 32
    unet_channels: tuple[int, ...] = (32, 64)
    heads: tuple[int, ...] = (2, 4)
    unet_steps: int = 2000
    unet_batch: int = 16
    unet_lr: float = 1e-3
    warmup: int = 100
    p_mean: float = 0.0  # log-normal sigma distribution (EDM's P_mean / P_std)
    p_std: float = 1.6
    cond_dropout: float = 0.1
    max_noise_aug: float = 0.05
    ema_decay: float = 0.999
    seed: int = 0
    threads: int = 1
    log_every: int = 50
    snapshot_every: int = 0


def make_clips(cfg: SVDDemoConfig, count: int, seed: int) -> torch.Tensor:
    """``count`` clips ``n f 3 h w`` in [-1, 1] cycling through every color x shape x direction."""
    combos = all_combinations()
    return torch.stack([make_clip(seed * 1_000_003 + i, *combos[i % len(combos)], num_frames=cfg.num_frames,
                                  size=cfg.size, speed=cfg.speed, across=cfg.across)[0] for i in range(count)])


def build_vae(cfg: SVDDemoConfig) -> AutoencoderKLTemporalDecoder:
    n = len(cfg.vae_channels)
    return AutoencoderKLTemporalDecoder(AutoencoderKLTemporalDecoderConfig(
        block_out_channels=cfg.vae_channels, down_block_types=("DownEncoderBlock2D",) * n, layers_per_block=1,
        latent_channels=4, sample_size=cfg.size, force_upcast=False))


def build_unet(cfg: SVDDemoConfig) -> SVDUNet:
    n = len(cfg.unet_channels)
    return SVDUNet(SVDUNetConfig(
        block_out_channels=cfg.unet_channels, num_attention_heads=cfg.heads, layers_per_block=1,
        down_block_types=("CrossAttnDownBlockSpatioTemporal",) * (n - 1) + ("DownBlockSpatioTemporal",),
        up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * (n - 1),
        cross_attention_dim=cfg.vision_width, addition_time_embed_dim=8, projection_class_embeddings_input_dim=24,
        num_frames=cfg.num_frames, sample_size=cfg.size // 2 ** (len(cfg.vae_channels) - 1)))


def build_image_encoder(cfg: SVDDemoConfig):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(cfg.seed)
    w = cfg.vision_width
    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=w, intermediate_size=2 * w, num_hidden_layers=1, num_attention_heads=2, image_size=224,
        patch_size=32, projection_dim=w)).eval()


def train_vae(cfg: SVDDemoConfig, clips: torch.Tensor, log: list) -> AutoencoderKLTemporalDecoder:
    vae = build_vae(cfg).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    start = time.perf_counter()
    for step in range(1, cfg.vae_steps + 1):
        batch = clips[torch.randint(len(clips), (cfg.vae_batch,), generator=g)]  # b f 3 h w
        frames = batch.flatten(0, 1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.vae_bf16):
            posterior = vae.encode(frames)
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
            recon = vae.decode(z, num_frames=cfg.num_frames).float()
        kl = 0.5 * (posterior.mean.float()**2 + posterior.std.float()**2 - 1 - posterior.logvar.float()).mean()
        loss = F.l1_loss(recon, frames) + F.mse_loss(recon, frames) + cfg.vae_kl_weight * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % cfg.log_every == 0 or step == cfg.vae_steps:
            log.append({"step": step, "loss": float(loss), "l1": float(F.l1_loss(recon, frames)),
                        "seconds": round(time.perf_counter() - start, 1)})
            print(f"vae step {step}: loss {float(loss):.4f}", flush=True)
    vae.eval()
    with torch.no_grad():
        latents = vae.encode(clips[:64].flatten(0, 1)).mode()
    scaling = float(1 / latents.std())
    vae.config = replace(vae.config, scaling_factor=scaling)
    return vae


def edm(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_in, c_skip, c_out, timestep) for sigmas shaped to broadcast over ``b f c h w``."""
    c_in = 1 / (sigma**2 + 1).sqrt()
    return c_in, 1 / (sigma**2 + 1), -sigma * c_in, 0.25 * sigma.log().flatten()


def train_unet(cfg: SVDDemoConfig, clips, vae, image_encoder, log: list, snapshot=None) -> SVDUNet:
    from ..pipelines.stable_video_diffusion import clip_pixels

    unet = build_unet(cfg).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr)
    g = torch.Generator().manual_seed(cfg.seed + 2)
    sf = vae.config.scaling_factor
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    start = time.perf_counter()
    for step in range(1, cfg.unet_steps + 1):
        lr = cfg.unet_lr * min(1.0, step / cfg.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.unet_steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = clips[torch.randint(len(clips), (cfg.unet_batch,), generator=g)]  # b f 3 h w
        b, f = batch.shape[:2]
        with torch.no_grad():
            x = vae.encode(batch.flatten(0, 1)).mode().unflatten(0, (b, f)) * sf  # b f 4 h w
            aug = torch.rand(b, generator=g) * cfg.max_noise_aug
            first = batch[:, 0] + aug.view(b, 1, 1, 1) * torch.randn(batch[:, 0].shape, generator=g)
            cond = vae.encode(first).mode()[:, None].expand(-1, f, -1, -1, -1)  # not scaled, as SVD
            pixels = clip_pixels((batch[:, 0] + 1) / 2, 224).float()  # as the pipeline prepares CLIP's input
            embeds = image_encoder((pixels - mean) / std).image_embeds[:, None]
            keep = (torch.rand(b, generator=g) >= cfg.cond_dropout).float()
            cond, embeds = cond * keep.view(b, 1, 1, 1, 1), embeds * keep.view(b, 1, 1)
        sigma = (cfg.p_mean + cfg.p_std * torch.randn(b, generator=g)).exp().view(b, 1, 1, 1, 1)
        c_in, c_skip, c_out, t = edm(sigma)
        noisy = x + sigma * torch.randn(x.shape, generator=g)
        ids = torch.stack([torch.full((b,), FPS - 1.0), torch.full((b,), float(MOTION_BUCKET)), aug], dim=1)
        v = unet(torch.cat([noisy * c_in, cond], dim=2), t, embeds, ids)
        x0 = c_skip * noisy + c_out * v
        weight = (sigma**2 + 1) / sigma**2
        loss = (weight * (x0 - x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), unet.parameters()):
                p_ema.lerp_(p, 1 - cfg.ema_decay)
        if step % cfg.log_every == 0 or step == cfg.unet_steps:
            log.append({"step": step, "loss": float(loss), "lr": lr, "seconds": round(time.perf_counter() - start, 1)})
            print(f"unet step {step}: loss {float(loss):.4f}", flush=True)
        if snapshot is not None and cfg.snapshot_every and step % cfg.snapshot_every == 0:
            snapshot(step, ema)
    return ema


def write_pipeline(folder: Path, vae, image_encoder, unet) -> None:
    """A diffusers-layout StableVideoDiffusionPipeline folder with fp16 weights."""
    from transformers import CLIPImageProcessor

    folder.mkdir(parents=True, exist_ok=True)
    for name, module in (("unet", unet), ("vae", vae)):
        (folder / name).mkdir(exist_ok=True)
        save_diffusers(copy.deepcopy(module).cpu().half(), folder / name)
    copy.deepcopy(image_encoder).half().save_pretrained(str(folder / "image_encoder"))
    config_file = folder / "image_encoder" / "config.json"
    config = json.loads(config_file.read_text())
    config["torch_dtype"] = "float32"  # stored fp16, loaded as float32 by default
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(
        str(folder / "feature_extractor"))
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2) + "\n")
    index = {"_class_name": "StableVideoDiffusionPipeline", "_diffusers_version": "0.42.1",
             "feature_extractor": ["transformers", "CLIPImageProcessor"],
             "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
             "scheduler": ["diffusers", "EulerDiscreteScheduler"],
             "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
             "vae": ["diffusers", "AutoencoderKLTemporalDecoder"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output pipeline folder")
    ap.add_argument("--vae-steps", type=int, default=None)
    ap.add_argument("--unet-steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
    ap.add_argument("--vae-from", default=None, metavar="DIR",
                    help="reuse the autoencoder of an earlier run's pipeline folder (skips part 1)")
    args = ap.parse_args(argv)
    cfg = SVDDemoConfig()
    for item in args.set:
        key, value = item.split("=", 1)
        cfg = replace(cfg, **{key: type(getattr(cfg, key))(json.loads(value))})
    for key in ("vae_steps", "unet_steps", "seed"):
        if getattr(args, key) is not None:
            cfg = replace(cfg, **{key: getattr(args, key)})
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(args.out)
    start = time.perf_counter()
    clips = make_clips(cfg, cfg.num_clips, cfg.seed)
    log = {"command": "python -m vidcore.demo.train_svd " + " ".join(argv or []), "config": asdict(cfg),
           "threads": cfg.threads, "torch": torch.__version__, "vae_loss": [], "unet_loss": []}
    if args.vae_from is not None:
        from ..loading import load_model

        vae = load_model(Path(args.vae_from) / "vae").float().eval()
        log["vae_from"] = str(args.vae_from)
    else:
        vae = train_vae(cfg, clips, log["vae_loss"])
    log["scaling_factor"] = vae.config.scaling_factor
    image_encoder = build_image_encoder(cfg).requires_grad_(False)

    def snapshot(step, ema):
        write_pipeline(out.parent / f"{out.name}-step{step}", vae, image_encoder, ema)

    unet = train_unet(cfg, clips, vae, image_encoder, log["unet_loss"], snapshot)
    write_pipeline(out, vae, image_encoder, unet)
    log["wall_seconds"] = round(time.perf_counter() - start, 1)
    log["parameters"] = {"vae": sum(p.numel() for p in vae.parameters()),
                         "unet": sum(p.numel() for p in unet.parameters()),
                         "image_encoder": sum(p.numel() for p in image_encoder.parameters())}
    (out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
    print(f"wrote {out} in {log['wall_seconds']} s")
    return 0


__all__ = ["SVDDemoConfig", "main", "train_unet", "train_vae", "write_pipeline"]

if __name__ == "__main__":
    raise SystemExit(main())
