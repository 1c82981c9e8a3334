"""``vidcore generate TASK``: the options every task shares, and the run (inputs -> pipeline -> video files).

Each task's own options, loading and call arguments are in :mod:`.tasks`; diffusers' spellings of the flags
(``--num-inference-steps`` for ``--steps``, ...) in :mod:`.aliases`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from . import free_noise, lora
from .aliases import Options
from .common import (DTYPES, EXIT_OK, DefaultsFormatter, UsageError, chunk_size, device_name, memory_size,
                     nonnegative_int, positive_float, positive_int, quiet_library_progress, resolve_device,
                     torch_dtype)
from .outputs import (BATCH_FORMATS, MANIFEST, OUTPUT_SUFFIXES, batch_jobs, load_input_image, load_input_video,
                      output_paths, rank_and_world_size, write_manifest, write_video)
from ..pipelines.low_memory import apply_low_memory
from ..sampling.free_init import FILTER_METHODS
from .tasks import PARALLEL_MODES, TASKS, Inputs, Task


class _OutputAction(argparse.Action):
    """Store ``-o/--output`` and record that it was given (``--prompts`` excludes it)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.output_given = True


def add_parsers(commands) -> None:
    """``generate`` and one sub-command per task under the top-level ``commands``."""
    gen = commands.add_parser("generate", help="generate a video", description="Generate a video.")
    tasks = gen.add_subparsers(dest="task", metavar="TASK", required=True)
    for task in TASKS.values():
        p = tasks.add_parser(task.name, help=task.help, description=task.help, formatter_class=DefaultsFormatter)
        _add_options(Options(p, task.name), task)


def _add_options(o: Options, task: Task) -> None:
    demo = task.resolve_model is not None  # --model is optional: the built-in demo model
    o.add("--model", required=not demo, default=None, metavar="PATH_OR_REPO",
          help="diffusers pipeline folder (with model_index.json) or hub repo id" + task.model_help)
    if task.text:
        o.add("--prompt", default=None, help="the text prompt (required unless --prompts is given)")
        o.add("--negative-prompt", default=None)
    task.options(o)
    o.add("-o", "--output", default="output.mp4", action=_OutputAction,
          help=f"output file, {'/'.join(OUTPUT_SUFFIXES)}; with --num-videos N: NAME_0.mp4 ... NAME_{{N-1}}.mp4")
    if task.text:
        o.add("--prompts", default=None, metavar="FILE",
              help="batch: one prompt per line (blank lines and lines starting with # are skipped), one "
                   "video each written to --outdir as NNNN_slug.FORMAT with seed --seed + N (N = the "
                   "prompt's index); under torchrun prompt N goes to rank N %% WORLD_SIZE; existing "
                   f"outputs are skipped; rank 0 writes DIR/{MANIFEST}. Excludes --prompt, -o, --parallel")
        o.add("--outdir", default=None, metavar="DIR", help="output folder of --prompts")
        o.add("--format", choices=BATCH_FORMATS, default=None, help="file format of the --prompts videos (default: mp4)")
    o.add("--steps", type=positive_int, default=None if demo else 25,
          help="number of denoising steps" + (" (default 25)" if demo else ""))
    o.add("--seed", type=int, default=0, help="seed of the CPU torch.Generator")
    if task.text:  # SVD samples with its stored Euler (Karras sigmas, v-prediction) scheduler
        o.add("--eta", type=float, default=0.0, help="DDIM eta (0 is deterministic); with --scheduler tcd TCD's gamma")
        few = sorted(k for k, v in task.schedulers.items() if v in task.scheduler_options)
        o.add("--scheduler", choices=sorted(task.schedulers), default=None,
              help="sampler (default: the one stored with the model)" + (
                  f"; {'/'.join(few)}: few-step consistency sampling with linear betas (AnimateLCM: --steps 4-8, "
                  "--guidance 1-2)" if few else ""))
    o.add("--dtype", choices=DTYPES, default=None, help="weights dtype (default: fp16 on cuda, fp32 on cpu)")
    o.add("--device", type=device_name, default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    o.add("--variant", default=None, help="weight file variant to load, e.g. fp16")
    o.add("--cpu-offload", action="store_true", help="keep models on the CPU and move each to the GPU only while it runs")
    o.add("--low-memory", action="store_true",
          help="every setting that lowers peak memory on the device (vidcore.pipelines.low_memory; CUDA: fp8 "
               "storage, offload, split guidance, chunking; CPU: split guidance, chunking, slicing); prints "
               "what it turned on")
    svd = not task.text  # the temporal decoder decodes in frame chunks (--decode-chunk-size) instead of slices
    if not svd:
        o.add("--vae-slicing", action="store_true", help="decode one image at a time")
    o.add("--vae-tiling", action="store_true", help="decode in overlapping tiles (large sizes)")
    o.add("--forward-chunking", action="store_true", help="run the UNet feed-forward layers in chunks")
    if not svd:
        o.add("--freeu", type=float, nargs=4, metavar=("S1", "S2", "B1", "B2"), default=None,
              help="enable FreeU with these factors")
    o.add("--decode-chunk-size", type=chunk_size, default=None,
          help="frames per VAE decode call, or auto: sized from --max-memory (free GPU memory on CUDA)"
               + (" (default: all; fewer saves memory)" if svd else ""))
    o.add("--max-memory", type=memory_size, default=None, metavar="SIZE",
          help="memory budget of --decode-chunk-size auto (and of --low-memory's decode chunks), e.g. 4GB "
               "(default: the free GPU memory on CUDA, none on the CPU)")
    o.add("--deep-cache", type=positive_int, default=None, metavar="INTERVAL",
          help="DeepCache: run the whole UNet every INTERVAL-th step, only its top levels in between "
               "(faster, approximate; 1 = exact)")
    o.add("--cache-branch", type=nonnegative_int, default=None, metavar="N",
          help="with --deep-cache: the deepest UNet level still run on cached steps (default 0, the top)")
    o.add("--block-cache", type=positive_float, default=None, metavar="THRESHOLD",
          help="first-block cache: skip the rest of the UNet on steps whose first-level features moved less "
               "than THRESHOLD (relative; e.g. 0.05)")
    if task.supports("free_init"):
        o.add("--free-init", type=positive_int, default=None, metavar="ITERS",
              help="FreeInit: sample ITERS times, each round restarting from the low frequencies of the last "
                   "(ITERS x the time; 1 = off)")
        o.add("--free-init-method", choices=FILTER_METHODS, default="butterworth", help="with --free-init: the filter")
        o.add("--free-init-fast", action="store_true",
              help="with --free-init: coarse-to-fine, round k of N runs k/N of the steps")
    if task.supports("free_noise"):
        free_noise.add_options(o, task.text)
    if task.supports("lora"):
        lora.add_options(o)
    o.add("--num-videos", type=positive_int, default=1, help="videos to generate for the " + ("image" if svd else "prompt"))
    if task.supports("parallel"):
        o.add("--parallel", choices=PARALLEL_MODES, default=None,
              help="split the denoising over the processes of a torchrun launch (torchrun "
                   "--nproc-per-node N -m vidcore.cli generate ...): cfg = guidance halves on 2 processes, "
                   "frames = a slice of frames per process, cfg+frames = both (2 x frame processes); "
                   "exact, rank 0 writes the video")
    o.add("--no-progress", action="store_true", help="hide progress bars")
    o.parser.set_defaults(func=run, task=task.name, output_given=False, **task.defaults)


def _configure_pipeline(pipe, args, task: Task, device: str) -> dict:
    """Apply the setting flags and place the pipeline on ``device``; returns the call arguments the settings add
    (``--low-memory``'s decode chunks)."""
    if getattr(args, "scheduler", None) is not None:
        from ..schedulers import from_config

        name = task.schedulers[args.scheduler]
        pipe.scheduler = from_config(pipe.scheduler.to_diffusers_config() | {"_class_name": name},
                                     **task.scheduler_options.get(name, {}))
    if getattr(args, "vae_slicing", False):
        pipe.vae.enable_slicing()
    if args.vae_tiling:
        pipe.vae.enable_tiling()
    if args.forward_chunking:
        pipe.unet.enable_forward_chunking()
    if getattr(args, "freeu", None) is not None:
        pipe.unet.enable_freeu(*args.freeu)
    _enable_step_cache(pipe, args)
    _enable_free_init(pipe, args)
    if task.supports("free_noise"):
        free_noise.enable(pipe, args)
    call = {}
    placed = False
    if args.max_memory is not None:
        pipe.set_max_memory(args.max_memory)
    if args.low_memory:
        preset = apply_low_memory(pipe, device)
        print(preset)
        call, placed = preset.call_kwargs, preset.placed
    if not placed:  # else the preset's offload owns the placement
        if args.cpu_offload:
            pipe.enable_model_cpu_offload(device)
        else:
            pipe.to(device)
    pipe.set_progress_bar_config(disable=args.no_progress)
    return call


def _enable_step_cache(pipe, args) -> None:
    """``--deep-cache`` / ``--cache-branch`` / ``--block-cache`` (vidcore.sampling.step_cache)."""
    if args.cache_branch is not None and args.deep_cache is None:
        raise UsageError("--cache-branch applies to --deep-cache INTERVAL")
    if args.deep_cache is not None and args.block_cache is not None:
        raise UsageError("--deep-cache and --block-cache exclude each other; pick one")
    try:
        if args.deep_cache is not None:
            pipe.enable_deep_cache(cache_interval=args.deep_cache, cache_branch_id=args.cache_branch or 0)
        elif args.block_cache is not None:
            pipe.enable_block_cache(threshold=args.block_cache)
    except ValueError as err:
        flag = "--cache-branch" if "cache_branch_id" in str(err) else "--deep-cache"
        raise UsageError(f"{flag}: {err}") from None


def _enable_free_init(pipe, args) -> None:
    """``--free-init ITERS`` (vidcore.sampling.free_init); its sub-options need it."""
    iters = getattr(args, "free_init", None)
    if iters is None:
        if getattr(args, "free_init_fast", False) or getattr(args, "free_init_method", "butterworth") != "butterworth":
            raise UsageError("--free-init-method / --free-init-fast apply to --free-init ITERS")
        return
    pipe.enable_free_init(num_iters=iters, use_fast_sampling=args.free_init_fast, method=args.free_init_method)


def _enable_parallel(pipe, args, num_frames: int) -> None:
    """``--parallel``: process groups from torchrun's environment; input errors before any work."""
    mode = args.parallel
    if "WORLD_SIZE" not in os.environ:
        raise UsageError(f"--parallel {mode} runs under torchrun: torchrun --nproc-per-node N -m vidcore.cli "
                         f"generate {args.task} ... --parallel {mode}")
    flag, guidance = ("--max-guidance", args.max_guidance) if args.task == "image-to-video" else ("--guidance", args.guidance)
    if "cfg" in mode and guidance <= 1.0:
        raise UsageError(f"--parallel {mode} splits classifier-free guidance; it needs {flag} > 1, got {guidance}")
    try:
        pipe.enable_parallel(cfg="cfg" in mode, frames="frames" in mode)
        pipe.parallel.check(num_frames)
    except ValueError as err:
        raise UsageError(f"--parallel {mode}: {err}") from None
    if pipe.parallel.config.rank != 0:
        pipe.set_progress_bar_config(disable=True)


def run(args) -> int:
    task = TASKS[args.task]
    if task.supports("free_noise"):
        free_noise.check_arguments(args)
    schedule_file = getattr(args, "prompt_schedule", None)
    if schedule_file is not None and not task.supports("free_noise"):  # text2video-zero: prompt travel without FreeNoise
        if args.prompt is not None or getattr(args, "prompts", None) is not None:
            raise UsageError("--prompt-schedule replaces --prompt / --prompts; pass one of them")
    model = task.resolve_model(args) if task.resolve_model is not None else args.model
    batch = getattr(args, "prompts", None) is not None
    if batch:  # one video per prompt; the prompts are spread over torchrun's processes (no process group)
        jobs = batch_jobs(args)
        rank, world = rank_and_world_size()
        todo = []
        for job in jobs[rank::world]:
            if job["path"].exists():
                print(f"skipped {job['path']} (exists)")
            else:
                todo.append(job)
        runs = [(job["prompt"], job["seed"], [job["path"]]) for job in todo]
    else:
        if task.text and args.prompt is None and schedule_file is None:
            raise UsageError(f"generate {args.task}: --prompt is required (or --prompts FILE --outdir DIR, or "
                             "--prompt-schedule FILE with --free-noise)")
        for flag in ("outdir", "format"):
            if getattr(args, flag, None) is not None:
                raise UsageError(f"--{flag} applies to --prompts; with --prompt, -o names the output file")
        runs = [(getattr(args, "prompt", None), args.seed, output_paths(args.output, args.num_videos))]
    if task.check is not None:
        task.check(args)
    device = resolve_device(args.device)
    parallel = getattr(args, "parallel", None)
    if parallel is not None and args.cpu_offload:
        raise UsageError("--parallel keeps every model on its process's device; drop --cpu-offload")
    if (parallel is not None or batch and "WORLD_SIZE" in os.environ) and device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"  # one GPU per torchrun process
    if args.cpu_offload and not device.startswith("cuda"):
        raise UsageError("--cpu-offload moves models to a GPU while they run; it needs --device cuda")
    dtype = args.dtype or ("fp16" if device.startswith("cuda") else "fp32")
    wants_video = task.input == "video" or getattr(args, "video", None) is not None  # animatediff --video: optional
    video, video_fps = load_input_video(args) if wants_video else (None, None)
    inputs = Inputs(video=video, video_fps=video_fps, image=load_input_image(args) if task.input == "image" else None)
    if schedule_file is not None:  # prompt travel: {frame: prompt}, checked against the frame count
        schedule = free_noise.read_prompt_schedule(schedule_file, len(video) if video is not None else args.frames)
        runs = [(schedule, seed, outputs) for _, seed, outputs in runs]
    if batch:
        if rank == 0:
            write_manifest(jobs, Path(args.outdir))
        if not runs:  # this process's share is done (or empty): no model to load
            return EXIT_OK
    if args.no_progress:
        quiet_library_progress()

    import torch

    cls = task.pipeline_class()
    if task.load is not None:
        pipe = task.load(cls, model, args, dtype)
    else:
        pipe = cls.from_pretrained(model, torch_dtype=torch_dtype(dtype), variant=args.variant)
    if task.supports("lora"):
        lora.load(pipe, args)
    preset_call = _configure_pipeline(pipe, args, task, device)
    call = dict(num_inference_steps=args.steps, output_type="np", num_videos_per_prompt=args.num_videos,
                decode_chunk_size=args.decode_chunk_size or preset_call.get("decode_chunk_size"))
    if task.text:
        call.update(negative_prompt=args.negative_prompt, guidance_scale=args.guidance, eta=args.eta)
    task_call, fps = task.call(args, inputs)
    call.update(task_call)
    if parallel is not None:
        frames = len(video) if video is not None else call.get("num_frames") or args.frames
        _enable_parallel(pipe, args, frames or pipe.unet.config.num_frames)
    for prompt, seed, outputs in runs:
        call["generator"] = torch.Generator("cpu").manual_seed(seed)
        if task.text:
            call["prompt"] = prompt
        frames = pipe(**call).frames  # b f h w 3 in [0, 1]; None on processes other than rank 0 (--parallel)
        for video_frames, path in zip(frames if frames is not None else (), outputs):
            print(write_video(video_frames, path, fps))  # atomic: a temporary sibling, then os.replace
    if parallel is not None:
        torch.distributed.destroy_process_group()
    return EXIT_OK
