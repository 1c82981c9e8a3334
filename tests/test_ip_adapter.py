"""IP-Adapter image prompts: vidcore's AnimateDiffPipeline against diffusers' (both load the same tiny random
IP-Adapter files in the original h94/IP-Adapter layout), embeddings given directly, scales, unloading, errors."""

import numpy as np
import pytest
import torch
from PIL import Image

import tiny
import tiny_animatediff as ta
from tiny_ip_adapter import cross_attention_widths, nested, original_ip_adapter, write_ip_adapter_repo
import vidcore
from vidcore.models.ip_adapter import IPAdapter

TOL = 1e-4
SMALL = dict(num_frames=5, height=16, width=24, num_inference_steps=2, prompt="a cat", output_type="np")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ip_adapter")
    base = ta.build_tiny_animatediff(root)
    repo = write_ip_adapter_repo(root / "ip", base.pipe.unet)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    return base, repo, image


def ours(setup):
    base = setup[0]
    from vidcore.pipelines.animatediff import animatediff_scheduler

    pipe = vidcore.AnimateDiffPipeline.from_pretrained(
        base.sd, motion_adapter=base.adapter,
        scheduler=animatediff_scheduler(base.sd / "scheduler" / "scheduler_config.json"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, seed=0, **kwargs):
    return np.asarray(pipe(generator=torch.Generator().manual_seed(seed), **{**SMALL, **kwargs}).frames)


def test_plain_safetensors_matches_diffusers(setup):
    base, repo, image = setup
    ref, pipe = base.pipe, ours(setup)
    plain = run(pipe)
    for p in (ref, pipe):
        p.load_ip_adapter(repo, subfolder="models", weight_name="ip-adapter_sd15.safetensors")
    got = run(pipe, ip_adapter_image=image)
    expected = run(ref, ip_adapter_image=image)
    assert np.abs(got - expected).max() < TOL
    assert np.abs(got - plain).max() > 1e-2  # the image prompt changes the video
    assert type(pipe.image_encoder).__name__ == "CLIPVisionModelWithProjection"

    # embeddings given directly ([negative, positive] halves, as diffusers takes them) give the same frames
    embeds = pipe.prepare_ip_adapter_image_embeds(image, None, pipe.device, 1, True)
    assert [tuple(e.shape) for e in embeds] == [(2, 1, 32)]
    assert np.abs(run(pipe, ip_adapter_image_embeds=embeds) - got).max() < 1e-6

    # scale 0 equals no adapter; unloading restores the plain model
    pipe.set_ip_adapter_scale(0.0)
    assert np.abs(run(pipe, ip_adapter_image=image) - plain).max() < 1e-6
    pipe.unload_ip_adapter()
    assert pipe.image_encoder is None and not pipe.ip_adapters
    assert np.abs(run(pipe) - plain).max() == 0
    ref.unload_ip_adapter()


def test_plus_bin_with_scales_matches_diffusers(setup):
    base, repo, image = setup
    ref, pipe = base.pipe, ours(setup)
    for p in (ref, pipe):
        p.load_ip_adapter(repo, subfolder="models", weight_name="ip-adapter-plus_sd15.bin")
    assert pipe.ip_adapters[0].config.kind == "plus"
    # odd frame count, non-square, two videos per prompt batch, a per-block scale dict (InstantStyle-like)
    for scale in (0.6, {"up": {"block_1": [0.0, 1.0, 0.5]}, "mid": 2.0}):
        for p in (ref, pipe):
            p.set_ip_adapter_scale(scale)
        kw = dict(num_frames=3, height=24, width=16, prompt=["a cat", "a dog"], negative_prompt=["blur", "dark"],
                  ip_adapter_image=image, seed=3)
        assert np.abs(run(pipe, **kw) - run(ref, **kw)).max() < TOL
    ref.unload_ip_adapter()
    # sliding context windows: every window's frames see the video's image tokens
    frames = run(pipe, num_frames=7, context_length=4, context_stride=2, height=8, width=8, ip_adapter_image=image)
    assert frames.shape == (1, 7, 8, 8, 3)


def test_state_dict_and_wrong_fit(setup):
    base, repo, image = setup
    pipe = ours(setup)
    with pytest.raises(ValueError, match="ip-adapter_wide.safetensors does not fit this UNet: its image tokens are 32 wide but the UNet.s "
                                         "cross_attention_dim is 24"):
        pipe.load_ip_adapter(repo, subfolder="models", weight_name="ip-adapter_wide.safetensors")
    assert not pipe.ip_adapters
    widths = cross_attention_widths(base.pipe.unet)
    with pytest.raises(ValueError, match="6 cross-attentions"):
        pipe.load_ip_adapter(original_ip_adapter("plain", widths[:4], 24, 32), image_encoder_folder=None)
    with pytest.raises(ValueError, match="cannot be loaded for an IP-Adapter given as a state dict"):
        pipe.load_ip_adapter(nested(original_ip_adapter("plain", widths, 24, 32)))
    pipe.load_ip_adapter(nested(original_ip_adapter("plain", widths, 24, 32)), image_encoder_folder=None)
    with pytest.raises(ValueError, match=r"up has no attention block\(s\) \['block_0'\]"):
        pipe.set_ip_adapter_scale({"up": {"block_0": 1.0}})  # SD1.5's first up block has no transformers
    with pytest.raises(ValueError, match="got 2 IP-Adapter scales for 1 loaded"):
        pipe.set_ip_adapter_scale([1.0, 0.5])
    with pytest.raises(ValueError, match="needs an image encoder"):
        run(pipe, ip_adapter_image=image, num_frames=2)
    with pytest.raises(ValueError, match="at most one of ip_adapter_image and ip_adapter_image_embeds"):
        run(pipe, ip_adapter_image=image, ip_adapter_image_embeds=[torch.zeros(2, 1, 32)])
    from vidcore.errors import ConversionError

    extra = {**original_ip_adapter("plain", widths, 24, 32), "image_proj.extra.weight": torch.zeros(2)}
    with pytest.raises(ConversionError, match="image_proj.extra.weight"):
        IPAdapter.from_state_dict(extra)
    # a plain adapter's file round-trips through the module's own state dict (same names as the file)
    adapter = IPAdapter.from_state_dict(original_ip_adapter("plain", widths, 24, 32, seed=1))
    assert sorted(adapter.state_dict()) == sorted(original_ip_adapter("plain", widths, 24, 32))


def test_cli_ip_adapter(setup, capsys, tmp_path, monkeypatch):
    import vidcore.cli
    from vidcore.cli import main

    base, repo, image = setup
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image_path = tmp_path / "prompt.png"
    image.save(image_path)
    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video", lambda frames, path, fps: written.append(frames) or str(path))
    common = ["generate", "animatediff", "--model", base.sd, "--motion-adapter", base.adapter, "--prompt", "a cat",
              "--frames", "3", "--height", "16", "--width", "8", "--steps", "2", "--seed", "4", "--device", "cpu",
              "--no-progress", "-o", tmp_path / "v.mp4"]
    plus = repo / "models" / "ip-adapter-plus_sd15.bin"
    code = main([str(a) for a in common + ["--ip-adapter", plus, "--ip-image", image_path, "--ip-scale", "0.5"]])
    assert code == 0, capsys.readouterr().err
    pipe = vidcore.AnimateDiffPipeline.from_pretrained(base.sd, motion_adapter=base.adapter)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(plus)  # a file: the image encoder is the image_encoder folder beside it
    pipe.set_ip_adapter_scale(0.5)
    expected = pipe("a cat", num_frames=3, height=16, width=8, num_inference_steps=2, output_type="np",
                    ip_adapter_image=vidcore.load_image(image_path), generator=torch.Generator().manual_seed(4)).frames
    assert np.array_equal(written[0], expected[0])

    capsys.readouterr()
    wide = repo / "models" / "ip-adapter_wide.safetensors"
    for extra, message in ((["--ip-adapter", wide, "--ip-image", image_path], "does not fit this UNet: its image "
                            "tokens are 32 wide but the UNet's cross_attention_dim is 24"),
                           (["--ip-adapter", plus], "--ip-adapter and --ip-image go together"),
                           (["--ip-adapter", plus, "--ip-image", tmp_path / "nope.png"], "--ip-image: no such file")):
        code = main([str(a) for a in common + extra])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err, err


def test_hub_layout_fetches_only_what_is_used(setup, monkeypatch):
    """``h94/IP-Adapter`` with subfolder="models": only the weight file and the image encoder's config and
    safetensors are asked for; the CLI's OWNER/REPO/SUBFOLDER/FILE spelling splits into the same arguments."""
    from fnmatch import fnmatch

    import huggingface_hub

    from vidcore.pipelines.ip_adapter import split_location

    base, repo, image = setup
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, list(allow_patterns)))
        return str(repo)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    source, subfolder, weight_name = split_location("h94/IP-Adapter/models/ip-adapter_sd15.safetensors")
    assert (source, subfolder, weight_name) == ("h94/IP-Adapter", "models", "ip-adapter_sd15.safetensors")
    pipe = ours(setup)
    pipe.load_ip_adapter(source, subfolder=subfolder, weight_name=weight_name)
    assert pipe.image_encoder is not None and pipe.ip_adapters[0].config.kind == "plain"
    listing = ["models/ip-adapter_sd15.safetensors", "models/ip-adapter_sd15.bin", "models/ip-adapter-plus_sd15.bin",
               "models/image_encoder/config.json", "models/image_encoder/model.safetensors",
               "models/image_encoder/pytorch_model.bin", "sdxl_models/ip-adapter_sdxl.safetensors",
               "sdxl_models/image_encoder/model.safetensors"]
    assert [c[0] for c in calls] == ["h94/IP-Adapter"]
    assert sorted(f for f in listing if any(fnmatch(f, p) for p in calls[0][1])) == [
        "models/image_encoder/config.json", "models/image_encoder/model.safetensors",
        "models/ip-adapter_sd15.safetensors"]


def test_two_adapters_match_diffusers(setup):
    base, repo, image = setup
    ref, pipe = base.pipe, ours(setup)
    names = ["ip-adapter_sd15.safetensors", "ip-adapter-plus_sd15.bin"]
    for p in (ref, pipe):
        p.load_ip_adapter(repo, subfolder="models", weight_name=names)
        p.set_ip_adapter_scale([0.8, 0.4])
    assert [a.config.kind for a in pipe.ip_adapters] == ["plain", "plus"]
    other = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    kw = dict(num_frames=3, ip_adapter_image=[image, [image, other]], seed=1)  # the plus one gets two images
    assert np.abs(run(pipe, **kw) - run(ref, **kw)).max() < TOL
    ref.unload_ip_adapter()


def test_video_to_video_with_image_prompt_matches_diffusers(setup):
    """The video-to-video pipeline runs AnimateDiff's loop, so the image prompt reaches it unchanged."""
    from diffusers import AnimateDiffVideoToVideoPipeline

    from vidcore.pipelines.animatediff import animatediff_scheduler

    base, repo, image = setup
    ref = AnimateDiffVideoToVideoPipeline(**base.pipe.components)
    ref.set_progress_bar_config(disable=True)
    pipe = vidcore.AnimateDiffVideoToVideoPipeline.from_pretrained(
        base.sd, motion_adapter=base.adapter,
        scheduler=animatediff_scheduler(base.sd / "scheduler" / "scheduler_config.json"))
    pipe.set_progress_bar_config(disable=True)
    for p in (ref, pipe):
        p.load_ip_adapter(repo, subfolder="models", weight_name="ip-adapter_sd15.safetensors")
    rng = np.random.default_rng(1)
    video = [Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)) for _ in range(3)]
    kw = dict(video=video, prompt="a cat", height=16, width=24, strength=0.7, num_inference_steps=3,
              ip_adapter_image=image, output_type="np")
    expected = np.asarray(ref(generator=torch.Generator().manual_seed(2), **kw).frames)
    got = np.asarray(pipe(generator=torch.Generator().manual_seed(2), **kw).frames)
    assert np.abs(expected - got).max() < TOL
    ref.unload_ip_adapter()


def test_controlnet_pipeline_with_image_prompt_matches_diffusers(setup, tmp_path):
    """AnimateDiffControlNetPipeline: the ControlNet sees the text only, the UNet text and image (as diffusers)."""
    from diffusers import AnimateDiffControlNetPipeline, ControlNetModel

    import tiny_controlnet as tc
    from vidcore.pipelines.animatediff import animatediff_scheduler

    base, repo, image = setup
    net = tiny.randomize_(ControlNetModel(**tc.tiny_controlnet_config()), 10).eval()
    net.save_pretrained(tmp_path / "controlnet")
    ref = AnimateDiffControlNetPipeline(**base.pipe.components, controlnet=net)
    ref.set_progress_bar_config(disable=True)
    pipe = vidcore.AnimateDiffControlNetPipeline.from_pretrained(
        base.sd, motion_adapter=base.adapter, controlnet=tmp_path / "controlnet",
        scheduler=animatediff_scheduler(base.sd / "scheduler" / "scheduler_config.json"))
    pipe.set_progress_bar_config(disable=True)
    for p in (ref, pipe):
        p.load_ip_adapter(repo, subfolder="models", weight_name="ip-adapter-plus_sd15.bin")
    kw = dict(prompt="a cat", num_frames=3, height=16, width=16, num_inference_steps=2, output_type="np",
              conditioning_frames=tc.random_control_frames(3, 16, 16), ip_adapter_image=image)
    expected = np.asarray(ref(generator=torch.Generator().manual_seed(3), **kw).frames)
    got = np.asarray(pipe(generator=torch.Generator().manual_seed(3), **kw).frames)
    assert np.abs(expected - got).max() < TOL
    ref.unload_ip_adapter()


def test_sparsectrl_pipeline_with_image_prompt_matches_diffusers(setup):
    """AnimateDiffSparseControlNetPipeline: the SparseControlNet sees the text only, the UNet text and image (as
    diffusers); an image encoder passed to from_pretrained reaches the pipeline."""
    from diffusers import AnimateDiffSparseControlNetPipeline, SparseControlNetModel

    import tiny_controlnet as tc
    from vidcore.pipelines.animatediff import animatediff_scheduler
    from vidcore.pipelines.base import load_image_encoder

    base, repo, image = setup
    net = tiny.randomize_(SparseControlNetModel(**tc.tiny_sparse_config("scribble")), 11).eval()
    net.save_pretrained(repo / "sparse")
    ref = AnimateDiffSparseControlNetPipeline(**base.pipe.components, controlnet=net)
    ref.set_progress_bar_config(disable=True)
    encoder = load_image_encoder(repo / "models" / "image_encoder")
    pipe = vidcore.AnimateDiffSparseControlNetPipeline.from_pretrained(
        base.sd, motion_adapter=base.adapter, controlnet=repo / "sparse", image_encoder=encoder,
        scheduler=animatediff_scheduler(base.sd / "scheduler" / "scheduler_config.json"))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.image_encoder is encoder
    ref.load_ip_adapter(repo, subfolder="models", weight_name="ip-adapter_sd15.safetensors")
    pipe.load_ip_adapter(repo, subfolder="models", weight_name="ip-adapter_sd15.safetensors")
    assert pipe.image_encoder is encoder  # kept, as diffusers keeps a pipeline's own encoder
    kw = dict(prompt="a cat", num_frames=5, height=16, width=24, num_inference_steps=2, output_type="np",
              conditioning_frames=tc.random_control_frames(2, 16, 24, seed=3), controlnet_frame_indices=[0, 4],
              ip_adapter_image=image)
    expected = np.asarray(ref(generator=torch.Generator().manual_seed(3), **kw).frames)
    got = np.asarray(pipe(generator=torch.Generator().manual_seed(3), **kw).frames)
    assert np.abs(expected - got).max() < TOL
    ref.unload_ip_adapter()
