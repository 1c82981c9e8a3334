"""diffusers' argument names as ``vidcore generate`` flags: each spelling sets the same value as the short flag,
for every task, and ``--help`` shows it. The expected spellings are written out here (not read from
vidcore.cli.aliases), so a missing alias fails. Runs of generate with these spellings on tiny models are in the
per-task CLI tests (``tiny.cli_spelling``)."""

from __future__ import annotations

import pytest

from vidcore import __version__
from vidcore.cli import build_parser, main

# the arguments each task requires, so that parsing gets to the option under test
REQUIRED = {
    "text-to-video": [],
    "video-to-video": ["--model", "m", "--video", "v.mp4"],
    "i2vgen-xl": ["--model", "m", "--image", "i.png"],
    "image-to-video": ["--model", "m", "--image", "i.png"],
    "animatediff": ["--model", "m"],
    "text2video-zero": ["--model", "m"],
    "edit": ["--model", "m", "--video", "v.mp4"],
    "controlled": ["--model", "m", "--video", "v.mp4", "--control", "canny"],
}
COMMON = {"--num-inference-steps": ("steps", "7", 7), "--num-videos-per-prompt": ("num_videos", "3", 3),
          "--decode-chunk-size": ("decode_chunk_size", "2", 2), "--torch-dtype": ("dtype", "bf16", "bf16")}
NUM_FRAMES = {"--num-frames": ("frames", "5", 5)}
GUIDANCE = {"--guidance-scale": ("guidance", "4.5", 4.5), "--negative-prompt": ("negative_prompt", "ugly", "ugly")}
EXPECTED = {
    "text-to-video": COMMON | NUM_FRAMES | GUIDANCE,
    "video-to-video": COMMON | NUM_FRAMES | GUIDANCE | {"--strength": ("strength", "0.3", 0.3)},
    "i2vgen-xl": COMMON | NUM_FRAMES | GUIDANCE | {"--target-fps": ("fps", "12", 12.0)},
    "image-to-video": COMMON | NUM_FRAMES | {
        "--min-guidance-scale": ("min_guidance", "1.5", 1.5), "--max-guidance-scale": ("max_guidance", "2.5", 2.5),
        "--motion-bucket-id": ("motion_bucket_id", "90", 90), "--noise-aug-strength": ("noise_aug_strength", "0.1", 0.1)},
    "animatediff": COMMON | NUM_FRAMES | GUIDANCE | {"--context-length": ("context_length", "12", 12),
                                                    "--context-stride": ("context_stride", "3", 3)},
    "text2video-zero": COMMON | NUM_FRAMES | GUIDANCE | {"--video-length": ("frames", "6", 6),
                                                        "--motion-field-strength-x": ("motion_field_strength_x", "3", 3.0)},
    "edit": COMMON | NUM_FRAMES | GUIDANCE | {"--image-guidance-scale": ("image_guidance", "1.2", 1.2)},
    "controlled": COMMON | NUM_FRAMES | GUIDANCE | {
        "--controlnet-conditioning-scale": ("controlnet_scale", "0.7", 0.7), "--guess-mode": ("guess_mode", None, True)},
}
CASES = [(task, flag, *spec) for task, flags in EXPECTED.items() for flag, spec in flags.items()]


@pytest.mark.parametrize("task,flag,dest,text,value", CASES, ids=[f"{c[0]}{c[1]}" for c in CASES])
def test_diffusers_spelling_sets_the_value(task, flag, dest, text, value):
    argv = ["generate", task, *REQUIRED[task], flag] + ([] if text is None else [text])
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    assert getattr(build_parser().parse_args(["generate", task, *REQUIRED[task]]), dest) != value  # not the default


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_help_shows_the_spellings(task, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", task, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in EXPECTED[task]:
        assert flag in text, flag


def test_short_and_long_spellings_are_one_option():
    """Both spellings write one destination: the one given last wins, as for any repeated flag."""
    args = build_parser().parse_args(["generate", "text-to-video", "--steps", "3", "--num-inference-steps", "9"])
    assert args.steps == 9
    args = build_parser().parse_args(["generate", "text-to-video", "--guidance-scale", "2", "--guidance", "6"])
    assert args.guidance == 6.0


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"vidcore {__version__}"
