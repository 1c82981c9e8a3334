"""``vidcore generate animatediff`` end to end on a tiny random SD1.5 model + motion adapter."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

import tiny
import tiny_animatediff as ta
import vidcore.cli
from vidcore import AnimateDiffPipeline
from vidcore.cli import main


pytestmark = pytest.mark.usefixtures("one_thread", "offline")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return ta.build_tiny_animatediff(tmp_path_factory.mktemp("cli-animatediff"))


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def direct(setup, scheduler=None, **kwargs):
    pipe = AnimateDiffPipeline.from_pretrained(setup.sd, motion_adapter=setup.adapter)
    if scheduler is not None:
        from vidcore.schedulers import scheduler_class

        pipe.scheduler = scheduler_class(scheduler).from_config(pipe.scheduler.to_diffusers_config())
    pipe.set_progress_bar_config(disable=True)
    return pipe(output_type="np", **kwargs).frames


def test_writes_a_gif_equal_to_a_direct_call(capsys, setup, tmp_path):
    out_path = tmp_path / "a.gif"
    code, out, err = run_cli(capsys, "generate", "animatediff", "--model", setup.sd, "--motion-adapter", setup.adapter,
                             "--prompt", "a cat walking", "--negative-prompt", "blurry", "--frames", "3",
                             "--height", "16", "--width", "24", "--steps", "2", "--seed", "5", "--fps", "6",
                             "--device", "cpu", "--no-progress", "-o", out_path)
    assert code == 0, err
    assert out.strip() == str(out_path)
    expected = direct(setup, prompt="a cat walking", negative_prompt="blurry", num_frames=3, height=16, width=24,
                      num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(5))[0]
    with PIL.Image.open(out_path) as gif:
        assert gif.n_frames == 3 and gif.size == (24, 16)
        assert gif.info["duration"] == pytest.approx(1000 / 6, abs=10)  # GIF stores 10 ms units
        gif.seek(0)
        first = np.asarray(gif.convert("RGB"), dtype=np.float32) / 255
    # a GIF holds a 256-colour palette: compare loosely here, exactly in the next test
    assert np.abs(first - expected[0]).mean() < 0.05


@pytest.mark.parametrize("scheduler,spelling", [("euler", "vidcore"), ("dpm++", "diffusers"), ("euler-a", "vidcore")])
def test_forwards_every_option(capsys, setup, tmp_path, monkeypatch, scheduler, spelling):
    """The CLI's frames equal a direct pipeline call with the same arguments (so no option is dropped)."""
    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video", lambda frames, path, fps: written.append((frames, fps)) or str(path))
    code, out, err = run_cli(capsys, *tiny.cli_spelling(spelling, [
        "generate", "animatediff", "--model", setup.sd, "--motion-adapter", setup.adapter, "--prompt", "waves",
        "--frames", "30", "--height", "8", "--width", "8", "--steps", "2", "--guidance", "5.0", "--seed", "3",
        "--scheduler", scheduler, "--num-videos", "2", "--context-length", "12", "--context-stride", "5",
        "--context-weighting", "flat", "--decode-chunk-size", "4", "--vae-slicing", "--fps", "10", "--device", "cpu",
        "--dtype", "fp32", "--no-progress", "-o", tmp_path / "v.mp4"]))
    assert code == 0, err
    assert out.split() == [str(tmp_path / "v_0.mp4"), str(tmp_path / "v_1.mp4")]
    expected = direct(setup, scheduler=vidcore.cli.tasks.ANIMATEDIFF_SCHEDULERS[scheduler], prompt="waves", num_frames=30,
                      height=8, width=8, num_inference_steps=2, guidance_scale=5.0, num_videos_per_prompt=2,
                      context_length=12, context_stride=5, context_weighting="flat", decode_chunk_size=4,
                      generator=torch.Generator("cpu").manual_seed(3))
    assert expected.shape == (2, 30, 8, 8, 3)
    assert [fps for _, fps in written] == [10, 10]
    for (frames, _), want in zip(written, expected):  # the CLI decodes with VAE slicing: float32 rounding only
        np.testing.assert_allclose(frames, want, rtol=0, atol=5e-6)
    # the context options reach the pipeline: other windows give another video
    written.clear()
    run_cli(capsys, "generate", "animatediff", "--model", setup.sd, "--motion-adapter", setup.adapter, "--prompt",
            "waves", "--frames", "30", "--height", "8", "--width", "8", "--steps", "2", "--guidance", "5.0", "--seed",
            "3", "--scheduler", scheduler, "--device", "cpu", "--no-progress", "-o", tmp_path / "w.mp4")
    assert np.abs(written[0][0] - expected[0]).max() > 1e-4


def test_errors_are_one_line(capsys, setup, tmp_path):
    cases = [
        (["--model", setup.sd, "--prompt", "a"], "without motion modules; pass motion_adapter= (CLI: --motion-adapter)"),
        (["--model", setup.sd, "--motion-adapter", setup.adapter, "--prompt", "a", "--height", "12", "--width", "8"],
         "multiples of 8"),
        (["--model", setup.sd, "--motion-adapter", setup.adapter, "--prompt", "a", "--frames", "30", "--height", "8",
          "--width", "8", "--context-length", "40"], "context_length must be an integer between 1 and the motion "
                                                     "adapter's motion_max_seq_length=24, got 40"),
        (["--model", setup.sd, "--motion-adapter", setup.adapter, "--prompt", "a", "--frames", "30", "--height", "8",
          "--width", "8", "--context-length", "8", "--context-stride", "9"], "context_stride must be between 1 and"),
    ]
    for argv, message in cases:
        code, out, err = run_cli(capsys, "generate", "animatediff", *argv, "--steps", "1", "--device", "cpu",
                                 "--no-progress", "-o", tmp_path / "x.gif")
        assert code == 2, err
        assert "Traceback" not in out + err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
        assert not (tmp_path / "x.gif").exists()


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "animatediff", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--motion-adapter", "--config-from", "--context-length", "--context-stride", "--context-weighting",
                   "--vae-slicing", "--cpu-offload", "euler"):
        assert option in text


def test_single_file_model_with_config_from(capsys, setup, tmp_path, monkeypatch):
    """--model an LDM single file (civitai layout) + --config-from the SD1.5 folder: the frames of
    AnimateDiffPipeline.from_single_file; --config-from with a folder model is refused."""
    from safetensors.torch import save_file

    from vidcore.loading import original_state_dict

    state = {}
    for module in (vidcore.load_model(setup.sd / "unet"), vidcore.load_model(setup.sd / "vae"),
                   setup.pipe.text_encoder):
        state.update(original_state_dict(module))
    model = tmp_path / "civitai_model.safetensors"
    save_file(state, str(model))
    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video", lambda frames, path, fps: written.append(frames) or str(path))
    code, out, err = run_cli(capsys, "generate", "animatediff", "--model", model, "--config-from", setup.sd,
                             "--motion-adapter", setup.adapter, "--prompt", "waves", "--frames", "2", "--height", "8",
                             "--width", "16", "--steps", "2", "--seed", "4", "--device", "cpu", "--no-progress",
                             "-o", tmp_path / "v.mp4")
    assert code == 0, err
    pipe = AnimateDiffPipeline.from_single_file(model, motion_adapter=setup.adapter, config_from=setup.sd)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("waves", num_frames=2, height=8, width=16, num_inference_steps=2, output_type="np",
                    generator=torch.Generator("cpu").manual_seed(4)).frames[0]
    assert np.array_equal(written[0], expected)
    # the same model from the folder gives the same frames (the LDM round trip is exact)
    assert np.array_equal(written[0], direct(setup, prompt="waves", num_frames=2, height=8, width=16,
                                             num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(4))[0])

    code, out, err = run_cli(capsys, "generate", "animatediff", "--model", setup.sd, "--config-from", setup.sd,
                             "--motion-adapter", setup.adapter, "--prompt", "a", "--device", "cpu", "-o",
                             tmp_path / "x.gif")
    assert code == 2 and "error: --config-from applies to a single-file --model (.safetensors/.ckpt)" in err
    code, out, err = run_cli(capsys, "generate", "animatediff", "--model", model, "--config-from", setup.sd,
                             "--prompt", "a", "--device", "cpu", "-o", tmp_path / "x.gif")
    assert code == 2 and "has no motion modules; pass motion_adapter= (CLI: --motion-adapter)" in err


# -- vidcore convert on AnimateDiff's original files ------------------------------------------------

def _equal_state(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for key, tensor in a.items():
        assert torch.equal(tensor, b[key]), key


def test_convert_motion_module_and_ldm_files(capsys, setup, tmp_path):
    """An original motion-module .ckpt -> diffusers MotionAdapter folder (what diffusers reads) and vidcore file;
    a civitai LDM file's VAE / UNet (--component, --config-from) -> vidcore file / diffusers folder; bit-exact."""
    from diffusers import MotionAdapter as RefAdapter
    from safetensors.torch import load_file

    from vidcore.loading import original_state_dict, save_original

    mm = save_original(vidcore.load_model(setup.adapter), tmp_path / "mm_tiny_v2.ckpt")
    code, out, err = run_cli(capsys, "convert", mm, tmp_path / "adapter", "--to", "diffusers")
    assert code == 0, err
    assert out.startswith("converted motion_adapter original -> diffusers:")
    ref = RefAdapter.from_pretrained(setup.adapter)
    _equal_state(RefAdapter.from_pretrained(tmp_path / "adapter").state_dict(), ref.state_dict())
    code, out, err = run_cli(capsys, "convert", mm, tmp_path / "adapter.safetensors")
    assert code == 0 and out.startswith("converted motion_adapter original -> vidcore:"), err
    _equal_state(vidcore.load_model(tmp_path / "adapter.safetensors").state_dict(),
                 vidcore.load_model(setup.adapter).state_dict())

    state = {}
    for module in (vidcore.load_model(setup.sd / "unet"), vidcore.load_model(setup.sd / "vae"),
                   setup.pipe.text_encoder):
        state.update(original_state_dict(module))
    ldm = tmp_path / "civitai_model.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(ldm))
    code, out, err = run_cli(capsys, "convert", ldm, tmp_path / "vae.safetensors", "--component", "vae",
                             "--config-from", setup.sd)
    assert code == 0 and out.startswith("converted autoencoder_kl original -> vidcore:"), err
    _equal_state(vidcore.load_model(tmp_path / "vae.safetensors").state_dict(),
                 vidcore.load_model(setup.sd / "vae").state_dict())
    code, out, err = run_cli(capsys, "convert", ldm, tmp_path / "unet", "--to", "diffusers", "--config-from", setup.sd)
    assert code == 0 and out.startswith("converted unet2d original -> diffusers:"), err
    _equal_state(load_file(tmp_path / "unet" / "diffusion_pytorch_model.safetensors"),
                 load_file(setup.sd / "unet" / "diffusion_pytorch_model.safetensors"))

    for argv, message in [
        ([setup.sd / "vae", tmp_path / "x.safetensors", "--config-from", setup.sd],
         "--config-from applies to original single files"),
        ([mm, tmp_path / "y.safetensors", "--component", "vae"], "is an AnimateDiff motion-module file; component"),
        ([ldm, tmp_path / "z.safetensors"], "does not fit UNet2D"),  # the default SD1.5 config: not this tiny model
    ]:
        code, out, err = run_cli(capsys, "convert", *argv)
        assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not any((tmp_path / n).exists() for n in ("x.safetensors", "y.safetensors", "z.safetensors"))


@pytest.mark.parametrize("scheduler,extra", [("lcm", []), ("tcd", ["--eta", "0.3"])])
def test_few_step_scheduler_and_lora(capsys, setup, tmp_path, monkeypatch, scheduler, extra):
    """--scheduler lcm|tcd (linear betas, the AnimateLCM recipe) and --lora (a kohya-layout spatial LoRA, as
    AnimateLCM_sd15_t2v_lora.safetensors) give the frames of the same pipeline set up by hand."""
    from safetensors.torch import save_file
    from test_pipeline_animatediff_lcm import kohya_lora

    from vidcore.schedulers import scheduler_class

    save_file(kohya_lora(setup.pipe.unet), str(tmp_path / "AnimateLCM_sd15_t2v_lora.safetensors"))
    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video", lambda frames, path, fps: written.append(frames) or str(path))
    code, _, err = run_cli(capsys, "generate", "animatediff", "--model", setup.sd, "--motion-adapter", setup.adapter,
                           "--prompt", "waves", "--frames", "3", "--height", "8", "--width", "16", "--steps", "4",
                           "--guidance", "1.5", "--seed", "2", "--scheduler", scheduler, *extra, "--lora", tmp_path,
                           "--lora-weight-name", "AnimateLCM_sd15_t2v_lora.safetensors", "--lora-scale", "0.8",
                           "--device", "cpu", "--no-progress", "-o", tmp_path / "v.mp4")
    assert code == 0, err
    pipe = AnimateDiffPipeline.from_pretrained(setup.sd, motion_adapter=setup.adapter)
    name = vidcore.cli.tasks.FEW_STEP_SCHEDULERS[scheduler]
    pipe.scheduler = scheduler_class(name).from_config(pipe.scheduler.to_diffusers_config(), beta_schedule="linear")
    pipe.load_lora_weights(tmp_path, weight_name="AnimateLCM_sd15_t2v_lora.safetensors")
    pipe.set_adapters(pipe.get_active_adapters(), 0.8)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt="waves", num_frames=3, height=8, width=16, num_inference_steps=4, guidance_scale=1.5,
                    eta=0.3 if extra else 0.0, output_type="np", generator=torch.Generator("cpu").manual_seed(2)).frames
    np.testing.assert_allclose(written[0], expected[0], rtol=0, atol=5e-6)
    code, _, err = run_cli(capsys, "generate", "animatediff", "--model", setup.sd, "--motion-adapter", setup.adapter,
                           "--prompt", "waves", "--lora-scale", "0.5", "--device", "cpu", "-o", tmp_path / "w.mp4")
    assert code != 0 and "--lora" in err
