"""``vidcore train lora`` end to end on a tiny ModelScope pipeline and tiny mp4 / gif clips, its --help, and one
``error: ...`` line with exit status 2 for each kind of bad input."""

from __future__ import annotations

import json
import re

import pytest
import tiny_training as tt
from safetensors.torch import load_file

from vidcore.cli import main

pytestmark = pytest.mark.usefixtures("one_thread", "offline")

FLAGS = ("--model", "--motion-adapter", "--data", "--output", "--rank", "--alpha", "--target", "--steps", "--lr",
         "--batch-size", "--gradient-accumulation-steps", "--num-frames", "--height", "--width", "--sample-stride",
         "--mixed-precision", "--gradient-checkpointing", "--ema", "--checkpoint-every", "--resume", "--sample-every",
         "--sample-prompt", "--sample-steps", "--sample-guidance", "--seed", "--motion-director")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-train")
    return tt.build_model(root / "model"), tt.write_clips(root / "data", kinds=("mp4", "gif"), frames=5)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def args(setup, out, *extra):
    model, data = setup
    return ("train", "lora", "--model", model, "--data", data, "--output", out, "--rank", "2", "--num-frames", "4",
            "--height", "16", "--width", "16", "--lr", "1e-2", "--no-progress", *extra)


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "lora", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    missing = [flag for flag in FLAGS if flag not in out]
    assert not missing


def test_trains_checkpoints_samples_and_resumes(setup, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, *args(setup, out, "--steps", "2", "--checkpoint-every", "1", "--sample-every", "2",
                                          "--sample-steps", "1", "--sample-prompt", "a dog", "--sample-guidance", "3",
                                          "--ema", "--mixed-precision", "bf16", "--target", "both", "--seed", "3",
                                          "--gradient-accumulation-steps", "2", "--sample-stride", "1"))
    assert code == 0, err
    assert stdout.strip() == f"wrote {out / 'pytorch_lora_weights.safetensors'}"
    lora = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert any("temp_attentions" in k for k in lora) and any(".attentions." in k for k in lora)  # --target both
    assert (out / "pytorch_lora_weights_ema.safetensors").is_file()
    assert (out / "samples" / "step_000002.mp4").is_file()
    log = json.loads((out / "train_log.json").read_text())
    assert log["config"]["mixed_precision"] == "bf16" and log["config"]["seed"] == 3 and len(log["loss"]) == 2
    assert log["config"]["sample_prompt"] == "a dog" and log["config"]["sample_guidance_scale"] == 3
    # --resume continues the run to more steps
    code, _, err = run(capsys, *args(setup, out, "--steps", "3", "--checkpoint-every", "1", "--ema", "--target",
                                     "both", "--seed", "3", "--gradient-accumulation-steps", "2", "--mixed-precision",
                                     "bf16", "--resume"))
    assert code == 0, err
    assert [p["step"] for p in json.loads((out / "train_log.json").read_text())["loss"]] == [1, 2, 3]


@pytest.mark.parametrize("case, message", [
    ("empty", r"^error: no clips in .*: expected video files"),
    ("short", r"^error: clip .*clip0\.mp4 has 5 frames; num_frames=8 at sample_stride=1 needs at least 8$"),
    ("broken", r"^error: cannot read clip .*bad\.mp4"),
    ("caption", r"^error: clip .*clip1\.gif has no caption"),
    ("size", r"^error: height and width must be multiples of 8, got 20x16$"),
    ("model", r"^error: model '.*no-such-model' is not a local folder"),
    ("target", r"^error: LoRA target 'nothing_matches' matches no linear layer of UNet3D"),
    ("existing", r"^error: .* already has training checkpoints: pass resume=True \(CLI: --resume\)"),
])
def test_errors_are_one_line_with_status_2(setup, tmp_path, capsys, case, message):
    model, data = setup
    out = tmp_path / "out"
    extra = []
    if case == "empty":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "short":
        extra = ["--num-frames", "8"]
    elif case == "broken":
        data = tt.write_clips(tmp_path / "broken", kinds=("mp4",))
        (data / "bad.mp4").write_bytes(b"junk" * 50)
        (data / "bad.txt").write_text("x")
    elif case == "caption":
        data = tt.write_clips(tmp_path / "nocaption", kinds=("mp4", "gif"))
        (data / "clip1.txt").unlink()
    elif case == "size":
        extra = ["--height", "20"]
    elif case == "model":
        model = tmp_path / "no-such-model"
    elif case == "target":
        extra = ["--target", "nothing_matches"]
    elif case == "existing":
        (out / "checkpoints" / "step_000001").mkdir(parents=True)
        (out / "checkpoints" / "step_000001" / "trainer_state.pt").write_bytes(b"")
    code, _, err = run(capsys, *args((model, data), out, *extra))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), err
    assert not (out / "pytorch_lora_weights.safetensors").exists()


def test_bad_flag_values_are_refused_by_argparse(setup, tmp_path, capsys):
    for flag, value in (("--rank", "0"), ("--mixed-precision", "fp8"), ("--target", "(")):
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args(setup, tmp_path / "o")] + [flag, value])
        assert exit_info.value.code == 2
        assert flag in capsys.readouterr().err



def test_cli_choices_are_the_library_s():
    """The CLI keeps its own copies (so --help imports no torch); they must equal the library's."""
    from vidcore.cli import build_parser
    from vidcore.cli.train import TARGET_PRESETS
    from vidcore.training.config import MIXED_PRECISION
    from vidcore.training.data import CROPS
    from vidcore.training.lora import TARGETS

    def sub(parser, name):
        return next(a for a in parser._actions if getattr(a, "choices", None) and name in a.choices).choices[name]

    lora = sub(sub(build_parser(), "train"), "lora")
    choices = {a.dest: a.choices for a in lora._actions if a.choices}
    assert tuple(choices["mixed_precision"]) == MIXED_PRECISION and tuple(choices["crop"]) == CROPS
    assert set(TARGET_PRESETS) == set(TARGETS)
