"""The ``vidcore`` command line: generate / convert / inspect on a tiny random pipeline, and the
one-line errors for missing, truncated, mismatched and malicious checkpoints.

The CLI runs in-process through ``vidcore.cli.main([...])``; one test runs ``python -m vidcore`` in a
subprocess to prove the entry point.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import tiny
import vidcore
import vidcore.loading
from vidcore.cli import main
from vidcore.errors import VidcoreError

WEIGHTS = "diffusion_pytorch_model.safetensors"
# 16 x 24 pixels (multiples of 8), 3 frames, 2 steps: a generate call takes about a second on a CPU
SMALL = ["--height", "16", "--width", "24", "--frames", "3", "--steps", "2", "--device", "cpu", "--no-progress"]


pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "tiny-t2v"
    tiny.build_tiny_t2v_pipeline(folder)
    return folder


@pytest.fixture
def pipeline_copy(pipeline_folder, tmp_path) -> Path:
    """A private copy of the tiny pipeline that a test may damage."""
    return Path(shutil.copytree(pipeline_folder, tmp_path / "damaged"))


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def count_video_frames(path: Path) -> tuple[int, tuple[int, int]]:
    with av.open(str(path)) as container:
        frames = [f for f in container.decode(video=0)]
    return len(frames), (frames[0].width, frames[0].height)


def assert_one_line_error(code: int, out: str, err: str, *fragments: str) -> str:
    assert code == 2
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def assert_no_temp_leftovers(folder: Path) -> None:
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers


# ----------------------------------------------------------------------------- generate


@pytest.mark.parametrize("spelling", ["vidcore", "diffusers"])
def test_generate_text_to_video_mp4(capsys, pipeline_folder, tmp_path, spelling):
    out_file = tmp_path / "out" / "cat.mp4"
    code, out, err = run_cli(capsys, *tiny.cli_spelling(spelling, [
        "generate", "text-to-video", "--model", pipeline_folder, "--prompt", "a cat riding a horse",
        "--negative-prompt", "blurry", "-o", out_file, "--seed", 3, *SMALL]))
    assert code == 0, err
    assert out.strip() == str(out_file)
    assert count_video_frames(out_file) == (3, (24, 16))
    assert "it/s" not in err  # --no-progress


def test_generate_gif_several_videos_dpm(capsys, pipeline_folder, tmp_path):
    code, out, err = run_cli(capsys, "generate", "text-to-video", "--model", pipeline_folder, "--prompt", "a dog",
                             "-o", tmp_path / "dog.gif", "--num-videos", "2", "--scheduler", "dpm++", "--fps", "4",
                             "--vae-slicing", *SMALL)
    assert code == 0, err
    paths = [tmp_path / "dog_0.gif", tmp_path / "dog_1.gif"]
    assert out.split() == [str(p) for p in paths]
    videos = [vidcore.load_video(p) for p in paths]
    assert [len(v) for v in videos] == [3, 3]
    assert videos[0][0].size == (24, 16)
    assert not np.array_equal(np.asarray(videos[0][0]), np.asarray(videos[1][0]))  # two different samples


@pytest.mark.parametrize("spelling", ["vidcore", "diffusers"])
def test_generate_video_to_video(capsys, pipeline_folder, tmp_path, spelling):
    rng = np.random.default_rng(0)
    source = vidcore.export_to_video(rng.random((4, 16, 24, 3), dtype=np.float32), tmp_path / "in.mp4", fps=6)
    out_file = tmp_path / "v2v.mp4"
    code, out, err = run_cli(capsys, *tiny.cli_spelling(spelling, [
        "generate", "video-to-video", "--model", pipeline_folder, "--video", source, "--prompt", "a panda surfing",
        "--strength", "0.6", "--frames", "3", "--steps", "2", "--device", "cpu", "--no-progress", "-o", out_file]))
    assert code == 0, err
    assert out.strip() == str(out_file)
    assert count_video_frames(out_file) == (3, (24, 16))
    with av.open(str(out_file)) as container:  # --fps defaults to the input's rate
        assert float(container.streams.video[0].average_rate) == pytest.approx(6.0)


def test_entry_point_python_m_vidcore(pipeline_folder, tmp_path):
    out_file = tmp_path / "sub.mp4"
    # The installed package is what runs; the repository root must stay off sys.path, where its
    # kernels/ folder would shadow PyPI's `kernels`, which transformers imports.
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    env.pop("VIDCORE_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "vidcore", "generate", "text-to-video", "--model", str(pipeline_folder),
         "--prompt", "a robot dancing", "-o", str(out_file), *SMALL],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out_file)
    assert count_video_frames(out_file)[0] == 3


# ----------------------------------------------------------------------------- convert


@pytest.mark.parametrize("component", ["unet", "vae"])
def test_convert_round_trip_is_bit_exact(capsys, pipeline_folder, tmp_path, component):
    native = tmp_path / f"{component}.safetensors"
    code, out, err = run_cli(capsys, "convert", pipeline_folder, native, "--subfolder", component)
    assert code == 0, err
    arch = {"unet": "unet3d", "vae": "autoencoder_kl"}[component]
    assert out.startswith(f"converted {arch} diffusers -> vidcore:") and "float32" in out and str(native) in out
    assert len(out.strip().splitlines()) == 1

    back = tmp_path / f"{component}-diffusers"
    code, out, err = run_cli(capsys, "convert", native, back)  # --to defaults to the opposite format
    assert code == 0, err
    assert out.startswith(f"converted {arch} vidcore -> diffusers:")

    original = load_file(pipeline_folder / component / WEIGHTS)
    final = load_file(back / WEIGHTS)
    assert sorted(final) == sorted(original)
    for key, tensor in original.items():
        assert final[key].dtype == tensor.dtype and torch.equal(final[key], tensor), key
    original_config = json.loads((pipeline_folder / component / "config.json").read_text())
    assert json.loads((back / "config.json").read_text()) == original_config
    assert_no_temp_leftovers(tmp_path)


def test_convert_dtype_is_kept_unless_asked(capsys, pipeline_folder, tmp_path):
    half = tmp_path / "vae16.safetensors"
    assert run_cli(capsys, "convert", pipeline_folder, half, "--subfolder", "vae", "--dtype", "fp16")[0] == 0
    back = tmp_path / "vae16"
    code, out, _ = run_cli(capsys, "convert", half, back)
    assert code == 0 and "float16" in out
    original = load_file(pipeline_folder / "vae" / WEIGHTS)
    final = load_file(back / WEIGHTS)
    for key, tensor in original.items():
        assert final[key].dtype == torch.float16 and torch.equal(final[key], tensor.half()), key


def test_convert_refuses_to_overwrite_without_force(capsys, pipeline_folder, tmp_path):
    native = tmp_path / "unet.safetensors"
    native.write_bytes(b"keep me")
    code, out, err = run_cli(capsys, "convert", pipeline_folder, native, "--subfolder", "unet")
    assert_one_line_error(code, out, err, str(native), "already exists", "--force")
    assert native.read_bytes() == b"keep me"
    assert run_cli(capsys, "convert", pipeline_folder, native, "--subfolder", "unet", "--force")[0] == 0
    assert len(load_file(native)) > 0

    folder = tmp_path / "unet-diffusers"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    code, out, err = run_cli(capsys, "convert", native, folder)
    assert_one_line_error(code, out, err, "already exists", "--force")
    assert (folder / "old.txt").exists()
    assert run_cli(capsys, "convert", native, folder, "--force")[0] == 0
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", WEIGHTS]
    assert_no_temp_leftovers(tmp_path)


def test_convert_interrupted_leaves_nothing(capsys, pipeline_folder, tmp_path, monkeypatch):
    native = tmp_path / "vae.safetensors"
    assert run_cli(capsys, "convert", pipeline_folder, native, "--subfolder", "vae")[0] == 0

    def half_written(module, folder, diffusers_config=None):
        (Path(folder) / WEIGHTS).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(vidcore.loading, "save_diffusers", half_written)
    code, out, err = run_cli(capsys, "convert", native, tmp_path / "vae-diffusers")
    assert code == 130 and "Traceback" not in err
    assert not (tmp_path / "vae-diffusers").exists()
    assert_no_temp_leftovers(tmp_path)


def test_convert_pipeline_folder_needs_subfolder(capsys, pipeline_folder, tmp_path):
    code, out, err = run_cli(capsys, "convert", pipeline_folder, tmp_path / "x.safetensors")
    assert_one_line_error(code, out, err, "pipeline folder", "unet", "vae")
    assert not (tmp_path / "x.safetensors").exists()


# ----------------------------------------------------------------------------- inspect


def test_inspect_pipeline_folder(capsys, pipeline_folder):
    code, out, err = run_cli(capsys, "inspect", pipeline_folder)
    assert code == 0, err
    assert "TextToVideoSDPipeline" in out
    assert "architecture:  unet3d" in out and "architecture:  autoencoder_kl" in out
    assert "format:        diffusers" in out
    assert "float32 (" in out and WEIGHTS in out and "MiB" in out
    assert "transformers.CLIPTextModel" in out and "diffusers.DDIMScheduler" in out
    assert "same name" in out  # conversion report rule counts
    unet_params = sum(t.numel() for t in load_file(pipeline_folder / "unet" / WEIGHTS).values())
    assert f"parameters:    {unet_params / 1e6:,.1f} M" in out


def test_inspect_model_and_native_file(capsys, pipeline_folder, tmp_path):
    code, out, err = run_cli(capsys, "inspect", pipeline_folder, "--subfolder", "unet")
    assert code == 0, err
    assert "architecture:  unet3d" in out and "format:        diffusers" in out
    assert "conversion:    diffusers-unet3d (forward)" in out

    native = tmp_path / "unet.safetensors"
    assert run_cli(capsys, "convert", pipeline_folder, native, "--subfolder", "unet")[0] == 0
    code, out, err = run_cli(capsys, "inspect", native)
    assert code == 0, err
    assert "architecture:  unet3d" in out and "format:        vidcore" in out


# ----------------------------------------------------------------------------- errors


def test_error_missing_model_folder(capsys, tmp_path):
    missing = tmp_path / "no-such-model"
    code, out, err = run_cli(capsys, "generate", "text-to-video", "--model", missing, "--prompt", "a cat", *SMALL)
    assert_one_line_error(code, out, err, str(missing), "not a local folder")
    code, out, err = run_cli(capsys, "inspect", missing)
    assert_one_line_error(code, out, err, str(missing))


def test_error_folder_without_model_index(capsys, pipeline_folder):
    code, out, err = run_cli(capsys, "generate", "text-to-video", "--model", pipeline_folder / "unet",
                             "--prompt", "a cat", *SMALL)
    assert_one_line_error(code, out, err, "model_index.json is missing")


def test_error_truncated_safetensors(capsys, pipeline_copy, tmp_path):
    weights = pipeline_copy / "unet" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, out, err = run_cli(capsys, "generate", "text-to-video", "--model", pipeline_copy, "--prompt", "a cat",
                             "-o", tmp_path / "never.mp4", *SMALL)
    assert_one_line_error(code, out, err, str(weights), "corrupt or truncated")
    assert not (tmp_path / "never.mp4").exists()
    code, out, err = run_cli(capsys, "convert", pipeline_copy, tmp_path / "u.safetensors", "--subfolder", "unet")
    assert_one_line_error(code, out, err, "corrupt or truncated")
    assert not (tmp_path / "u.safetensors").exists()


def test_error_checkpoint_missing_a_key(capsys, pipeline_copy, tmp_path):
    weights = pipeline_copy / "unet" / WEIGHTS
    state = load_file(weights)
    del state["conv_in.weight"]
    save_file(state, weights, metadata={"format": "pt"})
    code, out, err = run_cli(capsys, "inspect", pipeline_copy, "--subfolder", "unet")
    assert_one_line_error(code, out, err, "conv_in.weight", "nothing produced")
    code, out, err = run_cli(capsys, "generate", "text-to-video", "--model", pipeline_copy, "--prompt", "a cat",
                             "-o", tmp_path / "never.mp4", *SMALL)
    assert_one_line_error(code, out, err, "conv_in.weight")
    assert not (tmp_path / "never.mp4").exists()


class _Evil:
    """Unpickling this runs ``touch MARKER``: exactly what a safe loader must refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_error_malicious_pickle_is_refused(capsys, pipeline_copy, tmp_path):
    marker = tmp_path / "pwned"
    unet = pipeline_copy / "unet"
    (unet / WEIGHTS).unlink()
    torch.save({"conv_in.weight": _Evil(marker)}, unet / "diffusion_pytorch_model.bin")
    code, out, err = run_cli(capsys, "generate", "text-to-video", "--model", pipeline_copy, "--prompt", "a cat",
                             *SMALL, "-o", tmp_path / "never.mp4")
    assert_one_line_error(code, out, err, "refusing to load", "diffusion_pytorch_model.bin")
    code, out, err = run_cli(capsys, "inspect", pipeline_copy, "--subfolder", "unet")
    assert_one_line_error(code, out, err, "refusing to load")
    assert not marker.exists()


def test_error_bad_arguments_fail_before_loading(capsys, tmp_path):
    # the model path does not exist: the output check must come first
    code, out, err = run_cli(capsys, "generate", "text-to-video", "--model", tmp_path / "missing", "--prompt", "x",
                             "-o", tmp_path / "out.avi")
    assert_one_line_error(code, out, err, "-o/--output", ".mp4")
    with pytest.raises(SystemExit) as exc:  # argparse: --model is required (only text-to-video has a built-in one)
        main(["generate", "video-to-video", "--video", "v.mp4", "--prompt", "x"])
    assert exc.value.code == 2
    assert "--model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["generate", "video-to-video", "--model", "m", "--video", "v.mp4", "--prompt", "x", "--strength", "2"])
    assert exc.value.code == 2


def test_vidcore_debug_shows_the_traceback(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("VIDCORE_DEBUG", "1")
    with pytest.raises(VidcoreError):
        main(["inspect", str(tmp_path / "missing")])


def test_make_random_model_then_generate(tmp_path):
    import av

    from vidcore.cli import main

    folder = tmp_path / "rnd"
    assert main(["make-random-model", str(folder)]) == 0
    assert main(["make-random-model", str(folder)]) == 2  # refuses to overwrite
    out = tmp_path / "r.mp4"
    assert main(["generate", "text-to-video", "--model", str(folder), "--prompt", "a cat", "--frames", "2",
                 "--height", "16", "--width", "16", "--steps", "1", "--no-progress", "-o", str(out)]) == 0
    with av.open(str(out)) as f:
        assert sum(1 for _ in f.decode(video=0)) == 2


def test_generate_step_cache_flags(capsys, pipeline_folder, tmp_path, monkeypatch):
    """--deep-cache 1 is the uncached video; --deep-cache 3 --cache-branch 1 and --block-cache run; bad values
    are one-line errors."""
    import vidcore.cli.generate

    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video", lambda frames, path, fps: written.append(frames) or str(path))
    base = ["generate", "text-to-video", "--model", pipeline_folder, "--prompt", "a cat", "-o", tmp_path / "c.mp4",
            *SMALL]
    for extra in ([], ["--deep-cache", "1"], ["--deep-cache", "3", "--cache-branch", "1"], ["--block-cache", "0.5"]):
        code, out, err = run_cli(capsys, *base, *extra)
        assert code == 0, err
    plain, exact, deep, block = written
    assert np.array_equal(plain, exact)
    assert np.isfinite(deep).all() and np.isfinite(block).all() and not np.array_equal(plain, deep)
    for extra, fragment in ((["--deep-cache", "2", "--cache-branch", "5"], "--cache-branch: cache_branch_id"),
                            (["--cache-branch", "1"], "--cache-branch applies to --deep-cache"),
                            (["--deep-cache", "2", "--block-cache", "0.1"], "exclude each other")):
        assert_one_line_error(*run_cli(capsys, *base, *extra), fragment)
    for extra in (["--deep-cache", "0"], ["--block-cache", "0"], ["--block-cache", "-1"], ["--cache-branch", "-1"]):
        with pytest.raises(SystemExit) as exit_:
            main([str(a) for a in base + extra])
        assert exit_.value.code == 2
        assert "expected" in capsys.readouterr().err


def test_generate_text_to_video_with_a_trained_lora(capsys, pipeline_folder, tmp_path, monkeypatch):
    """--lora on a ModelScope-layout model: a LoRA made with vidcore.training (random non-zero branches) gives the
    frames of the pipeline with the same file loaded by hand, and changes them."""
    from vidcore.training import LoRAConfig, add_lora, save_lora

    unet = vidcore.TextToVideoPipeline.from_pretrained(pipeline_folder).unet
    add_lora(unet, LoRAConfig(rank=2, alpha=4, target="both"))
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".lora." in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.3)
    save_lora(unet, tmp_path / "lora.safetensors")
    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video", lambda frames, path, fps: written.append(frames) or str(path))
    args = ["generate", "text-to-video", "--model", pipeline_folder, "--prompt", "a cat", "--seed", 1, *SMALL,
            "-o", tmp_path / "v.mp4"]
    for extra in ([], ["--lora", tmp_path / "lora.safetensors", "--lora-scale", "0.7"]):
        code, _, err = run_cli(capsys, *args, *extra)
        assert code == 0, err
    pipe = vidcore.TextToVideoPipeline.from_pretrained(pipeline_folder)
    pipe.load_lora_weights(tmp_path / "lora.safetensors", adapter_name="lora")
    pipe.set_adapters("lora", 0.7)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a cat", num_frames=3, height=16, width=24, num_inference_steps=2, output_type="np",
                    generator=torch.Generator("cpu").manual_seed(1)).frames
    np.testing.assert_allclose(written[1], expected[0], rtol=0, atol=5e-6)
    assert np.abs(written[1] - written[0]).max() > 1e-3
