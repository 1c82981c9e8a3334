"""Measured peaks (issue #29): the peak memory of each stage of a whole call (encode, denoise, decode), diffusers and
vidcore side by side at equal settings, for SVD, AnimateDiff, ModelScope text-to-video and I2VGen-XL.

    .venv/bin/python benchmarks/bench_memory.py --quick                 # tiny size, every family and setting
    .venv/bin/python benchmarks/bench_memory.py --families svd,t2v --settings diffusers-default,default,low-memory
    .venv/bin/python benchmarks/bench_memory.py --device cuda --dtype bfloat16 --size small

Each family's random diffusers pipeline (the layouts of the bench_*_cpu.py whole-pipeline scripts; I2VGen-XL's at
the same width) is saved once; every (library, setting) then runs in a fresh process that loads it, applies the
setting, makes one warm-up call (1 step, same shapes) and one measured call (``--steps``; peaks do not depend on
the step count). The processes are forked from one server that has imported diffusers, transformers and vidcore
and done no tensor work, so each starts from the same imports (in a second, not the ~10 s of a new interpreter).
Stage boundaries come from forward pre-hooks: the call starts in "encode" (text / image encoders, the image's VAE
encode), the UNet's first forward starts "denoise", the VAE decoder's first forward starts "decode" (which holds
the postprocessing to numpy as well). At each boundary:
  - CPU: the processes run with MALLOC_MMAP_THRESHOLD_=65536 (large buffers mmapped, returned on free); the peak
    RSS is reset (``5 > /proc/self/clear_refs``: VmHWM := VmRSS) and the stage's value is VmHWM at its end minus
    VmRSS at its start: the memory the stage adds to what is resident (weights, earlier results). "resident" is
    the RSS before the measured call minus the RSS at the fork (weights and caches, not the imports).
  - CUDA: ``torch.cuda.reset_peak_memory_stats`` at the start, ``torch.cuda.max_memory_allocated`` at the end:
    everything allocated on the GPU during the stage, resident weights included (what a small GPU must hold);
    "resident" is ``memory_allocated`` before the call.
Time per stage is wall time between the boundaries (synchronized on CUDA). Drift is the PSNR of the decoded frames
against the same library's default setting (same seed); fp8 rows compute in bf16, so their drift holds that too.

A setting whose method this checkout lacks is listed as "not in this checkout" and not run. Linux only.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common import DTYPES, add_repo_paths, loadavg, print_machine

add_repo_paths()

# ----------------------------------------------------------------------------- families and sizes

SIZES = {  # frames, height, width
    "tiny": (4, 64, 64),
    "small": (8, 128, 128),
    "medium": (16, 256, 256),
}
VAE_2D = dict(block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_num_groups=8)
T2V_UNET = dict(block_out_channels=(32, 64, 128, 128), layers_per_block=2, attention_head_dim=16, norm_num_groups=16,
                cross_attention_dim=64)
I2VGEN_UNET = dict(block_out_channels=(32, 64, 128, 128), layers_per_block=2, norm_num_groups=16,
                   cross_attention_dim=64,
                   down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
                   up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3, attention_head_dim=16,
                   num_attention_heads=None)
SVD_UNET = dict(block_out_channels=(32, 64, 128, 128),
                down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
                up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
                num_attention_heads=(2, 4, 8, 8), cross_attention_dim=64, layers_per_block=2,
                addition_time_embed_dim=32, projection_class_embeddings_input_dim=96, num_frames=14)
SVD_VAE = dict(block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4, layers_per_block=1)
MOTION_UNET = dict(block_out_channels=(32, 64, 128, 128),
                   down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                   up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, attention_head_dim=(2, 4, 8, 8),
                   norm_num_groups=16, cross_attention_dim=64)
MOTION_ADAPTER = dict(block_out_channels=(32, 64, 128, 128), motion_norm_num_groups=16,
                      motion_num_attention_heads=(2, 4, 8, 8), motion_max_seq_length=32, use_motion_mid_block=True)


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    unet: dict  # the UNet's config overrides (its widths are printed in the header)
    recipe: str  # diffusers' documented low-memory recipe for it, as the "diffusers-recipe" row runs it
    decode_chunk: int | None  # the recipe's decode_chunk_size (None: VAE slicing, the pipeline takes no chunk size)


FAMILIES = {
    "svd": Family("svd", "Stable Video Diffusion", SVD_UNET,
                  "unet.enable_forward_chunking() + decode_chunk_size=2 (svd.md)", 2),
    "animatediff": Family("animatediff", "AnimateDiff", MOTION_UNET,
                          "unet.enable_forward_chunking() + decode_chunk_size=2", 2),
    "t2v": Family("t2v", "ModelScope text-to-video", T2V_UNET,
                  "unet.enable_forward_chunking() + vae.enable_slicing() (text_to_video.md)", None),
    "i2vgen": Family("i2vgen", "I2VGen-XL", I2VGEN_UNET,
                     "unet.enable_forward_chunking() + decode_chunk_size=1 (its default)", 1),
}


def build(family: str, root: Path) -> None:
    """Save the family's random diffusers pipeline (AnimateDiff: an SD1.5 folder + a MotionAdapter) under root."""
    import tiny

    if family == "svd":
        tiny.build_tiny_svd_pipeline(root, unet_overrides=SVD_UNET, vae_overrides=SVD_VAE)
    elif family == "t2v":
        tiny.build_tiny_t2v_pipeline(root, unet_overrides=T2V_UNET, vae_overrides=VAE_2D)
    elif family == "i2vgen":
        tiny.build_tiny_i2vgen_pipeline(root, unet_overrides=I2VGEN_UNET, vae_overrides=VAE_2D)
    else:
        import tiny_animatediff

        tiny_animatediff.build_tiny_animatediff(root, unet_overrides=MOTION_UNET, adapter_overrides=MOTION_ADAPTER,
                                                vae_overrides=VAE_2D)


def load(family: str, lib: str, root: Path):
    if lib == "diffusers":
        import diffusers

        if family == "animatediff":
            import tiny_animatediff

            adapter = diffusers.MotionAdapter.from_pretrained(root / "adapter")
            return diffusers.AnimateDiffPipeline.from_pretrained(
                root / "sd", motion_adapter=adapter, scheduler=tiny_animatediff.recommended_ddim(root / "sd"))
        cls = {"svd": "StableVideoDiffusionPipeline", "t2v": "TextToVideoSDPipeline", "i2vgen": "I2VGenXLPipeline"}
        return getattr(diffusers, cls[family]).from_pretrained(root)
    import vidcore

    if family == "animatediff":
        from vidcore.pipelines.animatediff import animatediff_scheduler

        return vidcore.AnimateDiffPipeline.from_pretrained(
            root / "sd", motion_adapter=root / "adapter",
            scheduler=animatediff_scheduler(root / "sd" / "scheduler" / "scheduler_config.json"))
    cls = {"svd": "StableVideoDiffusionPipeline", "t2v": "TextToVideoPipeline", "i2vgen": "I2VGenXLPipeline"}
    return getattr(vidcore, cls[family]).from_pretrained(root)


def call_kwargs(family: str, size: str, steps: int) -> dict:
    frames, h, w = SIZES[size]
    kwargs = dict(num_frames=frames, height=h, width=w, num_inference_steps=steps, output_type="np")
    if family in ("svd", "i2vgen"):
        from PIL import Image

        pixels = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        kwargs["image"] = Image.fromarray(pixels)
    if family != "svd":
        kwargs.update(prompt="a red panda eating bamboo", negative_prompt="blurry")
    if family == "i2vgen":  # diffusers' clip_skip=1 default reads text_encoder.text_model, gone in transformers 5
        kwargs["clip_skip"] = None
    return kwargs


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Setting:
    lib: str
    label: str  # what runs, for the table
    needs: tuple[tuple[str, str], ...] = ()  # (where: "pipe" | "unet", method) this checkout must have
    fp8: bool = False  # bf16 compute with fp8 weight storage


SETTINGS = {
    "diffusers-default": Setting("diffusers", "diffusers default"),
    "diffusers-recipe": Setting("diffusers", "diffusers' low-memory recipe (+ model CPU offload on CUDA)"),
    "diffusers-fp8": Setting("diffusers", "diffusers unet.enable_layerwise_casting(float8_e4m3fn, bf16)", fp8=True),
    "default": Setting("vidcore", "vidcore default"),
    "recipe": Setting("vidcore", "diffusers' recipe, in vidcore"),
    "fp8": Setting("vidcore", "pipe.enable_layerwise_casting(float8_e4m3fn, bf16)",
                   (("pipe", "enable_layerwise_casting"),), fp8=True),
    "split-guidance": Setting("vidcore", 'pipe.set_guidance_batching("split")', (("pipe", "set_guidance_batching"),)),
    "chunking": Setting("vidcore", "unet.enable_forward_chunking() + pipe.enable_attention_slicing()",
                        (("unet", "enable_forward_chunking"), ("pipe", "enable_attention_slicing"))),
    "decode-auto": Setting("vidcore", 'decode_chunk_size="auto"'),
    "decode-2": Setting("vidcore", "decode_chunk_size=2"),
    "low-memory": Setting("vidcore", "apply_low_memory(pipe, device)"),
}


def missing_methods(pipe, setting: Setting) -> list[str]:
    where = {"pipe": pipe, "unet": pipe.unet}
    return [f"{w}.{m}" for w, m in setting.needs if not callable(getattr(where[w], m, None))]


def refuses_auto_decode(pipe, family: str, size: str) -> str | None:
    """Why the pipeline refuses ``decode_chunk_size="auto"`` (its argument check's message), or None: tried with
    one step, since no method announces it."""
    try:
        with torch.inference_mode():
            pipe(**call_kwargs(family, size, 1), decode_chunk_size="auto", generator=torch.Generator().manual_seed(0))
    except (ValueError, TypeError) as err:
        if "decode_chunk_size" in str(err):
            return f'decode_chunk_size="auto" refused: {str(err).splitlines()[0]}'
        raise
    return None


def apply_setting(name: str, family: Family, pipe, device: str) -> tuple[dict, bool, str]:
    """Turn the setting on; returns (call arguments it adds, whether it placed the models, a note for the row)."""
    if name in ("diffusers-recipe", "recipe"):
        pipe.unet.enable_forward_chunking()
        if family.decode_chunk is None:
            pipe.vae.enable_slicing()
        cuda = device.startswith("cuda")
        if cuda:
            pipe.enable_model_cpu_offload(device=device)
        return _chunk(family), cuda, ""
    if name == "diffusers-fp8":
        pipe.unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    elif name == "fp8":
        pipe.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    elif name == "split-guidance":
        pipe.set_guidance_batching("split")
    elif name == "chunking":
        pipe.unet.enable_forward_chunking()
        pipe.enable_attention_slicing()
    elif name == "decode-auto":
        return {"decode_chunk_size": "auto"}, False, ""
    elif name == "decode-2":
        return {"decode_chunk_size": 2}, False, ""
    elif name == "low-memory":
        from vidcore.pipelines.low_memory import apply_low_memory

        preset = apply_low_memory(pipe, device)
        return preset.call_kwargs, preset.placed, str(preset)
    return {}, False, ""


def _chunk(family: Family) -> dict:
    return {} if family.decode_chunk is None else {"decode_chunk_size": family.decode_chunk}


# ----------------------------------------------------------------------------- measuring (in the subprocess)


def _status_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(field_name)


class StageMeter:
    """Peak memory and wall time per stage; ``enter(stage)`` closes the running stage and opens the next."""

    ORDER = ("encode", "denoise", "decode")

    def __init__(self, cuda: bool):
        self.cuda, self.stage, self.results = cuda, None, {}

    def _now(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.memory_allocated()
        return _status_kib("VmRSS") * 1024

    def enter(self, stage: str | None) -> None:
        if self.stage is not None:
            if self.cuda:
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated()
            else:
                peak = _status_kib("VmHWM") * 1024 - self.before
            self.results[self.stage] = dict(mib=peak / 2**20, s=time.perf_counter() - self.t0)
        self.stage = stage
        if stage is not None:
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            else:
                Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            self.before, self.t0 = self._now(), time.perf_counter()

    def hook(self, after: str, stage: str):
        """A forward pre-hook that opens ``stage`` when the running stage is ``after`` (later calls: nothing)."""
        def pre_hook(module, args):
            if self.stage == after:
                self.enter(stage)
        return pre_hook


def preload() -> None:
    """Import what any measurement imports, once, in the fork server: the children start from equal imports."""
    import diffusers
    import transformers
    import vidcore
    from vidcore.pipelines import animatediff, low_memory  # noqa: F401

    import tiny_animatediff  # noqa: F401

    for name in ("StableVideoDiffusionPipeline", "TextToVideoSDPipeline", "I2VGenXLPipeline", "AnimateDiffPipeline",
                 "MotionAdapter", "DDIMScheduler"):
        getattr(diffusers, name)
    for name in ("StableVideoDiffusionPipeline", "TextToVideoPipeline", "I2VGenXLPipeline", "AnimateDiffPipeline"):
        getattr(vidcore, name)
    for name in ("CLIPTextModel", "CLIPVisionModelWithProjection", "CLIPTokenizer", "CLIPImageProcessor"):
        getattr(transformers, name)


def server() -> None:
    """Import everything once (no tensor work), then fork one fresh child per job: stdin holds one JSON job per
    line, stdout gets the child's JSON line, then "done <exit code>". Each measurement is a new process whose
    only inheritance is the imports, at a fraction of a fresh interpreter's start-up."""
    preload()
    print("ready", flush=True)
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                child(argparse.Namespace(**json.loads(line)))
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(f"done {os.waitstatus_to_exitcode(status)}", flush=True)


def child(args) -> None:
    """One (family, library, setting) measurement; prints a JSON line."""
    if args.threads:
        torch.set_num_threads(args.threads)
    family, setting = FAMILIES[args.family], SETTINGS[args.setting]
    cuda = args.device.startswith("cuda")
    gc.collect()
    base = torch.cuda.memory_allocated() if cuda else _status_kib("VmRSS") * 1024
    pipe = load(args.family, setting.lib, Path(args.folder))
    pipe.set_progress_bar_config(disable=True)
    dtype = torch.bfloat16 if setting.fp8 else DTYPES[args.dtype]
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    extra, placed, note = apply_setting(args.setting, family, pipe, args.device)
    if not placed:
        pipe.to(args.device)
    kwargs = dict(call_kwargs(args.family, args.size, args.steps), **extra)
    meter = StageMeter(cuda)
    with torch.inference_mode():
        pipe(**dict(kwargs, num_inference_steps=1), generator=torch.Generator().manual_seed(0))  # warm-up
        pipe.unet.register_forward_pre_hook(meter.hook("encode", "denoise"))
        pipe.vae.decoder.register_forward_pre_hook(meter.hook("denoise", "decode"))
        gc.collect()
        resident = (torch.cuda.memory_allocated() if cuda else _status_kib("VmRSS") * 1024) - base
        meter.enter("encode")
        frames = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames
        meter.enter(None)
    if set(meter.results) != set(StageMeter.ORDER):
        raise RuntimeError(f"the stage hooks saw only {sorted(meter.results)} (UNet / VAE decoder not called as "
                           "modules?)")
    frames = np.asarray(frames.float().cpu() if isinstance(frames, torch.Tensor) else frames, dtype=np.float32)
    np.save(args.out, frames)
    print(json.dumps(dict(stages=meter.results, resident_mib=resident / 2**20, note=note)))


# ----------------------------------------------------------------------------- the run (parent)


def psnr(a: np.ndarray, b: np.ndarray) -> str:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return "exact" if mse == 0 else f"{10 * math.log10(1.0 / mse):.1f} dB"


class ForkServer:
    """The parent's end of :func:`server`: started with MALLOC_MMAP_THRESHOLD_=65536, its stderr in ``log``."""

    def __init__(self, log: Path):
        self.log = log
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        with open(log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, __file__, "server"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"the measuring server did not start: {log.read_text()[-2000:]}")

    def run(self, job: dict) -> dict:
        """One measurement: the child's JSON, or {"error": the last line it wrote to stderr}."""
        offset = self.log.stat().st_size
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        lines = []
        while not (line := self.proc.stdout.readline()).startswith("done "):
            if not line:
                raise SystemExit(f"the measuring server died: {self.log.read_text()[-2000:]}")
            lines.append(line)
        if line.split()[1] != "0":
            with open(self.log) as f:
                f.seek(offset)
                return {"error": (f.read().strip().splitlines() or ["?"])[-1]}
        return json.loads(next(x for x in reversed(lines) if x.startswith("{")))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


@dataclass
class FamilyRun:
    results: dict = field(default_factory=dict)  # setting -> child JSON


def run_family(name: str, args, tmp: Path, server: ForkServer) -> None:
    family = FAMILIES[name]
    root = tmp / name
    t0 = time.perf_counter()
    build(name, root)
    vid = load(name, "vidcore", root)
    vid.set_progress_bar_config(disable=True)
    params = sum(p.numel() for p in vid.unet.parameters()) / 1e6
    frames, h, w = SIZES[args.size]
    print(f"\n## {family.title}: {frames} frames {h}x{w}, {args.steps} steps, {args.dtype}, {args.device}, "
          f"UNet widths {family.unet['block_out_channels']}, {params:.2f} M parameters (built + saved in "
          f"{time.perf_counter() - t0:.1f} s)\n")
    print(f"diffusers' recipe here: {family.recipe}\n")
    if args.size == "tiny":
        print("(tiny: a stage's growth of a few MiB is near what page-level noise allows; judge ratios at --size small "
              "or larger)\n")
    header = ("setting", "what runs", "resident MiB", "encode MiB", "denoise MiB", "decode MiB",
              "denoise peak vs diffusers default", "call peak vs diffusers default", "encode s", "denoise s",
              "decode s", "PSNR vs own default")
    print("| " + " | ".join(header) + " |\n|" + "|".join("---" for _ in header) + "|", flush=True)
    run = FamilyRun()
    for sname in args.settings:
        setting = SETTINGS[sname]
        missing = missing_methods(vid, setting) if setting.lib == "vidcore" else []
        if sname == "decode-auto":
            missing = [m for m in [refuses_auto_decode(vid, name, args.size)] if m]
        if missing:
            print(f"| {sname} | {setting.label} | not in this checkout ({', '.join(missing)}) |", flush=True)
            continue
        out = tmp / f"{name}-{sname}.npy"
        result = server.run(dict(family=name, setting=sname, folder=str(root), size=args.size, steps=args.steps,
                                 dtype=args.dtype, device=args.device, threads=args.threads, out=str(out)))
        if "error" in result:
            print(f"| {sname} | {setting.label} | failed: {result['error']} |", flush=True)
            continue
        run.results[sname] = result
        print("| " + " | ".join(str(c) for c in row(sname, setting, result, run, tmp, name)) + " |", flush=True)
    summary(name, run)


def row(sname: str, setting: Setting, result: dict, run: FamilyRun, tmp: Path, family: str) -> tuple:
    st = result["stages"]
    base = run.results.get("diffusers-default")
    call_peak = max(s["mib"] for s in st.values())

    def ratio(value, ref):
        return f"{value / ref:.2f}x" if ref else "n/a"

    denoise_ratio = ratio(st["denoise"]["mib"], base and base["stages"]["denoise"]["mib"])
    call_ratio = ratio(call_peak, base and max(s["mib"] for s in base["stages"].values()))
    own_default = "diffusers-default" if setting.lib == "diffusers" else "default"
    ref = tmp / f"{family}-{own_default}.npy"
    drift = psnr(np.load(ref), np.load(tmp / f"{family}-{sname}.npy")) if ref.exists() else "n/a"
    label = setting.label + (f": {FAMILIES[family].recipe}" if sname in ("diffusers-recipe", "recipe") else "")
    label += f" [{result['note']}]" if result.get("note") else ""
    return (sname, label, f"{result['resident_mib']:.0f}", *(f"{st[s]['mib']:.1f}" for s in StageMeter.ORDER),
            denoise_ratio, call_ratio, *(f"{st[s]['s']:.2f}" for s in StageMeter.ORDER), drift)


def summary(name: str, run: FamilyRun) -> None:
    """The issue's target: the low-memory preset's denoise peak <= 0.5x diffusers' default pipeline's."""
    base, ours = run.results.get("diffusers-default"), run.results.get("low-memory")
    if not base or not ours:
        return
    r = ours["stages"]["denoise"]["mib"] / base["stages"]["denoise"]["mib"]
    print(f"\n{FAMILIES[name].title}: low-memory denoise peak {r:.3f}x diffusers default (issue #29 target <= 0.5x: "
          f"{'met' if r <= 0.5 else 'not met'})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", default="run", choices=("run", "server"))
    ap.add_argument("--families", default=",".join(FAMILIES), help=f"comma list of {', '.join(FAMILIES)}")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {', '.join(SETTINGS)}")
    ap.add_argument("--size", choices=tuple(SIZES), default="small",
                    help=", ".join(f"{k}: {f} frames {h}x{w}" for k, (f, h, w) in SIZES.items()))
    ap.add_argument("--steps", type=int, default=2, help="denoising steps of the measured call")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default: float32 on cpu, bfloat16 on cuda")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads; 0 = torch's default")
    ap.add_argument("--quick", action="store_true", help="--size tiny")
    args = ap.parse_args()
    if args.what == "server":
        return server()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.size = "tiny" if args.quick else args.size
    args.families = [f for f in args.families.split(",") if f]
    args.settings = [s for s in args.settings.split(",") if s]
    unknown = [f for f in args.families if f not in FAMILIES] + [s for s in args.settings if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown families / settings: {unknown}")
    if args.threads:
        torch.set_num_threads(args.threads)
    print("## Machine")
    print_machine()
    print(f"- command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    peaks = "torch.cuda.max_memory_allocated per stage" if args.device != "cpu" else "VmHWM growth per stage"
    print(f"- peaks: {peaks}"
          "; ratios against diffusers default at the same size and dtype")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        measure = ForkServer(Path(tmp) / "server.log")
        try:
            for name in args.families:
                run_family(name, args, Path(tmp), measure)
        finally:
            measure.close()
    print(f"\ntotal {time.perf_counter() - t0:.0f} s, load average after: {loadavg()}")


if __name__ == "__main__":
    main()
