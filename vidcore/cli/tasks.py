"""The tasks of ``vidcore generate``: for each, its own options, how its pipeline loads and the arguments
of its pipeline call, side by side. The options every task shares are added in :mod:`.generate`."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import VidcoreError
from . import ip_adapter
from .aliases import Options
from .common import UsageError, nonnegative_int, positive_float, positive_int, torch_dtype, unit_float

# --scheduler value -> diffusers class name understood by ``vidcore.schedulers.from_config``
SCHEDULERS = {"ddim": "DDIMScheduler", "dpm++": "DPMSolverMultistepScheduler"}
ANIMATEDIFF_SCHEDULERS = {**SCHEDULERS, "euler": "EulerDiscreteScheduler", "euler-a": "EulerAncestralDiscreteScheduler",
                          "pndm": "PNDMScheduler"}
# AnimateDiff also samples in few steps with a consistency-distilled motion adapter / LoRA (AnimateLCM)
FEW_STEP_SCHEDULERS = {"lcm": "LCMScheduler", "tcd": "TCDScheduler"}
# the AnimateLCM recipe: the consistency samplers on linear betas (what AnimateDiff's motion modules were trained on)
FEW_STEP_OPTIONS = {"LCMScheduler": {"beta_schedule": "linear"}, "TCDScheduler": {"beta_schedule": "linear"}}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")  # animatediff --model: an original SD1.5 / SDXL single file
PARALLEL_MODES = ("cfg", "frames", "cfg+frames")


@dataclass(frozen=True)
class Inputs:
    """What the command line supplies besides the prompt: the input video (PIL frames) and its rate, an image."""

    video: list | None = None
    video_fps: float | None = None
    image: object | None = None


@dataclass(frozen=True)
class Task:
    name: str
    help: str
    pipeline: str  # "module:Class" under vidcore.pipelines (imported only when the task runs)
    options: Callable[[Options], None]  # the task's own options
    call: Callable[[object, Inputs], tuple[dict, float]]  # -> pipeline call arguments, output frame rate
    text: bool = True  # a --prompt (and --prompts batches, --negative-prompt, --eta, --scheduler)
    input: str | None = None  # "video" or "image": the task reads --video / --image
    schedulers: dict[str, str] = field(default_factory=lambda: SCHEDULERS)
    scheduler_options: dict[str, dict] = field(default_factory=dict)  # class name -> config overrides for --scheduler
    defaults: dict = field(default_factory=dict)  # shared options with another default for this task
    model_help: str = ""  # appended to --model's help
    load: Callable | None = None  # (cls, model, args, dtype) -> pipeline; None: cls.from_pretrained
    resolve_model: Callable | None = None  # args -> the model to load (fills unset options); None: --model
    check: Callable | None = None  # args -> None: flag combinations, checked before anything is read or loaded

    def pipeline_class(self):
        module, name = self.pipeline.split(":")
        return getattr(importlib.import_module(f"vidcore.pipelines.{module}"), name)

    def supports(self, feature: str) -> bool:
        """Whether the task's pipeline has ``feature``: the capability table the docs show
        (:func:`vidcore.pipelines.features.capability_table`) decides which options the task offers."""
        from ..pipelines.features import supports

        return supports(self.pipeline_class(), feature)


def _size(o: Options, default_help: str = "multiple of 8 (default: the model's size)", height=None, width=None) -> None:
    o.add("--height", type=positive_int, default=height, help="multiple of 8" if height else default_help)
    o.add("--width", type=positive_int, default=width, help="multiple of 8" if width else default_help)


def _input_video(o: Options, frames_help: str, stride: bool) -> None:
    o.add("--video", required=True, help="input video file (mp4, gif, ...) or http(s) URL")
    o.add("--frames", type=positive_int, default=None, help=frames_help)
    if stride:
        o.add("--frame-stride", type=positive_int, default=1, help="keep every S-th input frame")
    o.add("--height", type=positive_int, default=None, help="resize input frames to this height")
    o.add("--width", type=positive_int, default=None, help="resize input frames to this width")


def _input_fps(args, inputs: Inputs) -> float:
    return args.fps or inputs.video_fps or 8.0


def _context_options(o: Options, length_help: str = "frames per sliding context window for long videos "
                                                     "(default: the whole video in one window)") -> None:
    """Sliding context windows (vidcore.sampling.windows), for every task whose pipeline has them."""
    o.add("--context-length", type=positive_int, default=None, help=length_help)
    o.add("--context-stride", type=positive_int, default=None,
          help="frames between window starts (default: context length // 4)")
    o.add("--context-weighting", choices=("pyramid", "flat"), default="pyramid",
          help="how overlapping windows are blended")


def _context_call(args) -> dict:
    return {"context_length": args.context_length, "context_stride": args.context_stride,
            "context_weighting": args.context_weighting}


def motion_scale(text: str) -> float | list[float]:
    """``--motion-scale``: one number for every frame, or a comma list with one number per frame."""
    import argparse

    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or a comma list of numbers (one per frame), "
                                         f"got {text!r}") from None
    return values[0] if len(values) == 1 and "," not in text else values


# --------------------------------------------------------------------------- text-to-video (ModelScope / Zeroscope)

# settings left unset on the command line: (for a --model, the demo model's key in vidcore.demo.DEFAULTS)
TEXT_TO_VIDEO_DEFAULTS = {"frames": (16, "num_frames"), "guidance": (9.0, "guidance_scale"), "fps": (8.0, "fps"),
                          "steps": (25, "num_inference_steps")}


def _text_to_video_options(o: Options) -> None:  # unset values come from TEXT_TO_VIDEO_DEFAULTS
    o.add("--frames", type=positive_int, default=None, help="number of frames (default 16; demo model 8)")
    _size(o)
    o.add("--guidance", type=float, default=None, help="classifier-free guidance scale (default 9; demo model 5)")
    o.add("--fps", type=positive_float, default=None, help="output frame rate (default 8; demo model 4)")
    _context_options(o)


def _text_to_video_model(args) -> str:
    """The model to load; fills the settings left unset (the demo model has its own, see vidcore.demo)."""
    from ..demo import DEFAULTS as DEMO, demo_model_path

    model = args.model
    if model is None:
        try:
            model = str(demo_model_path())
        except VidcoreError as err:
            raise UsageError(str(err)) from None
        print(f"no --model given: using vidcore's built-in demo model ({DEMO['height']}x{DEMO['width']} px, "
              f"{DEMO['num_frames']} frames, colored shapes moving left/right/up/down); pass --model "
              f"cerspense/zeroscope_v2_576w (or any hub id or folder) for a real model")
    for name, (default, demo_key) in TEXT_TO_VIDEO_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, DEMO[demo_key] if args.model is None else default)
    return model


def _text_to_video_call(args, inputs: Inputs) -> tuple[dict, float]:
    return dict(height=args.height, width=args.width, num_frames=args.frames, **_context_call(args)), args.fps


# --------------------------------------------------------------------------- video-to-video (Zeroscope)


def _video_to_video_options(o: Options) -> None:
    o.add("--video", required=True, help="input video file (mp4, gif, ...) or http(s) URL")
    o.add("--strength", type=unit_float, default=0.6, help="how much to change the input: 0 keeps it, 1 ignores it")
    o.add("--frames", type=positive_int, default=None, help="use the first N input frames (default all)")
    o.add("--height", type=positive_int, default=None, help="resize input frames to this height")
    o.add("--width", type=positive_int, default=None, help="resize input frames to this width")
    o.add("--guidance", type=float, default=15.0, help="classifier-free guidance scale")
    o.add("--fps", type=positive_float, default=None, help="output frame rate (default: the input's, else 8)")
    _context_options(o)


def _video_to_video_call(args, inputs: Inputs) -> tuple[dict, float]:
    return dict(video=inputs.video, strength=args.strength, **_context_call(args)), _input_fps(args, inputs)


# --------------------------------------------------------------------------- i2vgen-xl (defaults: diffusers' I2VGenXLPipeline's)


def _i2vgen_options(o: Options) -> None:
    o.add("--image", required=True, help="image to animate: file path or http(s) URL")
    o.add("--frames", type=positive_int, default=16, help="number of frames")
    _size(o, height=704, width=1280)
    o.add("--guidance", type=float, default=9.0, help="classifier-free guidance scale")
    o.add("--fps", type=positive_float, default=16.0, help="frame rate: the model's target_fps condition and the output's rate")
    _context_options(o)


def _i2vgen_call(args, inputs: Inputs) -> tuple[dict, float]:
    target_fps = int(args.fps) if float(args.fps).is_integer() else args.fps  # the model saw integer rates
    return dict(image=inputs.image, height=args.height, width=args.width, num_frames=args.frames,
                target_fps=target_fps, **_context_call(args)), args.fps


# --------------------------------------------------------------------------- image-to-video (SVD; defaults: diffusers')


def _svd_options(o: Options) -> None:
    o.add("--image", required=True, help="image to animate: file path or http(s) URL")
    o.add("--last-image", default=None, metavar="IMG",
          help="keyframe interpolation: the video ends at this image (bidirectional sampling, 2x the UNet passes)")
    o.add("--frames", type=positive_int, default=None,
          help="number of frames (default: the model's, 14 for SVD, 25 for SVD-XT; demo model 8)")
    o.add("--height", type=positive_int, default=None, help="multiple of 8 (default 576; demo model 32)")
    o.add("--width", type=positive_int, default=None, help="multiple of 8 (default 1024; demo model 32)")
    o.add("--fps", type=positive_int, default=7, help="frame rate: the model's fps condition and the output's rate")
    o.add("--motion-bucket-id", type=int, default=127, help="motion condition: higher moves more")
    o.add("--noise-aug-strength", type=float, default=0.02, help="noise added to the input image")
    o.add("--min-guidance", type=float, default=1.0, help="guidance scale of the first frame")
    o.add("--max-guidance", type=float, default=3.0,
          help="guidance scale of the last frame (classifier-free guidance runs iff > 1)")
    o.add("--guidance-schedule", type=_guidance_schedule, default="linear", metavar="linear|triangle|constant|A,B,...",
          help="per-frame guidance: linear (--min-guidance -> --max-guidance), triangle (min at both ends, max in "
               "the middle), constant (--max-guidance), or one comma-separated scale per frame")
    o.add("--decode-overlap", type=nonnegative_int, default=0, metavar="K",
          help="frames consecutive --decode-chunk-size chunks share, blended linearly (smooths chunk borders)")
    _context_options(o)


def _guidance_schedule(value: str):
    from ..sampling.frame_guidance import GUIDANCE_SCHEDULES

    if value in GUIDANCE_SCHEDULES:
        return value
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(GUIDANCE_SCHEDULES)} or comma-separated "
                                         f"numbers, got {value!r}") from None


def _svd_model(args) -> str:
    """The model to load: --model, or the built-in image-to-video demo model (with its own sizes and steps)."""
    from ..demo import svd_demo_model_path
    from ..demo.evaluate_svd import DEFAULTS as DEMO

    model = args.model
    if model is None:
        try:
            model = str(svd_demo_model_path())
        except VidcoreError as err:
            raise UsageError(str(err)) from None
        print(f"no --model given: using vidcore's built-in image-to-video demo model ({DEMO['height']}x"
              f"{DEMO['width']} px, {DEMO['num_frames']} frames: a colored shape near an edge moves to the far side; "
              "see vidcore/demo/model_svd/README.md); pass --model stabilityai/stable-video-diffusion-img2vid-xt "
              "for a real one")
    demo = args.model is None
    for name, real, key in (("height", 576, "height"), ("width", 1024, "width"), ("steps", 25, "num_inference_steps"),
                            ("frames", None, "num_frames")):
        if getattr(args, name) is None:
            setattr(args, name, DEMO[key] if demo else real)
    return model


def _svd_call(args, inputs: Inputs) -> tuple[dict, float]:
    return dict(image=inputs.image, height=args.height, width=args.width, num_frames=args.frames, fps=args.fps,
                motion_bucket_id=args.motion_bucket_id, noise_aug_strength=args.noise_aug_strength,
                min_guidance_scale=args.min_guidance, max_guidance_scale=args.max_guidance,
                guidance_schedule=args.guidance_schedule, decode_overlap=args.decode_overlap,
                last_image=_last_image(args), **_context_call(args)), args.fps


def _last_image(args):
    if args.last_image is None:
        return None
    from ..io import load_image

    return load_image(args.last_image)


# --------------------------------------------------------------------------- animatediff (defaults: diffusers')


CONTROLS = ("pose", "canny", "sparse-scribble", "sparse-rgb")  # animatediff --control
SPARSE_CONTROLS = ("sparse-scribble", "sparse-rgb")  # SparseCtrl: --control-image at --control-frame-indices


def _animatediff_options(o: Options) -> None:
    o.add("--motion-adapter", default=None, metavar="PATH_OR_REPO",
          help="motion adapter folder, file or hub repo id (e.g. guoyww/animatediff-motion-adapter-v1-5-2; for an "
               "SDXL --model guoyww/animatediff-motion-adapter-sdxl-beta); optional when --model is a saved "
               "AnimateDiff pipeline")
    o.add("--config-from", default=None, metavar="PATH_OR_REPO",
          help="with --model an original SD1.5 or SDXL single file (.safetensors/.ckpt, e.g. from civitai): the "
               "pipeline folder or hub repo giving configs, tokenizer(s) and scheduler (default: "
               "stable-diffusion-v1-5/stable-diffusion-v1-5, for an SDXL .safetensors "
               "stabilityai/stable-diffusion-xl-base-1.0; no weights are downloaded)")
    o.add("--frames", type=positive_int, default=None,
          help="number of frames (default 16; with --video: all of its frames); more than the adapter's "
               "motion_max_seq_length uses context windows")
    _size(o)
    o.add("--guidance", type=float, default=None,
          help="classifier-free guidance scale (default: 7.5; 5.0 for an SDXL --model)")
    o.add("--fps", type=positive_float, default=None, help="output frame rate (default 8, or --video's)")
    o.add("--video", default=None, help="video-to-video: re-render this video (file or URL) to follow --prompt")
    o.add("--strength", type=unit_float, default=None,
          help="with --video: how much of the schedule to run, 1 = ignore the input's content (default 0.8)")
    o.add("--control", choices=CONTROLS, default=None,
          help="ControlNet on --control-video's frames: pose (the frames are pose images) or canny (edges are "
               "computed from them); SparseCtrl on a few --control-image keyframes: sparse-scribble or sparse-rgb. "
               "Needs --controlnet unless --model holds a controlnet/")
    o.add("--control-video", default=None, metavar="FILE", help="with --control pose|canny: one control image per frame")
    o.add("--control-image", action="append", default=None, metavar="IMG",
          help="with --control sparse-*: a keyframe condition (repeat for several)")
    o.add("--control-frame-indices", default=None, metavar="I,J,...",
          help="with --control sparse-*: the frame of each --control-image (default 0, 1, ...)")
    o.add("--controlnet", default=None, metavar="PATH_OR_REPO",
          help="with --control: ControlNet folder, file or hub repo id (lllyasviel/sd-controlnet-openpose, "
               "lllyasviel/sd-controlnet-canny; SparseCtrl: guoyww/animatediff-sparsectrl-scribble, -rgb)")
    o.add("--controlnet-scale", type=float, default=None, help="with --control: weight of its residuals (default 1)")
    _context_options(o, "frames per sliding window for long videos (default: the adapter's motion_max_seq_length)")
    o.add("--motion-scale", type=motion_scale, default=1.0, metavar="S[,S...]",
          help="scale of the motion modules' effect: one number, or one per frame as a comma list "
               "(0: still frames, 1: the model, >1: more motion)")
    ip_adapter.add_options(o)


def _animatediff_mode(args) -> str:
    """"t2v", "v2v" (--video) or "controlnet" (--control), with the one-line errors for flags of another mode."""
    if args.video is not None and args.control is not None:
        raise UsageError("--video (video-to-video) and --control (ControlNet) exclude each other; pick one")
    if args.video is None and args.strength is not None:
        raise UsageError("--strength applies to --video (video-to-video)")
    if args.control is None:
        for flag in ("control_video", "control_image", "control_frame_indices", "controlnet", "controlnet_scale"):
            if getattr(args, flag) is not None:
                raise UsageError(f"--{flag.replace('_', '-')} applies to --control {'|'.join(CONTROLS)}")
        return "v2v" if args.video is not None else "t2v"
    if args.control in SPARSE_CONTROLS:
        if args.control_video is not None:
            raise UsageError(f"--control {args.control} takes --control-image keyframes, not --control-video")
        if not args.control_image:
            raise UsageError(f"--control {args.control} needs --control-image IMG (one or more keyframes)")
        _frame_indices(args)
        return "sparsectrl"
    for flag in ("control_image", "control_frame_indices"):
        if getattr(args, flag) is not None:
            raise UsageError(f"--{flag.replace('_', '-')} applies to --control sparse-scribble|sparse-rgb")
    if args.control_video is None:
        raise UsageError(f"--control {args.control} needs --control-video FILE (one control image per frame)")
    return "controlnet"


def _frame_indices(args) -> list[int]:
    """--control-frame-indices (default 0, 1, ... one per --control-image), checked against the images."""
    if args.control_frame_indices is None:
        return list(range(len(args.control_image)))
    try:
        indices = [int(v) for v in args.control_frame_indices.split(",")]
    except ValueError:
        raise UsageError(f"--control-frame-indices takes comma-separated frame numbers, got "
                         f"{args.control_frame_indices!r}") from None
    if len(indices) != len(args.control_image):
        raise UsageError(f"--control-frame-indices gives {len(indices)} frames for {len(args.control_image)} "
                         "--control-image keyframes")
    return indices


def _animatediff_load(cls, model: str, args, dtype):
    from ..pipelines.animatediff_controlnet import AnimateDiffControlNetPipeline
    from ..pipelines.animatediff_sparsectrl import AnimateDiffSparseControlNetPipeline
    from ..pipelines.animatediff_video2video import AnimateDiffVideoToVideoPipeline

    mode = _animatediff_mode(args)
    ip_adapter.check(args)
    cls = {"t2v": cls, "v2v": AnimateDiffVideoToVideoPipeline, "controlnet": AnimateDiffControlNetPipeline,
           "sparsectrl": AnimateDiffSparseControlNetPipeline}[mode]
    extra = {"controlnet": args.controlnet} if mode in ("controlnet", "sparsectrl") else {}
    from ..pipelines.animatediff_sdxl import AnimateDiffSDXLPipeline, is_sdxl_model

    sdxl = is_sdxl_model(model)
    if args.guidance is None:  # diffusers' defaults: 7.5 for SD1.5 AnimateDiff, 5.0 for SDXL
        args.guidance = 5.0 if sdxl else 7.5
    if sdxl:
        if mode != "t2v":
            raise UsageError("an SDXL --model runs text-to-video only (AnimateDiffSDXLPipeline): drop --video / "
                             "--control")
        cls = AnimateDiffSDXLPipeline
    if Path(model).suffix in SINGLE_FILE_SUFFIXES:
        kwargs = {} if args.config_from is None else {"config_from": args.config_from}
        pipe = cls.from_single_file(model, motion_adapter=args.motion_adapter, torch_dtype=torch_dtype(dtype),
                                    variant=args.variant, **kwargs, **extra)
    elif args.config_from is not None:
        raise UsageError(f"--config-from applies to a single-file --model ({'/'.join(SINGLE_FILE_SUFFIXES)}); "
                         f"'{model}' is a pipeline folder or repo")
    else:
        pipe = cls.from_pretrained(model, motion_adapter=args.motion_adapter, torch_dtype=torch_dtype(dtype),
                                   variant=args.variant, **extra)
    if mode == "sparsectrl":
        rgb = pipe.controlnet.config.use_simplified_condition_embedding
        if rgb != (args.control == "sparse-rgb"):
            raise UsageError(f"--control {args.control} needs a {'RGB' if not rgb else 'scribble'} SparseCtrl model "
                             f"(guoyww/animatediff-sparsectrl-{'scribble' if not rgb else 'rgb'} is the other kind); "
                             f"the loaded one is {'RGB' if rgb else 'scribble'}: use --control "
                             f"sparse-{'rgb' if rgb else 'scribble'}")
    ip_adapter.load(pipe, args, dtype)
    return pipe


def _animatediff_call(args, inputs: Inputs) -> tuple[dict, float]:
    call = dict(height=args.height, width=args.width, **_context_call(args))
    if args.motion_scale != 1.0:  # only when asked: the SDXL pipeline has no motion scale yet
        call["motion_scale"] = args.motion_scale
    call.update(ip_adapter.call_arguments(args))
    mode = _animatediff_mode(args)
    if mode == "v2v":
        call.update(video=inputs.video, strength=0.8 if args.strength is None else args.strength)
        return call, _input_fps(args, inputs)
    num_frames = args.frames or 16
    call["num_frames"] = num_frames
    if mode == "sparsectrl":
        from ..io import load_image

        call.update(conditioning_frames=[load_image(p) for p in args.control_image],
                    controlnet_frame_indices=_frame_indices(args),
                    controlnet_conditioning_scale=1.0 if args.controlnet_scale is None else args.controlnet_scale)
    if mode == "controlnet":
        from ..controls import canny
        from ..io import load_video

        control = load_video(args.control_video)
        if len(control) < num_frames:
            raise UsageError(f"--control-video has {len(control)} frames for --frames {num_frames}")
        control = control[:num_frames]
        call.update(conditioning_frames=canny(control) if args.control == "canny" else control,
                    controlnet_conditioning_scale=1.0 if args.controlnet_scale is None else args.controlnet_scale)
    return call, args.fps or 8.0


# --------------------------------------------------------------------------- text2video-zero (defaults: diffusers')


def _zero_options(o: Options) -> None:
    o.add("--frames", type=positive_int, default=8, help="number of frames (video_length)")
    _size(o)
    o.add("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    o.add("--motion-field-strength-x", type=float, default=12.0,
          help="horizontal motion per frame, in pixels of a 512x512 grid")
    o.add("--motion-field-strength-y", type=float, default=12.0,
          help="vertical motion per frame, in pixels of a 512x512 grid")
    o.add("--prompt-schedule", default=None, metavar="FILE",
          help="prompt travel: lines 'FRAME: PROMPT' with increasing frames from 0 (frame 0 is made from its "
               "prompt, the others' embeddings are interpolated between the keys); replaces --prompt")
    o.add("--t0", type=int, default=44, help="step (from the end) where the first frame is copied")
    o.add("--t1", type=int, default=47, help="step (from the end) the copies are noised back to; < --steps")
    o.add("--fps", type=positive_float, default=4.0, help="output frame rate")
    ip_adapter.add_options(o)


def _zero_load(cls, model: str, args, dtype):
    pipe = cls.from_pretrained(model, torch_dtype=torch_dtype(dtype), variant=args.variant)
    ip_adapter.load(pipe, args, dtype)
    return pipe


def _zero_call(args, inputs: Inputs) -> tuple[dict, float]:
    return dict(height=args.height, width=args.width, video_length=args.frames, t0=args.t0, t1=args.t1,
                motion_field_strength_x=args.motion_field_strength_x,
                motion_field_strength_y=args.motion_field_strength_y, **ip_adapter.call_arguments(args)), args.fps


# --------------------------------------------------------------------------- edit (video InstructPix2Pix; defaults: diffusers')


def _edit_options(o: Options) -> None:
    _input_video(o, "edit at most N frames (after --frame-stride; default all)", stride=True)
    o.add("--guidance", type=float, default=7.5, help="text (instruction) guidance scale")
    o.add("--image-guidance", type=float, default=1.5,
          help="how closely to follow the input frames (guidance runs when >= 1 and --guidance > 1)")
    o.add("--fps", type=positive_float, default=None,
          help="output frame rate (default: the input's divided by the stride, else 8)")


def _edit_call(args, inputs: Inputs) -> tuple[dict, float]:
    return dict(video=inputs.video, image_guidance_scale=args.image_guidance), _input_fps(args, inputs)


# --------------------------------------------------------------------------- controlled (ControlNet; defaults: diffusers')


def _controlled_options(o: Options) -> None:
    o.add("--control", required=True, choices=("pose", "canny"),
          help="pose: --video's frames are pose images; canny: edges are computed from its frames")
    o.add("--controlnet", default=None, metavar="PATH_OR_REPO",
          help="ControlNet folder, file or hub repo id (lllyasviel/sd-controlnet-openpose, "
               "lllyasviel/sd-controlnet-canny); default: --model's controlnet/")
    _input_video(o, "use at most N frames (after --frame-stride; default all)", stride=True)
    o.add("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    o.add("--controlnet-scale", type=float, default=1.0, help="weight of the ControlNet residuals")
    o.add("--guess-mode", action="store_true", help="ControlNet on the conditional half only")
    o.add("--canny-low", type=float, default=100.0, help="Canny hysteresis low threshold (0..255 scale)")
    o.add("--canny-high", type=float, default=200.0, help="Canny strong-edge threshold (0..255 scale)")
    o.add("--fps", type=positive_float, default=None,
          help="output frame rate (default: the input's divided by the stride, else 8)")
    ip_adapter.add_options(o)


def _controlled_load(cls, model: str, args, dtype):
    pipe = cls.from_pretrained(model, controlnet=args.controlnet, torch_dtype=torch_dtype(dtype), variant=args.variant)
    ip_adapter.load(pipe, args, dtype)
    return pipe


def _controlled_call(args, inputs: Inputs) -> tuple[dict, float]:
    from ..controls import canny

    control = canny(inputs.video, args.canny_low, args.canny_high) if args.control == "canny" else inputs.video
    return dict(conditioning_frames=control, controlnet_conditioning_scale=args.controlnet_scale,
                guess_mode=args.guess_mode, **ip_adapter.call_arguments(args)), _input_fps(args, inputs)


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("text-to-video", "text -> video (ModelScope / Zeroscope)", "text_to_video:TextToVideoPipeline",
         _text_to_video_options, _text_to_video_call, resolve_model=_text_to_video_model,
         model_help="; default: the built-in demo model (32x32 px shapes, offline), e.g. "
                    "cerspense/zeroscope_v2_576w for a real one"),
    Task("video-to-video", "video + text -> video (Zeroscope)", "video_to_video:VideoToVideoPipeline",
         _video_to_video_options, _video_to_video_call, input="video"),
    Task("i2vgen-xl", "image + text -> video (I2VGen-XL)", "i2vgen_xl:I2VGenXLPipeline", _i2vgen_options,
         _i2vgen_call, input="image", defaults=dict(steps=50, decode_chunk_size=1)),
    Task("image-to-video", "image -> video (Stable Video Diffusion, SVD / SVD-XT)",
         "stable_video_diffusion:StableVideoDiffusionPipeline", _svd_options, _svd_call, text=False, input="image",
         resolve_model=_svd_model,
         model_help="; default: the built-in image-to-video demo model (32x32 px shapes, offline), e.g. "
                    "stabilityai/stable-video-diffusion-img2vid-xt for a real one"),
    Task("animatediff", "text -> video (AnimateDiff: Stable Diffusion 1.5 or XL + motion adapter)",
         "animatediff:AnimateDiffPipeline", _animatediff_options, _animatediff_call,
         schedulers={**ANIMATEDIFF_SCHEDULERS, **FEW_STEP_SCHEDULERS}, scheduler_options=FEW_STEP_OPTIONS,
         defaults=dict(decode_chunk_size=16), load=_animatediff_load,
         check=_animatediff_mode,
         model_help=", or an original SD1.5 single file (.safetensors/.ckpt; see --config-from)"),
    Task("text2video-zero", "text -> video (Text2Video-Zero: any Stable Diffusion 1.5 model)",
         "text2video_zero:TextToVideoZeroPipeline", _zero_options, _zero_call, defaults=dict(steps=50), load=_zero_load,
         check=ip_adapter.check),
    Task("edit", "video + instruction -> edited video (Text2Video-Zero with InstructPix2Pix)",
         "video_instruct_pix2pix:VideoInstructPix2PixPipeline", _edit_options, _edit_call, input="video",
         schedulers=ANIMATEDIFF_SCHEDULERS, defaults=dict(steps=100)),
    Task("controlled", "pose or edge video + text -> video (Text2Video-Zero with ControlNet)",
         "controlled_video:ControlledVideoPipeline", _controlled_options, _controlled_call, input="video",
         load=_controlled_load, check=ip_adapter.check),
)}
