"""IP-Adapter image prompts on the Text2Video-Zero pipelines, which diffusers' pipelines lack: the reference is
diffusers' own parts, its TextToVideoZeroPipeline (and the ControlNet recipe on StableDiffusionControlNetPipeline)
with the IP-Adapter loaded into the shared UNet, cross-frame attention on the self-attentions only and the image
embeddings handed to the UNet, as diffusers' SD pipelines hand them. Same seed -> same frames."""

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_controlnet as tc
import tiny_zero
import vidcore
import vidcore.schedulers
from tiny_ip_adapter import write_ip_adapter_repo
from vidcore.pipelines.controlled_video import ControlledVideoPipeline

TOL = 1e-4
SMALL = dict(video_length=3, height=16, width=24, num_inference_steps=4, t0=1, t1=2)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def image():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def zero(tmp_path_factory):
    root = tmp_path_factory.mktemp("ip_zero")
    sd = tiny_zero.build_tiny_sd(root / "sd")
    return sd, tiny_zero.zero_pipeline(sd), root / "sd", write_ip_adapter_repo(root / "ip", sd.unet)


def reference_zero(sd, ref, image, weight_name, **kwargs):
    """diffusers' TextToVideoZeroPipeline with the adapter in its UNet: CrossFrameAttnProcessor2_0 on the
    self-attentions, the IP-Adapter processors on the cross-attentions, the [negative, positive] image embeddings
    of diffusers' SD pipeline repeated over each half of every UNet batch."""
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
        CrossFrameAttnProcessor2_0)

    unet = ref.unet
    embeds = sd.prepare_ip_adapter_image_embeds(image, None, "cpu", 1, True)  # (2, 1, 32): negative first
    set_processor = unet.set_attn_processor

    def self_attention_only(processor):
        """diffusers' pipeline sets cross-frame attention on every attention; keep the adapter's on attn2."""
        if isinstance(processor, CrossFrameAttnProcessor2_0):
            processor = {name: processor if name.endswith("attn1.processor") else proc
                         for name, proc in unet.attn_processors.items()}
        set_processor(processor)

    unet.set_attn_processor = self_attention_only
    forward = unet.forward

    def with_image(sample, timestep, encoder_hidden_states, **kw):
        rows = sample.shape[0] // 2  # guidance halves [negative rows, positive rows]
        kw["added_cond_kwargs"] = {"image_embeds": [e.repeat_interleave(rows, dim=0) for e in embeds]}
        return forward(sample, timestep, encoder_hidden_states, **kw)

    unet.forward = with_image
    try:
        return np.asarray(ref(generator=torch.Generator().manual_seed(0), **kwargs).images)
    finally:
        del unet.forward, unet.set_attn_processor


def test_text2video_zero_with_image_prompt_matches_diffusers_parts(zero, image):
    sd, ref, folder, repo = zero
    ours = vidcore.TextToVideoZeroPipeline.from_pretrained(
        folder, scheduler=vidcore.schedulers.DDIMScheduler.from_config(folder))
    ours.set_progress_bar_config(disable=True)
    kw = dict(prompt="a bear playing guitar", negative_prompt="blurry", **SMALL)
    plain = ours(generator=torch.Generator().manual_seed(0), **kw).frames
    for weight_name in ("ip-adapter_sd15.safetensors", "ip-adapter-plus_sd15.bin"):
        sd.load_ip_adapter(repo, subfolder="models", weight_name=weight_name)
        ours.load_ip_adapter(repo, subfolder="models", weight_name=weight_name)
        try:
            expected = reference_zero(sd, ref, image, weight_name, **kw)
            got = ours(generator=torch.Generator().manual_seed(0), ip_adapter_image=image, **kw).frames
            assert np.abs(got[0] - expected).max() < TOL
            assert np.abs(got - plain).max() > 1e-2  # the image prompt changes the video
        finally:
            sd.unload_ip_adapter()
    # precomputed embeddings, scale 0 = no adapter, unloading, and a frame-schedule prompt with an image prompt
    embeds = ours.prepare_ip_adapter_image_embeds(image, None, ours.device, 1, True)
    again = ours(generator=torch.Generator().manual_seed(0), ip_adapter_image_embeds=embeds, **kw).frames
    assert np.abs(again - got).max() < 1e-6
    ours.set_ip_adapter_scale(0.0)
    assert np.abs(ours(generator=torch.Generator().manual_seed(0), ip_adapter_image=image, **kw).frames
                  - plain).max() < 1e-6
    ours.set_ip_adapter_scale(1.0)
    travel = ours(prompt={0: "a bear", 2: "a cat"}, ip_adapter_image=image, num_videos_per_prompt=2,
                  generator=torch.Generator().manual_seed(0), **{k: v for k, v in SMALL.items()}).frames
    assert travel.shape == (2, 3, 16, 24, 3)
    ours.unload_ip_adapter()
    assert np.abs(ours(generator=torch.Generator().manual_seed(0), **kw).frames - plain).max() == 0
    with pytest.raises(ValueError, match="need an IP-Adapter: call load_ip_adapter"):
        ours(ip_adapter_image=image, **kw)


def test_controlled_video_with_image_prompt_matches_diffusers_parts(tmp_path, image):
    setup = tc.build_tiny_controlled(tmp_path / "controlled")
    repo = write_ip_adapter_repo(tmp_path / "ip", setup.pipe.unet)
    ours = ControlledVideoPipeline.from_pretrained(setup.sd, controlnet=setup.controlnet)
    ours.set_progress_bar_config(disable=True)
    for p in (setup.pipe, ours):
        p.load_ip_adapter(repo, subfolder="models", weight_name="ip-adapter-plus_sd15.bin")
        p.set_ip_adapter_scale(0.7)
    frames = tc.random_control_frames(3, 16, 24)
    expected = tc.reference_frames(setup.pipe, frames, "a dancer", negative_prompt="blurry", num_inference_steps=3,
                                   ip_adapter_image=image)
    got = ours("a dancer", frames, negative_prompt="blurry", num_inference_steps=3, ip_adapter_image=image,
               output_type="np", generator=torch.Generator().manual_seed(0)).frames
    assert np.abs(got[0] - np.asarray(expected)).max() < TOL
    setup.pipe.unload_ip_adapter()


def _cli(capsys, monkeypatch, argv):
    import vidcore.cli
    from vidcore.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("VIDCORE_DEBUG", raising=False)
    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video", lambda frames, path, fps: written.append(frames) or str(path))
    code = main([str(a) for a in argv])
    return code, written, capsys.readouterr().err


def test_cli_text2video_zero_ip_adapter(zero, image, capsys, monkeypatch, tmp_path):
    _, _, folder, repo = zero
    image.save(tmp_path / "prompt.png")
    plain = repo / "models" / "ip-adapter_sd15.safetensors"
    common = ["generate", "text2video-zero", "--model", folder, "--prompt", "a bear", "--frames", "3", "--height", "16",
              "--width", "24", "--steps", "4", "--t0", "1", "--t1", "2", "--seed", "2", "--device", "cpu",
              "--no-progress", "-o", tmp_path / "v.mp4"]
    code, written, err = _cli(capsys, monkeypatch, common + ["--ip-adapter", plain, "--ip-image",
                                                             tmp_path / "prompt.png", "--ip-scale", "0.6"])
    assert code == 0, err
    pipe = vidcore.TextToVideoZeroPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(plain)
    pipe.set_ip_adapter_scale(0.6)
    expected = pipe("a bear", video_length=3, height=16, width=24, num_inference_steps=4, t0=1, t1=2,
                    ip_adapter_image=vidcore.load_image(tmp_path / "prompt.png"),
                    generator=torch.Generator().manual_seed(2)).frames
    assert np.array_equal(written[0], expected[0])
    code, _, err = _cli(capsys, monkeypatch, common + ["--ip-image", tmp_path / "prompt.png"])
    assert code == 2 and err.strip().splitlines() == [
        "error: --ip-adapter and --ip-image go together: the adapter file and the image prompt"], err


def test_cli_controlled_ip_adapter(image, capsys, monkeypatch, tmp_path):
    setup = tc.build_tiny_controlled(tmp_path / "controlled")
    repo = write_ip_adapter_repo(tmp_path / "ip", setup.pipe.unet)
    image.save(tmp_path / "prompt.png")
    frames = tc.random_control_frames(3, 16, 24)
    video = vidcore.export_to_gif(frames, str(tmp_path / "pose.gif"), fps=5)
    plus = repo / "models" / "ip-adapter-plus_sd15.bin"
    code, written, err = _cli(capsys, monkeypatch, [
        "generate", "controlled", "--control", "pose", "--video", video, "--model", setup.sd, "--controlnet",
        setup.controlnet, "--prompt", "a dancer", "--steps", "2", "--seed", "1", "--ip-adapter", plus,
        "--ip-image", tmp_path / "prompt.png", "--device", "cpu", "--no-progress", "-o", tmp_path / "v.mp4"])
    assert code == 0, err
    pipe = ControlledVideoPipeline.from_pretrained(setup.sd, controlnet=setup.controlnet)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(plus)
    expected = pipe("a dancer", vidcore.load_video(video), num_inference_steps=2, output_type="np",
                    ip_adapter_image=vidcore.load_image(tmp_path / "prompt.png"),
                    generator=torch.Generator().manual_seed(1)).frames
    assert np.array_equal(written[0], expected[0])
