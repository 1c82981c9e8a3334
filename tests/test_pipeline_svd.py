"""StableVideoDiffusionPipeline against diffusers' StableVideoDiffusionPipeline: same folder, same seed ->
same frames (PIL and tensor images, latent output, custom sigmas, chunked decode, several images and
videos per image, fp16 variant), the antialiased CLIP resize, step callback, offload order, and input
errors."""

import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

import tiny
import vidcore
from vidcore.pipelines.stable_video_diffusion import resize_with_antialiasing

SMALL = dict(height=16, width=24, num_frames=3, num_inference_steps=2)


def close(a, b, tol=5e-5):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    err = np.abs(a - b).max() / max(np.abs(a).max(), 1e-8)
    assert err < tol, f"relative error {err}"


@pytest.fixture(scope="module")
def tiny_svd(tmp_path_factory):
    folder = tmp_path_factory.mktemp("svd") / "tiny-svd"
    return tiny.TinyPipeline(tiny.build_tiny_svd_pipeline(folder, variant_fp16=True), folder)


@pytest.fixture(scope="module")
def ours(tiny_svd):
    pipe = vidcore.StableVideoDiffusionPipeline.from_pretrained(tiny_svd.folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_image(seed=0, size=(40, 52)):
    # not the output's size or aspect ratio, so both resizes (224 x 224 for CLIP, h x w for the VAE) work
    return PIL.Image.fromarray(np.random.RandomState(seed).randint(0, 256, (*size, 3), dtype=np.uint8))


def run_both(ref, ours, seed=0, **kwargs):
    expected = ref(generator=torch.Generator().manual_seed(seed), **kwargs).frames
    got = ours(generator=torch.Generator().manual_seed(seed), **kwargs).frames
    return expected, got


def test_pil_image_matches_diffusers(tiny_svd, ours):
    expected, got = run_both(tiny_svd.pipe, ours, image=make_image(), output_type="np", min_guidance_scale=1.5,
                             max_guidance_scale=4.0, fps=9, motion_bucket_id=60, noise_aug_strength=0.1, **SMALL)
    assert got.shape == (1, 3, 16, 24, 3)
    close(expected, got)


def test_tensor_image_custom_sigmas_latent_output(tiny_svd, ours):
    # diffusers hands a tensor to CLIP unresized, so it must already be 224 x 224
    image = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    kwargs = dict(SMALL, num_inference_steps=None)
    expected, got = run_both(tiny_svd.pipe, ours, image=image, output_type="latent", sigmas=[80.0, 0.4, 0.0],
                             **kwargs)
    assert got.shape == (1, 3, 4, 8, 12)  # b f c h w (SVD's layout)
    close(expected, got)


def test_several_images_and_videos_chunked_decode(tiny_svd, ours):
    # two images x two videos each, one generator per video; a decode chunk of 2 frames spans videos
    images = [make_image(2), make_image(3, (30, 30))]
    images[1] = images[1].resize((52, 40))  # diffusers stacks the CLIP inputs, so the sizes must agree
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(4)]  # noqa: E731
    kwargs = dict(image=images, num_videos_per_prompt=2, decode_chunk_size=2, output_type="np", **SMALL)
    expected = tiny_svd.pipe(generator=gens(), **kwargs).frames
    got = ours(generator=gens(), **kwargs).frames
    assert got.shape == (4, 3, 16, 24, 3)
    close(expected, got)


@torch.no_grad()
def test_fix_batch_quirks_orders_and_decodes_per_video(ours):
    pixels = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    diffusers_order = ours.encode_image_latents(pixels, "cpu", 2, False)
    grouped = ours.encode_image_latents(pixels, "cpu", 2, False, grouped=True)
    torch.testing.assert_close(diffusers_order[[0, 2, 1, 3]], grouped)
    latents = torch.randn(2, 3, 4, 8, 12, generator=torch.Generator().manual_seed(1))
    per_video = ours.decode_latents(latents, 2, per_video=True)
    alone = torch.cat([ours.decode_latents(latents[i:i + 1], 2) for i in range(2)])
    torch.testing.assert_close(per_video, alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours.decode_latents(latents, 2), alone, atol=1e-3)  # diffusers' chunks span videos


def test_fp16_variant_matches_diffusers_fp16(tiny_svd):
    from diffusers import StableVideoDiffusionPipeline

    ref = StableVideoDiffusionPipeline.from_pretrained(tiny_svd.folder, variant="fp16", torch_dtype=torch.float16)
    ref.set_progress_bar_config(disable=True)
    pipe = vidcore.StableVideoDiffusionPipeline.from_pretrained(tiny_svd.folder, variant="fp16",
                                                                torch_dtype=torch.float16)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.image_encoder.dtype == torch.float16
    expected, got = run_both(ref, pipe, image=make_image(), output_type="np", height=8, width=16, num_frames=2,
                             num_inference_steps=1)
    assert pipe.vae.dtype == torch.float16  # upcast for the encode only, then back
    assert np.isfinite(got).all()
    close(expected, got, tol=2e-2)


def test_callback_offload_order_and_pil_output(tiny_svd, ours, monkeypatch):
    calls, order = [], []
    run_on_device = type(ours)._run_on_device

    def record(self, name):
        order.append(name)
        return run_on_device(self, name)

    monkeypatch.setattr(type(ours), "_run_on_device", record)
    ours.enable_model_cpu_offload("cpu")
    try:
        def callback(pipe, i, t, tensors):
            calls.append((i, float(t), tuple(tensors)))
            return {"latents": torch.zeros_like(tensors["latents"])} if i == 1 else {}

        latents = ours(make_image(), generator=torch.Generator().manual_seed(0), output_type="latent",
                       callback_on_step_end=callback, **SMALL).frames
        timesteps = ours.scheduler.timesteps.tolist()
        frames = ours(make_image(), generator=torch.Generator().manual_seed(0),
                      **dict(SMALL, num_inference_steps=1)).frames
    finally:
        ours._offload_device = None
    assert [c[0] for c in calls] == [0, 1] and all(c[2] == ("latents",) for c in calls)
    assert [c[1] for c in calls] == pytest.approx(timesteps)
    assert torch.count_nonzero(latents) == 0
    # latent output: no decode; then image_encoder -> vae (encode) -> unet -> vae (decode)
    assert order == ["image_encoder", "vae", "unet"] + ["image_encoder", "vae", "unet", "vae"]
    assert len(frames) == 1 and len(frames[0]) == 3 and frames[0][0].size == (24, 16)


def test_antialiased_resize_matches_diffusers():
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing

    g = torch.Generator().manual_seed(0)
    for shape, size in [((1, 3, 576, 1024), (224, 224)), ((1, 3, 40, 52), (224, 224)), ((1, 3, 300, 97), (64, 32))]:
        x = torch.rand(shape, generator=g) * 2 - 1
        torch.testing.assert_close(resize_with_antialiasing(x, size), _resize_with_antialiasing(x, size),
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    (dict(height=20), "height and width must be positive multiples of 8"),
    (dict(width=30), "height and width must be positive multiples of 8"),
    (dict(image=3), "image must be a PIL image"),
    (dict(image=[np.zeros((8, 8, 3))]), "a list image must hold PIL images or file paths"),
    (dict(image=torch.rand(1, 4, 8, 8)), r"image tensor must have shape \(3, h, w\) or \(b, 3, h, w\)"),
    (dict(image=torch.rand(1, 3, 8, 8) * 2 - 1), r"image values must be in \[0, 1\]"),
    (dict(image=None), "image is required"),
    (dict(decode_chunk_size=0), "decode_chunk_size must be a positive integer"),
    (dict(num_frames=0), "num_frames must be a positive integer"),
    (dict(output_type="gif"), "output_type must be one of"),
    (dict(callback_on_step_end_tensor_inputs=["image_latents"]), "callback_on_step_end_tensor_inputs must be among"),
    (dict(generator=[torch.Generator()] * 3), "got 3 generators for 1 videos"),
    (dict(latents=torch.zeros(1, 3, 4, 4, 4)), r"latents must have shape \(1, 3, 4, 8, 12\)"),
])
def test_bad_inputs(ours, kwargs, message):
    args = dict(image=make_image(), **SMALL)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ours(**args)


def test_lazy_export_without_diffusers():
    code = ("import sys, vidcore, vidcore.pipelines.stable_video_diffusion; vidcore.StableVideoDiffusionPipeline; "
            "assert 'diffusers' not in sys.modules, 'diffusers was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
