"""``train_lora(config)``: fine-tune a LoRA on a text-to-video model from a folder of captioned clips.

    from vidcore.training import TrainLoRAConfig, train_lora
    path = train_lora(TrainLoRAConfig(model="cerspense/zeroscope_v2_576w", data_dir="clips/", output_dir="out/",
                                      num_frames=16, height=320, width=576, steps=500))
    pipe.load_lora_weights(path)

The objective is the one the model was trained with: encode the clip with the frozen VAE (no gradient), draw
noise and a timestep on the scheduler's training schedule (DDPM forward process), and regress the UNet's
output on the noise (epsilon models) or on v (v-prediction models) with an MSE. Only the LoRA branches train
(AdamW); the UNet, VAE and text encoder stay frozen.

Reproducibility is by construction: every random draw of a training sample (its frames, crop, VAE posterior
sample, noise and timestep) comes from a generator seeded by (seed, the sample's number in the run), and the
clip order from a seeded permutation per epoch. Checkpoints store the LoRA's raw parameters, the optimizer, the
EMA, the data order and the RNG states, so a run killed and resumed ends with the same weights, bit for bit, as
one that ran through; and N processes under torchrun (each taking samples r::N of every global batch, their
gradients averaged) compute what one process with the N-times batch does (with LoRA dropout 0: dropout draws from
each process's own generator).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ArgumentError, CheckpointError, UnsupportedFeatureError
from . import ddp as dist_utils
from .checkpoint import capture_rng, latest_checkpoint, list_checkpoints, load_checkpoint, restore_rng, save_checkpoint
from .config import RESUME_KEYS, TrainLoRAConfig
from .data import EpochOrder, VideoFolder
from .lora import LoRAConfig, add_lora, lora_layers, save_lora
from .motion_director import (SPATIAL_MASK_PROBABILITY, branches, debiased_loss, motion_director_targets,
                              split_layers)

LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' load_lora_weights(folder) default name
SPATIAL_LORA_FILE = "spatial_lora_weights.safetensors"  # MotionDirector's appearance LoRA
LOG_FILE = "train_log.json"


# ------------------------------------------------------------------------------------- random draws


def sample_generator(seed: int, number: int) -> torch.Generator:
    """The generator of training sample ``number`` (counted over the whole run): what it draws depends on
    nothing else, not on the process that draws it or on where the run was resumed."""
    return torch.Generator().manual_seed((seed * 1_000_003 + number * 7_919 + 1) % (2**63 - 1))


def step_generator(seed: int, micro_step: int) -> torch.Generator:
    """Draws shared by the whole global batch of one micro-step (MotionDirector's frame, anchor and mask)."""
    return torch.Generator().manual_seed((seed * 2_000_003 + micro_step * 104_729 + 2) % (2**63 - 1))


# ------------------------------------------------------------------------------------- loading


def load_pipeline(config: TrainLoRAConfig):
    """The pipeline (float32) as ``vidcore generate`` loads it: AnimateDiff for a motion adapter or a saved
    AnimateDiff folder, else ModelScope/Zeroscope's TextToVideoPipeline."""
    from .. import hub
    from ..pipelines.animatediff import AnimateDiffPipeline
    from ..pipelines.text_to_video import TextToVideoPipeline

    kwargs = {"torch_dtype": torch.float32, "variant": config.variant}
    if config.motion_adapter is not None:
        return AnimateDiffPipeline.from_pretrained(config.model, motion_adapter=config.motion_adapter, **kwargs)
    root = hub.resolve(config.model, allow_patterns=["model_index.json"])
    index = root / "model_index.json"
    name = hub.load_config(root, "model_index.json").get("_class_name") if index.is_file() else None
    if name == "AnimateDiffPipeline":
        return AnimateDiffPipeline.from_pretrained(config.model, **kwargs)
    if name in (None, "TextToVideoSDPipeline", "TextToVideoPipeline"):
        return TextToVideoPipeline.from_pretrained(config.model, **kwargs)
    if name == "StableDiffusionPipeline":
        raise ArgumentError(f"{config.model} is an image model: pass motion_adapter (CLI: --motion-adapter) to train "
                            "an AnimateDiff LoRA on it")
    raise UnsupportedFeatureError(f"LoRA training supports ModelScope/Zeroscope text-to-video and AnimateDiff "
                                  f"pipelines; {config.model} is a {name}")


def _device(config: TrainLoRAConfig) -> torch.device:
    if config.device is not None:
        device = torch.device(config.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ArgumentError(f"device {config.device}: no CUDA GPU is available here")
        if device.type == "cuda" and device.index is None:  # under torchrun: one GPU per process
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


# ------------------------------------------------------------------------------------- the run


class TrainingRun:
    """The state of one training run (pipeline with LoRA branches, optimizer, EMA, data order, log) and its steps:
    what :func:`train_lora` drives. Public for people who change a piece (the batch, the target, the loss) in a
    subclass or drive the steps themselves."""

    def __init__(self, config: TrainLoRAConfig, ddp: dist_utils.Distributed, device: torch.device,
                 dataset: VideoFolder):
        self.cfg, self.ddp, self.device, self.dataset = config, ddp, device, dataset
        self.out = Path(config.output_dir)
        self.pipe = pipe = load_pipeline(config)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        for name in ("vae", "text_encoder"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.requires_grad_(False).eval()
        self.unet = pipe.unet
        target = motion_director_targets() if config.motion_director else config.target
        with torch.random.fork_rng(devices=[]):  # the branches' random init: the same on every process and run
            torch.manual_seed(config.seed)
            self.layers = add_lora(self.unet, LoRAConfig(config.rank, config.alpha, target, config.dropout))
        self._train_mode()
        if config.gradient_checkpointing:
            if not hasattr(self.unet, "enable_gradient_checkpointing"):
                raise UnsupportedFeatureError(f"gradient checkpointing is not available for {type(self.unet).__name__} "
                                              "in this vidcore version")
            self.unet.enable_gradient_checkpointing()
        from ..schedulers import DDPMScheduler

        self.noise_schedule = DDPMScheduler.from_config(pipe.scheduler.to_diffusers_config())
        self.prediction_type = self.noise_schedule.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise UnsupportedFeatureError(f"training supports epsilon and v_prediction models; this scheduler "
                                          f"predicts {self.prediction_type!r}")
        self.named_params = {n: p for n, p in self.unet.named_parameters() if p.requires_grad}
        self.params = list(self.named_params.values())
        self.spatial, self.temporal = split_layers(self.unet) if config.motion_director else ({}, {})
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type) if config.mixed_precision == "fp16" else None
        self.ema = {n: p.detach().clone().float() for n, p in self.named_params.items()} if config.ema else None
        self.order = EpochOrder(len(dataset), config.seed)
        self.step = 0
        self.log: list[dict] = []
        self.texts: dict[str, torch.Tensor] = {}

    def _train_mode(self) -> None:
        """The frozen model in eval mode, the LoRA branches in train mode. ModelScope's temporal convolutions carry
        dropout 0.1; in train mode it would add noise to the frozen features that the branches cannot learn from
        and make the result depend on how the batch is split over processes. LoRA dropout is ``config.dropout``."""
        self.unet.eval()
        for _, linear in lora_layers(self.unet):
            linear.lora.train()

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step, "config": self.cfg.to_dict(),
            "lora": {n: p.detach().cpu().clone() for n, p in self.named_params.items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": {n: t.cpu().clone() for n, t in self.ema.items()} if self.ema is not None else None,
            "order": self.order.state_dict(), "log": list(self.log),
            "rng": dist_utils.gather_objects(capture_rng(), self.ddp), "world_size": self.ddp.world_size,
        }

    def load_state_dict(self, state: dict, where: Path) -> None:
        old, new = state["config"], self.cfg.to_dict()
        changed = [k for k in RESUME_KEYS if old.get(k) != new.get(k)]
        if changed:
            k = changed[0]
            raise CheckpointError(f"{where} was trained with {k}={old.get(k)!r}, this run has {k}={new.get(k)!r}: "
                                  "resume with the same settings or start a new --output")
        if state["world_size"] != self.ddp.world_size:
            raise CheckpointError(f"{where} was written by {state['world_size']} processes, this run has "
                                  f"{self.ddp.world_size}: resume with the same number")
        if set(state["lora"]) != set(self.named_params):
            raise CheckpointError(f"{where} holds other LoRA layers than this model has")
        with torch.no_grad():
            for n, p in self.named_params.items():
                p.copy_(state["lora"][n])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema = {n: t.to(self.device) for n, t in state["ema"].items()}
        self.order.load_state_dict(state["order"])
        self.log = list(state["log"])
        self.step = state["step"]
        restore_rng(state["rng"][self.ddp.rank])

    # -- one step -----------------------------------------------------------------------------
    def _text(self, caption: str) -> torch.Tensor:
        if caption not in self.texts:
            with torch.no_grad():
                self.texts[caption] = self.pipe.embed_prompts([caption], self.device)[0]
        return self.texts[caption]

    def batch(self, micro_step: int):
        """This process's share of the global batch of ``micro_step``: (latents, noise, timesteps, text)."""
        cfg, world = self.cfg, self.ddp.world_size
        size = cfg.batch_size * world
        clips = self.order.take(size)  # every process advances the order by the whole global batch
        pixels, gens, texts = [], [], []
        for j in range(self.ddp.rank, size, world):
            g = sample_generator(cfg.seed, micro_step * size + j)
            x, caption = self.dataset.item(clips[j], g)
            pixels.append(x)
            gens.append(g)
            texts.append(self._text(caption))
        video = torch.stack(pixels).to(self.device)  # b 3 f h w
        b, _, f, h, w = video.shape
        vae = self.pipe.vae
        with torch.no_grad():
            post = vae.encode(video.transpose(1, 2).reshape(b * f, 3, h, w).to(vae.dtype))
        mean = post.mean.float().reshape(b, f, *post.mean.shape[1:]).transpose(1, 2)  # b c f h' w'
        std = post.std.float().reshape(b, f, *post.std.shape[1:]).transpose(1, 2)
        eps = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in gens]).to(self.device)
        latents = (mean + std * eps) * vae.config.scaling_factor
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in gens]).to(self.device)
        t = torch.stack([torch.randint(0, self.noise_schedule.num_train_timesteps, (), generator=g) for g in gens])
        return latents, noise, t.to(self.device), torch.stack(texts)

    def regression_target(self, latents, noise, t):
        """What the UNet's output is regressed on: the noise (epsilon models) or v = sqrt(a) noise - sqrt(1-a) x0."""
        if self.prediction_type == "epsilon":
            return noise
        a = self.noise_schedule.alphas_cumprod.to(self.device)[t].view(-1, 1, 1, 1, 1)
        return a.sqrt() * noise - (1 - a).sqrt() * latents  # v

    def _autocast(self):
        mp = self.cfg.mixed_precision
        if mp == "no":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if mp == "bf16" else torch.float16)

    def _backward(self, loss: torch.Tensor) -> None:
        loss = loss / self.cfg.gradient_accumulation_steps
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _micro_step(self, micro_step: int) -> dict[str, float]:
        """Forward and backward of one micro-batch; returns its losses ({"loss"}; MotionDirector adds
        "temporal_loss" and, when its spatial path ran, "spatial_loss"; "loss" is their sum)."""
        latents, noise, t, text = self.batch(micro_step)
        noisy = self.noise_schedule.add_noise(latents, noise, t)
        target = self.regression_target(latents, noise, t)
        if not self.cfg.motion_director:
            with self._autocast():
                pred = self.unet(noisy, t, text)
            loss = F.mse_loss(pred.float(), target.float())
            self._backward(loss)
            return {"loss": loss.item()}
        # MotionDirector: spatial path on one frame, temporal path on the clip (see motion_director.py)
        g = step_generator(self.cfg.seed, micro_step)
        frame = int(torch.randint(0, latents.shape[2], (1,), generator=g))
        anchor = int(torch.randint(0, latents.shape[2], (1,), generator=g))
        skip_spatial = bool(torch.rand((), generator=g) < SPATIAL_MASK_PROBABILITY)
        losses = {}
        # backward runs inside each path's branch settings: gradient checkpointing recomputes the forward there
        if not skip_spatial:
            with branches(self.temporal, on=False, train=False):
                with self._autocast():
                    pred = self.unet(noisy[:, :, frame:frame + 1], t, text)
                loss = F.mse_loss(pred.float(), target[:, :, frame:frame + 1].float())
                self._backward(loss)
            losses["spatial_loss"] = loss.item()
        with branches(self.spatial, on=not skip_spatial, train=False):
            with self._autocast():
                pred = self.unet(noisy, t, text)
            loss = F.mse_loss(pred.float(), target.float()) + debiased_loss(pred, target, anchor)
            self._backward(loss)
        losses["temporal_loss"] = loss.item()
        return {"loss": sum(losses.values()), **losses}

    def train_step(self) -> float:
        cfg = self.cfg
        lr = cfg.learning_rate  # constant after a linear warm-up
        if cfg.lr_warmup_steps:
            lr *= min(1.0, (self.step + 1) / cfg.lr_warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        parts = [self._micro_step(self.step * cfg.gradient_accumulation_steps + k)
                 for k in range(cfg.gradient_accumulation_steps)]
        dist_utils.average_gradients(self.params, self.ddp)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grads = [p for p in self.params if p.grad is not None]  # the global batch's gradient norm, before clipping
        norm = float(torch.nn.utils.clip_grad_norm_(grads, cfg.max_grad_norm or float("inf"))) if grads else 0.0
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:  # decay warmed up as (1 + n) / (10 + n): early steps are not averaged with the init
            decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))
            with torch.no_grad():
                for n, p in self.named_params.items():
                    self.ema[n].lerp_(p.detach().float(), 1 - decay)
        self.step += 1
        # each loss: the mean over the micro-steps that have it, then over the processes (which have the same ones)
        losses = {}
        for key in dict.fromkeys(k for p in parts for k in p):
            values = [p[key] for p in parts if key in p]
            losses[key] = dist_utils.mean_over_processes(sum(values) / len(values), self.ddp)
        self.log.append({"step": self.step, **losses, "grad_norm": norm, "lr": lr})
        return losses["loss"]

    # -- files (rank 0) -----------------------------------------------------------------------
    def _save_lora(self, path: Path, layers: dict | None = None, weights: dict | None = None) -> Path:
        """The LoRA (or the ``layers`` subset) in the peft layout with ``unet.`` keys; ``weights``: values to
        write instead of the live parameters (the EMA)."""
        return save_lora(self.unet, path, values=weights, layers=layers)

    def write_loras(self, folder: Path, suffix: str = "", weights: dict | None = None) -> list[Path]:
        if not self.cfg.motion_director:
            return [self._save_lora(folder / LORA_FILE.replace(".safetensors", f"{suffix}.safetensors"), None, weights)]
        return [self._save_lora(folder / LORA_FILE.replace(".safetensors", f"{suffix}.safetensors"), self.temporal,
                                weights),
                self._save_lora(folder / SPATIAL_LORA_FILE.replace(".safetensors", f"{suffix}.safetensors"),
                                self.spatial, weights)]

    def checkpoint(self) -> None:
        state = self.state_dict()  # every process takes part (RNG states are gathered)
        if self.ddp.is_main:
            save_checkpoint(self.out, self.step, state, lambda path: self._save_lora(path, self.temporal or None),
                            self.cfg.keep_checkpoints)
        dist_utils.barrier(self.ddp)

    def sample(self) -> Path | None:
        """A video from the current LoRA (MotionDirector: the temporal one alone) at ``samples/step_N.mp4``."""
        if not self.ddp.is_main:
            return None
        from ..io import export_to_video

        cfg = self.cfg
        prompt = cfg.sample_prompt if cfg.sample_prompt is not None else self.dataset.clips[0].caption
        self.unet.eval()
        try:
            with branches(self.spatial, on=False, train=False):
                frames = self.pipe(prompt=prompt, num_frames=cfg.num_frames, height=cfg.height, width=cfg.width,
                                   num_inference_steps=cfg.sample_steps, guidance_scale=cfg.sample_guidance_scale,
                                   generator=torch.Generator().manual_seed(cfg.seed), output_type="np").frames[0]
        finally:
            self._train_mode()
        path = self.out / "samples" / f"step_{self.step:06d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        return Path(export_to_video(frames, path, fps=8))

    def finish(self, seconds: float) -> Path:
        paths = self.write_loras(self.out)
        if self.ema is not None:
            self.write_loras(self.out, "_ema", self.ema)
        log = {"config": self.cfg.to_dict(), "steps": self.step, "processes": self.ddp.world_size,
               "clips": len(self.dataset), "lora_layers": self.layers, "prediction_type": self.prediction_type,
               "trainable_parameters": sum(p.numel() for p in self.params), "seconds": round(seconds, 2),
               "torch": torch.__version__, "loss": self.log}
        tmp = self.out / f".{LOG_FILE}.tmp"
        tmp.write_text(json.dumps(log, indent=1) + "\n")
        os.replace(tmp, self.out / LOG_FILE)
        return paths[0]


def _resume_from(config: TrainLoRAConfig, out: Path) -> Path | None:
    if config.resume is False:
        if list_checkpoints(out):
            raise ArgumentError(f"{out} already has training checkpoints: pass resume=True (CLI: --resume) to "
                                "continue that run, or choose another output folder")
        return None
    if config.resume is True:
        return latest_checkpoint(out)
    folder = Path(config.resume)
    if not folder.is_dir():
        raise CheckpointError(f"resume: checkpoint folder {folder} does not exist")
    return folder


def train_lora(config: TrainLoRAConfig, callback: Callable[[int, float], None] | None = None) -> Path:
    """Train a LoRA as ``config`` says (see :class:`TrainLoRAConfig`); returns the path of the final
    ``pytorch_lora_weights.safetensors`` (MotionDirector: the temporal LoRA; the spatial one is beside it as
    ``spatial_lora_weights.safetensors``). ``callback(step, loss)`` runs after every optimizer step (after that
    step's checkpoint and sample). Under torchrun every process calls it; only rank 0 writes files and the path
    is returned on every process. A fresh run seeds the global torch and ``random`` generators with ``seed`` +
    rank (LoRA dropout draws from them); a resumed run restores them from the checkpoint."""
    if not isinstance(config, TrainLoRAConfig):
        raise ArgumentError(f"train_lora takes a TrainLoRAConfig, got {type(config).__name__}")
    start = time.perf_counter()
    device = _device(config)
    dataset = VideoFolder(config.data_dir, config.num_frames, config.height, config.width, config.sample_stride,
                          config.crop)  # data errors before the (slow) model load
    out = Path(config.output_dir)
    resume = _resume_from(config, out)
    created_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    ddp = dist_utils.init_distributed(device)
    created_group = created_group and ddp.enabled
    try:
        if ddp.is_main:
            out.mkdir(parents=True, exist_ok=True)
        run = TrainingRun(config, ddp, device, dataset)
        if resume is not None:
            run.load_state_dict(load_checkpoint(resume), resume)
        else:
            torch.manual_seed(config.seed + ddp.rank)  # the global RNG: LoRA dropout
            random.seed(config.seed + ddp.rank)
        bar = None
        if config.progress and ddp.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=config.steps, initial=run.step, desc="train lora", unit="step", dynamic_ncols=True)
        while run.step < config.steps:
            loss = run.train_step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
            if config.checkpoint_every and run.step % config.checkpoint_every == 0:
                run.checkpoint()
            if config.sample_every and run.step % config.sample_every == 0:
                run.sample()
            if callback is not None:
                callback(run.step, loss)
        if bar is not None:
            bar.close()
        path = run.finish(time.perf_counter() - start) if ddp.is_main else out / LORA_FILE
        dist_utils.barrier(ddp)
        return path
    finally:
        if created_group:
            torch.distributed.destroy_process_group()


__all__ = ["LOG_FILE", "LORA_FILE", "SPATIAL_LORA_FILE", "TrainLoRAConfig", "TrainingRun", "load_pipeline",
           "sample_generator", "step_generator", "train_lora"]
