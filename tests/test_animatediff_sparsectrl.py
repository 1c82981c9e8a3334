"""SparseCtrl: SparseControlNet against diffusers' SparseControlNetModel (scribble and RGB variants, loaded from
a saved folder), AnimateDiffSparseControlNetPipeline against diffusers' pipeline seed for seed, context
windows, the original checkpoint layout, real configs on the meta device, and errors."""

from pathlib import Path

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
    from diffusers import SparseControlNetModel

    from vidcore.pipelines.animatediff import animatediff_scheduler

    root = tmp_path_factory.mktemp("sparsectrl")
    built = ta.build_tiny_animatediff(root)
    nets = {}
    for k, kind in enumerate(("scribble", "rgb")):
        net = tiny.randomize_(SparseControlNetModel(**tc.tiny_sparse_config(kind)), 20 + k).eval()
        net.save_pretrained(root / kind)
        nets[kind] = net
    scheduler = animatediff_scheduler(built.sd / "scheduler" / "scheduler_config.json")
    return built, nets, root, scheduler


@pytest.mark.parametrize("kind", ["scribble", "rgb"])
def test_model_matches_diffusers(setup, kind):
    _, nets, root, _ = setup
    ours = vidcore.load_model(root / kind)
    assert isinstance(ours, vidcore.SparseControlNet)
    g = torch.Generator().manual_seed(0)
    b, f = 2, 5
    x = torch.randn(b, 4, f, 8, 12, generator=g)
    size = (8, 12) if kind == "rgb" else (16, 24)
    cond = torch.randn(1, 4 if kind == "rgb" else 3, f, *size, generator=g)
    mask = torch.zeros(1, 1, f, *size)
    mask[:, :, [0, 3]] = 1
    ctx = torch.randn(b * f, 7, 24, generator=g)
    with torch.no_grad():
        down, mid = nets[kind](x, torch.tensor(500), encoder_hidden_states=ctx, controlnet_cond=cond,
                               conditioning_mask=mask, conditioning_scale=0.7, return_dict=False)
        got_down, got_mid = ours(x, torch.tensor(500), ctx, cond, mask, conditioning_scale=0.7)
    assert len(down) == len(got_down)
    for a, c in [*zip(down, got_down), (mid, got_mid)]:
        assert (a - c).abs().max() <= 1e-5 * a.abs().max()


def pipelines(setup, kind):
    from diffusers import AnimateDiffSparseControlNetPipeline

    built, nets, root, scheduler = setup
    ref = AnimateDiffSparseControlNetPipeline(**built.pipe.components, controlnet=nets[kind])
    ref.set_progress_bar_config(disable=True)
    ours = vidcore.AnimateDiffSparseControlNetPipeline.from_pretrained(built.sd, motion_adapter=built.adapter,
                                                                      controlnet=root / kind, scheduler=scheduler)
    ours.set_progress_bar_config(disable=True)
    return ref, ours


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("output_type", "np")
    torch.manual_seed(seed)  # the RGB variant's VAE posterior sample (diffusers draws it from the global RNG)
    return np.asarray(pipe(generator=torch.Generator().manual_seed(seed), **kwargs).frames)


@pytest.mark.parametrize("kind,call", [
    ("scribble", dict(num_frames=5, height=16, width=24, controlnet_frame_indices=[0, 4],
                      controlnet_conditioning_scale=0.8)),
    ("rgb", dict(num_frames=3, height=24, width=16, controlnet_frame_indices=[1], guidance_scale=1.0,
                 guess_mode=True)),
])
def test_pipeline_matches_diffusers(setup, kind, call):
    ref, ours = pipelines(setup, kind)
    n = len(call["controlnet_frame_indices"])
    kwargs = dict(prompt="a cat walking", negative_prompt="blurry", num_inference_steps=3,
                  conditioning_frames=tc.random_control_frames(n, call["height"], call["width"], seed=3), **call)
    expected, got = run(ref, **kwargs), run(ours, **kwargs)
    assert expected.shape == got.shape
    assert np.abs(expected - got).max() < TOL


def test_long_video_through_windows(setup):
    _, ours = pipelines(setup, "scribble")
    got = run(ours, prompt="a cat", num_frames=30, height=16, width=16, num_inference_steps=2, context_length=12,
              context_stride=6, conditioning_frames=tc.random_control_frames(2, 16, 16), controlnet_frame_indices=[0, 29],
              output_type="latent")
    assert got.shape == (1, 4, 30, 8, 8) and np.isfinite(got).all()


@pytest.mark.parametrize("call,message", [
    (dict(conditioning_frames=None), "conditioning_frames is required"),
    (dict(conditioning_frames=tc.random_control_frames(4, 16, 16)), "4 conditioning frames for num_frames=3"),
    (dict(controlnet_frame_indices=[0, 1]), "2 entries for 1 conditioning frames"),
    (dict(controlnet_frame_indices=[3]), r"in \[0, 3\)"),
    (dict(context_length=30, num_frames=30, conditioning_frames=tc.random_control_frames(1, 16, 16)), "exceeds"),
])
def test_bad_inputs(setup, call, message):
    _, ours = pipelines(setup, "scribble")
    kwargs = dict(prompt="a", num_frames=3, height=16, width=16, num_inference_steps=1,
                  conditioning_frames=tc.random_control_frames(1, 16, 16))
    kwargs.update(call)
    with pytest.raises(ValueError, match=message):
        ours(**kwargs)


@pytest.mark.parametrize("kind,suffix", [("scribble", ".ckpt"), ("rgb", ".safetensors")])
def test_original_file_is_read_by_diffusers_and_back(setup, tmp_path, kind, suffix):
    """vidcore writes the original SparseCtrl layout; diffusers' SparseControlNetModel.from_single_file reads it
    to the same tensors, and vidcore reads it back bit for bit (the variant told from the keys)."""
    from diffusers import SparseControlNetModel

    _, nets, root, _ = setup
    ours = vidcore.load_model(root / kind)
    path = vidcore.save_original(ours, tmp_path / f"v3_sd15_sparsectrl_{kind}{suffix}")
    theirs = SparseControlNetModel.from_single_file(str(path), config=str(root / kind))
    expected = nets[kind].state_dict()
    got = theirs.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    back = vidcore.load_model(path, config_from=root / kind)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in ours.state_dict().items())
    from vidcore.conversion.maps.original_sparsectrl import detect
    from vidcore.single_file import read_single_file_raw

    assert detect(read_single_file_raw(path)) == kind


@pytest.mark.parametrize("config", ["scribble", "rgb"])
def test_real_configs_convert_on_meta(config):
    from diffusers import SparseControlNetModel

    from vidcore.conversion.maps.original_sparsectrl import RGB_CONFIG, SCRIBBLE_CONFIG
    from vidcore.loading import BY_NAME
    from vidcore.models.sparse_controlnet import SparseControlNet, SparseControlNetConfig

    diffusers_config = {k: v for k, v in (RGB_CONFIG if config == "rgb" else SCRIBBLE_CONFIG).items()
                        if not k.startswith("_")}
    with torch.device("meta"):
        ref = SparseControlNetModel(**diffusers_config)
        ours = SparseControlNet(SparseControlNetConfig.from_diffusers_config(diffusers_config))
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    converted, _ = BY_NAME["sparse_controlnet"].keymap(diffusers_config).convert(ref.state_dict(), shapes)
    assert set(converted) == set(shapes)
    assert all(tuple(converted[k].shape) == shapes[k] for k in shapes)
    n = sum(v.numel() for v in ref.state_dict().values())
    tables = sum(v.numel() for k, v in ref.state_dict().items() if k.endswith("pos_embed.pe"))
    # the hub files' sizes, which hold no frame-position tables (test_files_without_position_tables_load)
    assert round((n - tables) / 1e6, 1) == {"rgb": 496.7, "scribble": 497.8}[config], (n, tables)


def test_files_without_position_tables_load(setup, tmp_path):
    """diffusers' single-file conversion drops the frame-position tables: a folder saved without them loads
    with the computed tables (equal to the stored ones), and so does an original file without them."""
    import shutil

    from safetensors.torch import load_file, save_file

    _, _, root, _ = setup
    folder = Path(shutil.copytree(root / "scribble", tmp_path / "no-pe"))
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    save_file({k: v for k, v in state.items() if not k.endswith("pos_embed.pe")}, weights)
    full, stripped = vidcore.load_model(root / "scribble"), vidcore.load_model(folder)
    assert all(torch.equal(v, stripped.state_dict()[k]) for k, v in full.state_dict().items())
    path = vidcore.save_original(full, tmp_path / "mm.safetensors")
    original = load_file(path)
    save_file({k: v for k, v in original.items() if "pos_encoder" not in k}, path)
    back = vidcore.load_model(path, config_from=root / "scribble")
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in full.state_dict().items())


def test_controlnet_pipeline_refuses_a_sparse_controlnet(setup):
    from vidcore.pipelines.animatediff_controlnet import as_controlnet

    with pytest.raises(TypeError, match="AnimateDiffSparseControlNetPipeline"):
        as_controlnet(vidcore.load_model(setup[2] / "rgb"))


def test_cli_sparse_control_equals_a_direct_call(setup, tmp_path, capsys, monkeypatch):
    import vidcore.cli.generate
    from vidcore.cli import main

    built, _, root, _ = setup
    images = tc.random_control_frames(2, 16, 24, seed=7)
    paths = []
    for k, image in enumerate(images):
        image.save(tmp_path / f"key{k}.png")
        paths.append(str(tmp_path / f"key{k}.png"))
    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video", lambda frames, path, fps: written.append(frames)
                        or str(path))
    argv = ["generate", "animatediff", "--model", str(built.sd), "--motion-adapter", str(built.adapter),
            "--prompt", "a cat", "--control", "sparse-scribble", "--control-image", paths[0], "--control-image",
            paths[1], "--control-frame-indices", "0,3", "--controlnet", str(root / "scribble"), "--frames", "4",
            "--height", "16", "--width", "24", "--steps", "2", "--seed", "2", "--device", "cpu", "--no-progress",
            "-o", str(tmp_path / "o.mp4")]
    assert main(argv) == 0, capsys.readouterr().err
    pipe = vidcore.AnimateDiffSparseControlNetPipeline.from_pretrained(built.sd, motion_adapter=built.adapter,
                                                                      controlnet=root / "scribble")
    pipe.set_progress_bar_config(disable=True)
    expected = run(pipe, seed=2, prompt="a cat", num_frames=4, height=16, width=24, num_inference_steps=2,
                   conditioning_frames=[vidcore.load_image(p) for p in paths], controlnet_frame_indices=[0, 3])
    assert np.abs(np.asarray(written[0]) - expected[0]).max() < 1e-5
    # the scribble model with --control sparse-rgb: one line naming the right choice
    assert main([*argv[:9], "sparse-rgb", *argv[10:]]) == 2
    assert "use --control sparse-scribble" in capsys.readouterr().err
    assert main([a if a != "0,3" else "0" for a in argv]) == 2
    assert "gives 1 frames for 2" in capsys.readouterr().err
    # a keyframe past the last frame, and more keyframes than frames: one line each, before any sampling
    assert main([a if a != "0,3" else "0,4" for a in argv]) == 2
    assert r"in [0, 4)" in capsys.readouterr().err
    frames = argv.index("--frames") + 1
    assert main([*argv[:frames], "1", *argv[frames + 1:]]) == 2
    assert "2 conditioning frames for num_frames=1" in capsys.readouterr().err
