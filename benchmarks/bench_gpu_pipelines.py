"""Whole pipelines on a GPU, diffusers against vidcore, in one process: real hub configs, random weights, fp16.

Timing does not depend on the weight values, so every model is built from its released config (held in
``vidcore.conversion.maps`` and below) with random weights: nothing is downloaded. The diffusers pipeline is
built on the device, saved in the hub layout to a temporary folder, and vidcore loads that folder, so both
run the same weights. The tokenizer is the tests' tiny CLIP vocabulary (the text encoder's embedding table
follows it; the text tower is otherwise the released one): prompt encoding is a negligible share of a call.

Per pipeline and variant: UNet step time (CUDA events around every UNet forward; median), whole-call time
(median over ``--repeats``), VAE decode time (summed over the call's decode calls) and the peak memory the
call allocates on top of the resident weights (``torch.cuda.max_memory_allocated``). Variants: diffusers;
vidcore with the SDPA and the Triton attention backend; vidcore with ``torch.compile(unet.forward, fullgraph=True)``
(``--compile``); vidcore with DeepCache when the pipeline has ``enable_deep_cache``. Each pipeline's rows are
printed as soon as it is measured, so a run that is cut off still reports.

    python benchmarks/bench_gpu_pipelines.py                  # all four, ~8 min on an H100/H200
    python benchmarks/bench_gpu_pipelines.py --quick          # SVD-XT and AnimateDiff, fewer steps, ~2 min
    python benchmarks/bench_gpu_pipelines.py --device cpu --tiny --steps 2 --compile none   # the CI check

Sizes: SVD-XT 576x1024, 25 frames, decode_chunk_size 8; AnimateDiff SD1.5 512x512, 16 frames, CFG; Zeroscope
576w 320x576, 24 frames, CFG; I2VGen-XL at 448x768 (not its 704x1280: that alone would take most of the time
budget), 16 frames, CFG. All 25 steps unless ``--steps``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_repo_paths  # noqa: E402

add_repo_paths()

import tiny  # noqa: E402  (tests/tiny.py: the tiny CLIP vocabulary and the tiny configs of --tiny)

import vidcore  # noqa: E402
import vidcore.hub  # noqa: E402
import vidcore.kernels  # noqa: E402
from vidcore.conversion.maps import original_modelscope, original_motion, original_sd, original_svd  # noqa: E402

# OpenCLIP ViT-H/14 text tower as the ModelScope/Zeroscope and I2VGen-XL repos ship it (transformers CLIPTextModel)
OPENCLIP_H_TEXT = dict(hidden_size=1024, num_hidden_layers=23, num_attention_heads=16, intermediate_size=4096,
                       hidden_act="gelu", projection_dim=512)
SD15_DDIM = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                 set_alpha_to_one=False, steps_offset=1)
SVD_EULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 prediction_type="v_prediction", interpolation_type="linear", sigma_min=0.002, sigma_max=700.0,
                 use_karras_sigmas=True, timestep_spacing="leading", timestep_type="continuous", steps_offset=1)
SD21_VAE = dict({k: v for k, v in original_sd.SD15_VAE_CONFIG.items() if not k.startswith("_")}, sample_size=768)
I2VGEN_DDIM = dict(beta_schedule="squaredcos_cap_v2", beta_start=1e-4, beta_end=0.02, prediction_type="v_prediction",
                   rescale_betas_zero_snr=True, set_alpha_to_one=True, steps_offset=1, timestep_spacing="leading",
                   clip_sample=False)


def _config(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _on_cpu(cls, **config):
    """A scheduler: its tables live on the CPU whatever device the models are built on (meta included)."""
    with torch.device("cpu"):
        return cls(**config)


def _text_encoder(tokenizer, **config):
    """A released CLIP text tower (``config``) whose embedding table fits the tiny ``tokenizer``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "vocab_size",
                                                           "max_position_embeddings", "torch_dtype", "dtype")}
    return CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=77, **config)).eval()


def _image_encoder():
    """SVD's and I2VGen-XL's image encoder: OpenCLIP ViT-H/14 as transformers' CLIPVisionModelWithProjection."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(**{k: v for k, v in original_svd.SVD_IMAGE_ENCODER_CONFIG.items()
                              if k not in ("architectures", "model_type")})
    return CLIPVisionModelWithProjection(cfg).eval(), CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224})


def _tokenizer():
    with tempfile.TemporaryDirectory() as tmp:
        return tiny.make_tiny_tokenizer(tmp)


def build_svd(tiny_mode: bool):
    from diffusers import (AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline,
                           UNetSpatioTemporalConditionModel)

    if tiny_mode:
        return StableVideoDiffusionPipeline(**tiny.build_tiny_svd_components())
    image_encoder, features = _image_encoder()
    return StableVideoDiffusionPipeline(
        vae=AutoencoderKLTemporalDecoder(**_config(original_svd.SVD_VAE_CONFIG)).eval(), image_encoder=image_encoder,
        unet=UNetSpatioTemporalConditionModel(**_config(original_svd.SVD_XT_UNET_CONFIG)).eval(),
        scheduler=_on_cpu(EulerDiscreteScheduler, **SVD_EULER), feature_extractor=features)


def build_animatediff(tiny_mode: bool):
    from diffusers import AnimateDiffPipeline, AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel

    if tiny_mode:
        parts = tiny.build_tiny_t2v_components()  # tokenizer, text encoder, VAE of the tiny family
        return AnimateDiffPipeline(vae=parts["vae"], text_encoder=tiny.make_tiny_text_encoder(
            hidden=tiny.tiny_unet2d_config()["cross_attention_dim"], tokenizer=parts["tokenizer"]),
            tokenizer=parts["tokenizer"], unet=UNet2DConditionModel(**tiny.tiny_unet2d_config()).eval(),
            motion_adapter=MotionAdapter(**tiny.tiny_motion_adapter_config()), scheduler=_on_cpu(DDIMScheduler, **SD15_DDIM))
    tokenizer = _tokenizer()
    return AnimateDiffPipeline(vae=AutoencoderKL(**_config(original_sd.SD15_VAE_CONFIG)).eval(),
                               text_encoder=_text_encoder(tokenizer, **_config(original_sd.SD15_TEXT_ENCODER_CONFIG)),
                               tokenizer=tokenizer, unet=UNet2DConditionModel(**_config(original_sd.SD15_UNET_CONFIG)).eval(),
                               motion_adapter=MotionAdapter(**_config(original_motion.DEFAULT_CONFIG)),
                               scheduler=_on_cpu(DDIMScheduler, **SD15_DDIM))


def build_zeroscope(tiny_mode: bool):
    from diffusers import AutoencoderKL, DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel

    if tiny_mode:
        return TextToVideoSDPipeline(**tiny.build_tiny_t2v_components())
    tokenizer = _tokenizer()
    return TextToVideoSDPipeline(vae=AutoencoderKL(**SD21_VAE).eval(), text_encoder=_text_encoder(tokenizer, **OPENCLIP_H_TEXT),
                                 tokenizer=tokenizer, scheduler=_on_cpu(DDIMScheduler, **SD15_DDIM),
                                 unet=UNet3DConditionModel(**_config(original_modelscope.MODELSCOPE_UNET_CONFIG)).eval())


def build_i2vgen(tiny_mode: bool):
    from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLPipeline, I2VGenXLUNet

    if tiny_mode:
        return I2VGenXLPipeline(**tiny.build_tiny_i2vgen_components())
    tokenizer = _tokenizer()
    image_encoder, features = _image_encoder()
    return I2VGenXLPipeline(vae=AutoencoderKL(**SD21_VAE).eval(), tokenizer=tokenizer,
                            text_encoder=_text_encoder(tokenizer, **dict(OPENCLIP_H_TEXT, num_hidden_layers=24,
                                                                         projection_dim=1024)),
                            image_encoder=image_encoder, feature_extractor=features,
                            unet=I2VGenXLUNet(**_config(original_modelscope.I2VGEN_XL_UNET_CONFIG)).eval(),
                            scheduler=_on_cpu(DDIMScheduler, **I2VGEN_DDIM))


def _image(height: int, width: int):
    import PIL.Image

    rng = np.random.default_rng(0)
    return PIL.Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


@dataclass(frozen=True)
class Spec:
    name: str
    build: Callable[[bool], object]  # tiny? -> diffusers pipeline (random weights)
    vidcore_class: str
    size: tuple[int, int]  # (height, width) of the real run
    tiny_size: tuple[int, int]
    frames: int
    tiny_frames: int
    call: Callable[[tuple[int, int], int], dict] = field(default=lambda size, frames: {})  # extra arguments


SPECS = {s.name: s for s in (
    Spec("svd-xt", build_svd, "StableVideoDiffusionPipeline", (576, 1024), (16, 16), 25, 3,
         lambda size, frames: dict(image=_image(*size), num_frames=frames, decode_chunk_size=8)),
    Spec("animatediff", build_animatediff, "AnimateDiffPipeline", (512, 512), (16, 16), 16, 3,
         lambda size, frames: dict(prompt="a panda surfing", num_frames=frames, guidance_scale=7.5,
                                   decode_chunk_size=16)),
    Spec("zeroscope", build_zeroscope, "TextToVideoPipeline", (320, 576), (16, 16), 24, 3,
         lambda size, frames: dict(prompt="a panda playing guitar", num_frames=frames, guidance_scale=9.0)),
    Spec("i2vgen-xl", build_i2vgen, "I2VGenXLPipeline", (448, 768), (16, 16), 16, 3,
         # clip_skip=None: diffusers' default clip_skip=1 path reads text_encoder.text_model (gone in transformers 5)
         lambda size, frames: dict(prompt="a cat", image=_image(*size), num_frames=frames, guidance_scale=9.0,
                                   clip_skip=None)),
)}


class Clock:
    """Elapsed seconds between two points: CUDA events on a GPU (no host sync inside the loop), else wall time."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start, end) -> float:
        return start.elapsed_time(end) / 1000 if self.cuda else end - start

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


@contextlib.contextmanager
def timed_parts(pipe, clock: Clock):
    """Records (start, end) marks around every UNet forward and every ``vae.decode`` call of ``pipe``."""
    unet_marks, decode_marks, starts = [], [], []
    hooks = [pipe.unet.register_forward_pre_hook(lambda m, a: starts.append(clock.mark())),
             pipe.unet.register_forward_hook(lambda m, a, o: unet_marks.append((starts.pop(), clock.mark())))]
    decode = pipe.vae.decode

    def timed_decode(*args, **kwargs):
        start = clock.mark()
        out = decode(*args, **kwargs)
        decode_marks.append((start, clock.mark()))
        return out

    pipe.vae.decode = timed_decode  # an instance attribute over the bound method, removed below
    try:
        yield unet_marks, decode_marks
    finally:
        del pipe.vae.decode
        for hook in hooks:
            hook.remove()


def run_once(pipe, kwargs: dict, clock: Clock, device: torch.device, backend: str | None) -> dict:
    ctx = vidcore.attention_backend(backend) if backend else contextlib.nullcontext()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    with ctx, timed_parts(pipe, clock) as (unet_marks, decode_marks):
        start = time.perf_counter()
        out = pipe(generator=torch.Generator("cpu").manual_seed(0), output_type="pt", **kwargs).frames
        clock.sync()
        wall = time.perf_counter() - start
        unet = [clock.seconds(a, b) for a, b in unet_marks]
        decode = sum(clock.seconds(a, b) for a, b in decode_marks)
    frames = out[0] if isinstance(out, (list, tuple)) else out
    if not torch.isfinite(torch.as_tensor(frames, dtype=torch.float32)).all():
        print(f"  warning: non-finite frames ({type(pipe).__module__})", flush=True)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if device.type == "cuda" else float("nan")
    return dict(call=wall, unet=statistics.median(unet) if unet else float("nan"), steps=len(unet), decode=decode,
                peak=peak)


def measure(spec: Spec, args, device: torch.device, dtype: torch.dtype, table: list[str]) -> None:
    size = spec.tiny_size if args.tiny else spec.size
    frames = spec.tiny_frames if args.tiny else spec.frames
    kwargs = dict(spec.call(size, frames), height=size[0], width=size[1], num_inference_steps=args.steps)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, torch.device(device):
        theirs = spec.build(args.tiny).to(device=device, dtype=dtype)
        theirs.set_progress_bar_config(disable=True)
        theirs.save_pretrained(tmp)
        ours = getattr(vidcore, spec.vidcore_class).from_pretrained(tmp, torch_dtype=dtype).to(device)
    ours.set_progress_bar_config(disable=True)
    weights = sum(p.numel() * p.element_size() for p in ours.unet.parameters()) / 2**30
    print(f"{spec.name}: built and loaded in {time.perf_counter() - started:.0f} s (UNet weights {weights:.2f} GiB, "
          f"{size[0]}x{size[1]}, {frames} frames, {args.steps} steps)", flush=True)

    variants: list[tuple[str, object, str | None]] = [("diffusers", theirs, None), ("vidcore sdpa", ours, "sdpa")]
    if device.type == "cuda" and vidcore.kernels.HAS_TRITON:
        variants.append(("vidcore triton", ours, "triton"))
    clock = Clock(device)
    results: dict[str, list[dict]] = {}
    warm = dict(kwargs, num_inference_steps=min(2, args.steps))

    def rounds(names):
        for name, pipe, backend in variants:
            if name in names:
                run_once(pipe, warm, clock, device, backend)  # warm-up: kernels, allocator, autotuning
        for r in range(args.repeats):  # interleaved, in a rotating order
            order = [v for v in variants if v[0] in names]
            for name, pipe, backend in order[r % len(order):] + order[: r % len(order)]:
                results.setdefault(name, []).append(run_once(pipe, kwargs, clock, device, backend))

    rounds([v[0] for v in variants])
    if args.compile == "all" or args.compile == spec.name:
        start = time.perf_counter()
        # the forward only: the timing hooks stay outside the compiled graph (fullgraph allows no break)
        ours.unet.forward = torch.compile(ours.unet.forward, fullgraph=True, mode=args.compile_mode)
        variants.append(("vidcore sdpa + compile", ours, "sdpa"))
        rounds(["vidcore sdpa + compile"])
        print(f"  compile + warm-up + runs: {time.perf_counter() - start:.0f} s", flush=True)
    if hasattr(ours, "enable_deep_cache"):
        ours.enable_deep_cache(cache_interval=3, cache_branch_id=0)
        variants.append(("vidcore sdpa + DeepCache 3", ours, "sdpa"))
        rounds(["vidcore sdpa + DeepCache 3"])
        ours.disable_deep_cache()

    base = statistics.median(r["call"] for r in results["diffusers"])
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("call", "unet", "decode", "peak")}
        peak = "-" if device.type != "cuda" else f"{med['peak']:.2f}"
        row = (f"| {spec.name} | {name} | {runs[0]['steps']} | {med['unet'] * 1000:.1f} | {med['call']:.2f} | "
               f"{med['decode']:.3f} | {peak} | {base / med['call']:.2f}x |")
        table.append(row)
        print(row, flush=True)
    del theirs, ours
    if device.type == "cuda":
        torch.cuda.empty_cache()


HEADER = ["| pipeline | variant | UNet calls | UNet step (ms, median) | call (s) | VAE decode (s) | call peak over "
          "weights (GiB) | call speed vs diffusers |", "|---|---|---|---|---|---|---|---|"]


def main(argv=None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipelines", nargs="+", choices=sorted(SPECS), default=list(SPECS))
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default=None, help="default: fp16 on cuda, else fp32")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 25; --quick 10)")
    p.add_argument("--repeats", type=int, default=1, help="timed calls per variant after the warm-up")
    p.add_argument("--compile", default="svd-xt", help="pipelines whose UNet is also timed with torch.compile: "
                                                       "one name, 'all' or 'none'")
    p.add_argument("--compile-mode", default=None, help='e.g. "max-autotune-no-cudagraphs" (default: torch\'s)')
    p.add_argument("--tiny", action="store_true", help="tiny random configs (the CPU check of this script)")
    p.add_argument("--quick", action="store_true", help="SVD-XT and AnimateDiff at 10 steps, no compile")
    args = p.parse_args(argv)
    if args.quick:
        args.pipelines = [n for n in args.pipelines if n in ("svd-xt", "animatediff")] or ["svd-xt"]
        args.steps = args.steps or 10
        args.compile = "none"
    args.steps = args.steps or 25
    device = torch.device(args.device)
    dtype = vidcore.hub.parse_dtype(args.dtype or ("fp16" if device.type == "cuda" else "fp32"))
    import diffusers

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {gpu}; torch {torch.__version__}; diffusers {diffusers.__version__}; dtype {dtype}; "
          f"steps {args.steps}; repeats {args.repeats}; compile {args.compile}", flush=True)
    table = list(HEADER)
    print("\n".join(HEADER), flush=True)
    for name in args.pipelines:
        measure(SPECS[name], args, device, dtype, table)
    print("\n".join(table), flush=True)
    return table


if __name__ == "__main__":
    main()
