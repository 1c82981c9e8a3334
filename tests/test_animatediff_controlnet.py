"""AnimateDiffControlNetPipeline against diffusers' AnimateDiffControlNetPipeline (tiny random SD1.5 model +
motion adapter + ControlNets, same seed -> same frames): one and two ControlNets, guidance windows, guess
mode, long videos through context windows, loading, and errors."""

import numpy as np
import pytest
import torch

import tiny
import tiny_animatediff as ta
import tiny_controlnet as tc
import vidcore

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from diffusers import ControlNetModel

    from vidcore.pipelines.animatediff import animatediff_scheduler

    root = tmp_path_factory.mktemp("animatediff-controlnet")
    built = ta.build_tiny_animatediff(root)
    nets, folders = [], []
    for k in range(2):
        net = tiny.randomize_(ControlNetModel(**tc.tiny_controlnet_config()), 10 + k).eval()
        net.save_pretrained(root / f"controlnet{k}")
        nets.append(net)
        folders.append(root / f"controlnet{k}")
    scheduler = animatediff_scheduler(built.sd / "scheduler" / "scheduler_config.json")
    return built, nets, folders, scheduler


def reference(setup, controlnets):
    from diffusers import AnimateDiffControlNetPipeline
    from diffusers.models.controlnets import MultiControlNetModel

    built, nets, _, _ = setup
    net = nets[0] if controlnets == 1 else MultiControlNetModel(nets[:controlnets])
    ref = AnimateDiffControlNetPipeline(**built.pipe.components, controlnet=net)
    ref.set_progress_bar_config(disable=True)
    return ref


def ours(setup, controlnets):
    built, _, folders, scheduler = setup
    pipe = vidcore.AnimateDiffControlNetPipeline.from_pretrained(
        built.sd, motion_adapter=built.adapter, controlnet=folders[:controlnets] if controlnets > 1 else folders[0],
        scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("output_type", "np")
    return np.asarray(pipe(generator=torch.Generator().manual_seed(seed), **kwargs).frames)


def test_one_controlnet_matches_diffusers(setup):
    control = tc.random_control_frames(5, 16, 24)
    kwargs = dict(prompt="a cat walking", negative_prompt="blurry", num_frames=5, height=16, width=24,
                  num_inference_steps=4, conditioning_frames=control, controlnet_conditioning_scale=0.8,
                  control_guidance_start=0.2, control_guidance_end=0.8)
    expected, got = run(reference(setup, 1), **kwargs), run(ours(setup, 1), **kwargs)
    assert expected.shape == got.shape == (1, 5, 16, 24, 3)
    assert np.abs(expected - got).max() < TOL


def test_two_controlnets_and_guess_mode_without_guidance_match_diffusers(setup):
    controls = [tc.random_control_frames(3, 24, 16, seed=1), tc.random_control_frames(3, 24, 16, seed=2)]
    kwargs = dict(prompt="a dog", num_frames=3, height=24, width=16, num_inference_steps=3,
                  conditioning_frames=controls, controlnet_conditioning_scale=[0.5, 1.2],
                  control_guidance_start=[0.0, 0.3], control_guidance_end=[0.7, 1.0])
    ref, mine = reference(setup, 2), ours(setup, 2)
    assert np.abs(run(ref, **kwargs) - run(mine, **kwargs)).max() < TOL
    single = dict(kwargs, conditioning_frames=controls[0], controlnet_conditioning_scale=0.9, guidance_scale=1.0,
                  guess_mode=True, control_guidance_start=0.0, control_guidance_end=1.0)
    assert np.abs(run(reference(setup, 1), **single) - run(ours(setup, 1), **single)).max() < TOL


def test_zero_scale_is_the_plain_animatediff_run(setup):
    built, _, _, scheduler = setup
    plain = vidcore.AnimateDiffPipeline.from_pretrained(built.sd, motion_adapter=built.adapter, scheduler=scheduler)
    plain.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a cat", num_frames=3, height=16, width=16, num_inference_steps=3, output_type="latent")
    controlled = run(ours(setup, 1), conditioning_frames=tc.random_control_frames(3, 16, 16),
                     controlnet_conditioning_scale=0.0, **kwargs)
    assert np.array_equal(controlled, run(plain, **kwargs))


def test_guess_mode_with_guidance_gives_zero_residuals_to_the_unconditional_half(setup):
    pipe = ours(setup, 1)
    seen = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["mid_block_additional_residual"]), with_kwargs=True)
    try:
        got = run(pipe, prompt="a cat", num_frames=3, height=16, width=16, num_inference_steps=2, guess_mode=True,
                  conditioning_frames=tc.random_control_frames(3, 16, 16), output_type="latent")
    finally:
        hook.remove()
    assert np.isfinite(got).all()
    uncond, cond = seen[0].chunk(2)
    assert torch.count_nonzero(uncond) == 0 and torch.count_nonzero(cond) > 0


def test_long_video_windows_see_their_own_control_frames(setup):
    pipe = ours(setup, 1)
    control = tc.random_control_frames(30, 16, 16, seed=3)
    got = run(pipe, prompt="a cat", num_frames=30, height=16, width=16, num_inference_steps=2, context_length=12,
              context_stride=6, conditioning_frames=control, output_type="latent")
    assert got.shape == (1, 4, 30, 8, 8) and np.isfinite(got).all()
    # a window's frames see their own control images: changing frame 29's image changes only the last window
    changed = control[:29] + [tc.random_control_frames(1, 16, 16, seed=9)[0]]
    other = run(pipe, prompt="a cat", num_frames=30, height=16, width=16, num_inference_steps=1, context_length=12,
                context_stride=6, conditioning_frames=changed, output_type="latent")
    base = run(pipe, prompt="a cat", num_frames=30, height=16, width=16, num_inference_steps=1, context_length=12,
               context_stride=6, conditioning_frames=control, output_type="latent")
    diff = np.abs(other - base).max(axis=(0, 1, 3, 4))
    assert diff[:18].max() == 0 and diff[29] > 0  # the last window is frames 18..29


@pytest.mark.parametrize("kwargs,message", [
    (dict(conditioning_frames=None), "conditioning_frames is required"),
    (dict(num_frames=4), "3 images for num_frames=4"),
    (dict(controlnet_conditioning_scale=[1.0, 1.0]), "2 entries for 1 ControlNets"),
    (dict(control_guidance_start=0.9, control_guidance_end=0.5), "control_guidance_start"),
])
def test_bad_inputs(setup, kwargs, message):
    pipe = ours(setup, 1)
    call = dict(prompt="a", num_frames=3, height=16, width=16, num_inference_steps=2,
                conditioning_frames=tc.random_control_frames(3, 16, 16))
    call.update(kwargs)
    with pytest.raises(ValueError, match=message):
        pipe(**call)


def test_missing_controlnet_folder_names_the_argument(setup):
    from vidcore.errors import ModelNotFoundError

    built = setup[0]
    with pytest.raises(ModelNotFoundError, match="controlnet="):
        vidcore.AnimateDiffControlNetPipeline.from_pretrained(built.sd, motion_adapter=built.adapter)


@pytest.mark.parametrize("control", ["pose", "canny"])
def test_cli_control_equals_a_direct_call(setup, tmp_path, capsys, monkeypatch, control):
    import vidcore.cli.generate
    from vidcore.cli import main
    from vidcore.controls import canny

    built, _, folders, _ = setup
    source = tmp_path / "pose.gif"
    vidcore.export_to_gif(tc.random_control_frames(4, 16, 24, seed=5), source, fps=4)
    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video", lambda frames, path, fps: written.append(frames)
                        or str(path))
    code = main(["generate", "animatediff", "--model", str(built.sd), "--motion-adapter", str(built.adapter),
                 "--prompt", "a cat", "--control", control, "--control-video", str(source), "--controlnet",
                 str(folders[0]), "--controlnet-scale", "0.7", "--frames", "3", "--height", "16", "--width", "24",
                 "--steps", "2", "--seed", "1", "--device", "cpu", "--no-progress", "-o", str(tmp_path / "o.mp4")])
    assert code == 0, capsys.readouterr().err
    pipe = vidcore.AnimateDiffControlNetPipeline.from_pretrained(built.sd, motion_adapter=built.adapter,
                                                                controlnet=folders[0])
    pipe.set_progress_bar_config(disable=True)
    frames = vidcore.load_video(source)[:3]
    expected = run(pipe, seed=1, prompt="a cat", num_frames=3, height=16, width=24, num_inference_steps=2,
                   conditioning_frames=canny(frames) if control == "canny" else frames,
                   controlnet_conditioning_scale=0.7)
    assert np.abs(np.asarray(written[0]) - expected[0]).max() < 1e-5


def test_cli_control_video_shorter_than_frames(setup, tmp_path, capsys):
    from vidcore.cli import main

    built, _, folders, _ = setup
    source = tmp_path / "pose.gif"
    vidcore.export_to_gif(tc.random_control_frames(4, 16, 24, seed=5), source, fps=4)
    code = main(["generate", "animatediff", "--model", str(built.sd), "--motion-adapter", str(built.adapter),
                 "--prompt", "a cat", "--control", "pose", "--control-video", str(source), "--controlnet",
                 str(folders[0]), "--frames", "6", "--height", "16", "--width", "24", "--steps", "1", "--device",
                 "cpu", "--no-progress", "-o", str(tmp_path / "o.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines() == ["error: --control-video has 4 frames for --frames 6"], err
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("argv,message", [
    (["--control", "pose"], "needs --control-video"),
    (["--controlnet", "x"], "applies to --control"),
    (["--control", "pose", "--control-video", "a.gif", "--video", "b.mp4"], "exclude each other"),
])
def test_cli_flag_errors(setup, capsys, argv, message):
    from vidcore.cli import main

    built = setup[0]
    code = main(["generate", "animatediff", "--model", str(built.sd), "--prompt", "a", "--device", "cpu", *argv])
    assert code == 2
    assert message in capsys.readouterr().err
