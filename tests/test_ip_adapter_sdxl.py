"""IP-Adapter image prompts on AnimateDiffSDXLPipeline against diffusers' (same tiny random SDXL model, motion
adapter and IP-Adapter files in the original layout, same seed): plain and plus adapters, precomputed embeddings,
per-block scales, two prompts; the CLI's --ip-adapter with an SDXL model and its one-line errors."""

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_animatediff as ta
import tiny_sdxl
import vidcore
import vidcore.cli
from tiny_ip_adapter import write_ip_adapter_repo
from vidcore.cli import main

TOL = 1e-4
SMALL = dict(num_frames=5, height=16, width=24, num_inference_steps=2, prompt="a cat", output_type="np")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ip_adapter_sdxl")
    xl = tiny_sdxl.build_tiny_animatediff_sdxl(root / "xl")
    repo = write_ip_adapter_repo(root / "ip", xl.pipe.unet, prefix="sdxl")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    return xl, repo, image


def ours(xl):
    pipe = vidcore.AnimateDiffSDXLPipeline.from_pretrained(xl.sdxl, motion_adapter=xl.adapter)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, seed=0, **kwargs):
    return np.asarray(pipe(generator=torch.Generator().manual_seed(seed), **{**SMALL, **kwargs}).frames)


def test_plain_adapter_matches_diffusers(setup):
    xl, repo, image = setup
    ref, pipe = xl.pipe, ours(xl)
    plain = run(pipe, negative_prompt="blurry")
    for p in (ref, pipe):
        p.load_ip_adapter(repo, subfolder="models", weight_name="ip-adapter_sdxl.safetensors")
    try:
        got = run(pipe, ip_adapter_image=image, negative_prompt="blurry")
        expected = run(ref, ip_adapter_image=image, negative_prompt="blurry")
        assert got.shape == (1, 5, 16, 24, 3)  # odd frame count, non-square
        assert np.abs(got - expected).max() < TOL
        assert np.abs(got - plain).max() > 1e-2  # the image prompt changes the video
        # precomputed [negative, positive] embeddings give the same frames
        embeds = pipe.prepare_ip_adapter_image_embeds(image, None, pipe.device, 1, True)
        assert np.abs(run(pipe, ip_adapter_image_embeds=embeds, negative_prompt="blurry") - got).max() < 1e-6
        pipe.set_ip_adapter_scale(0.0)
        assert np.abs(run(pipe, ip_adapter_image=image, negative_prompt="blurry") - plain).max() < 1e-6
    finally:
        ref.unload_ip_adapter()
    pipe.unload_ip_adapter()
    assert pipe.image_encoder is None and np.abs(run(pipe, negative_prompt="blurry") - plain).max() == 0


def test_plus_adapter_scales_and_two_prompts_match_diffusers(setup):
    xl, repo, image = setup
    ref, pipe = xl.pipe, ours(xl)
    for p in (ref, pipe):
        p.load_ip_adapter(repo, subfolder="models", weight_name="ip-adapter-plus_sdxl.bin")
    assert pipe.ip_adapters[0].config.kind == "plus"
    try:
        for scale in (0.6, {"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": 0.5}, "mid": 2.0}):
            for p in (ref, pipe):
                p.set_ip_adapter_scale(scale)
            kw = dict(num_frames=3, height=24, width=16, prompt=["a cat", "a dog"], negative_prompt=["blur", "dark"],
                      ip_adapter_image=image, seed=3)
            assert np.abs(run(pipe, **kw) - run(ref, **kw)).max() < TOL
    finally:
        ref.unload_ip_adapter()
    # sliding context windows: every window sees the video's image tokens
    frames = run(pipe, num_frames=7, context_length=4, context_stride=2, height=8, width=8, ip_adapter_image=image)
    assert frames.shape == (1, 7, 8, 8, 3)


def test_sd15_adapter_does_not_fit_an_sdxl_unet(setup, tmp_path):
    xl, _, _ = setup
    sd15 = ta.build_tiny_animatediff(tmp_path / "sd15")
    repo = write_ip_adapter_repo(tmp_path / "ip15", sd15.pipe.unet)
    pipe = ours(xl)
    with pytest.raises(ValueError, match="ip-adapter_sd15.safetensors does not fit this UNet: its image tokens are "
                                         "24 wide but the UNet.s cross_attention_dim is 40"):
        pipe.load_ip_adapter(repo, subfolder="models", weight_name="ip-adapter_sd15.safetensors")
    assert not pipe.ip_adapters and pipe.image_encoder is None


def test_cli_ip_adapter_with_an_sdxl_model(setup, capsys, tmp_path, monkeypatch):
    xl, repo, image = setup
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image_path = tmp_path / "prompt.png"
    image.save(image_path)
    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video", lambda frames, path, fps: written.append(frames) or str(path))
    common = ["generate", "animatediff", "--model", xl.sdxl, "--motion-adapter", xl.adapter, "--prompt", "a cat",
              "--frames", "3", "--height", "16", "--width", "8", "--steps", "2", "--seed", "4", "--device", "cpu",
              "--no-progress", "-o", tmp_path / "v.mp4", "--ip-image", image_path]
    plus = repo / "models" / "ip-adapter-plus_sdxl.bin"
    code = main([str(a) for a in common + ["--ip-adapter", plus, "--ip-scale", "0.5"]])
    assert code == 0, capsys.readouterr().err
    pipe = ours(xl)
    pipe.load_ip_adapter(plus)  # a file: the image encoder is the image_encoder folder beside it
    pipe.set_ip_adapter_scale(0.5)
    expected = pipe("a cat", num_frames=3, height=16, width=8, num_inference_steps=2, guidance_scale=5.0,
                    output_type="np", ip_adapter_image=vidcore.load_image(image_path),
                    generator=torch.Generator().manual_seed(4)).frames
    assert np.array_equal(written[0], expected[0])
    # an adapter file without an image_encoder folder beside it (SDXL vit-h adapters): --ip-image-encoder
    alone = tmp_path / "alone" / plus.name
    alone.parent.mkdir()
    alone.write_bytes(plus.read_bytes())
    code = main([str(a) for a in common + ["--ip-adapter", alone, "--ip-scale", "0.5", "--ip-image-encoder",
                                           repo / "models" / "image_encoder"]])
    assert code == 0, capsys.readouterr().err
    assert np.array_equal(written[1], expected[0])

    capsys.readouterr()
    code = main([str(a) for a in common[:-2] + ["--ip-image-encoder", repo / "models" / "image_encoder"]])
    assert code == 2 and "--ip-image-encoder applies to an --ip-adapter" in capsys.readouterr().err
    code = main([str(a) for a in common + ["--ip-adapter", repo / "models" / "ip-adapter_wide.safetensors"]])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--ip-adapter: " in err and "its image tokens are 48 wide but the UNet's cross_attention_dim is 40" in err
