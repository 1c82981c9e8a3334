"""AnimateDiffPipeline.from_single_file: a civitai-style Stable Diffusion 1.x single file (CompVis LDM layout)
+ a motion adapter, with configs, tokenizer and scheduler from an SD1.5 folder or hub repo.

The tiny random SD1.5 pipeline of tiny_animatediff is written out as one LDM file through vidcore's reverse maps
(the same files diffusers' own converters read back exactly, see test_sd_single_file.py); loading that file
must give the same frames as from_pretrained on the folder, bit for bit, and diffusers' frames within the
pipeline tolerance. From the hub only configs, tokenizer and scheduler files are fetched.
"""

from __future__ import annotations

from fnmatch import fnmatch

import diffusers
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import tiny_animatediff as ta
import vidcore
from vidcore.errors import CheckpointError, ModelNotFoundError
from vidcore.loading import original_state_dict, save_original
from vidcore.pipelines.animatediff import SINGLE_FILE_CONFIG_PATTERNS, AnimateDiffPipeline, animatediff_scheduler

KW = dict(prompt="a cat walking", negative_prompt="blurry", num_frames=3, height=16, width=24, num_inference_steps=2,
          output_type="np")
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return ta.build_tiny_animatediff(tmp_path_factory.mktemp("ad-single-file"))


def ldm_state(setup) -> dict:
    """The tiny SD pipeline as one LDM single file's tensors (+ the schedule buffers real files carry)."""
    state = {"betas": torch.linspace(1e-4, 2e-2, 10), "alphas_cumprod": torch.linspace(1, 0.1, 10)}
    for module in (vidcore.load_model(setup.sd / "unet"), vidcore.load_model(setup.sd / "vae"),
                   setup.pipe.text_encoder):
        state.update(original_state_dict(module))
    return state


@pytest.fixture(scope="module")
def ldm_file(setup, tmp_path_factory):
    path = tmp_path_factory.mktemp("civitai") / "tinyRealistic_v1.safetensors"
    save_file(ldm_state(setup), str(path))
    return path


def frames(pipe, seed=0, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    return pipe(generator=torch.Generator().manual_seed(seed), **{**KW, **kwargs}).frames


def test_single_file_equals_the_folder_and_diffusers(setup, ldm_file):
    ours = AnimateDiffPipeline.from_single_file(ldm_file, motion_adapter=setup.adapter, config_from=setup.sd)
    folder = AnimateDiffPipeline.from_pretrained(setup.sd, motion_adapter=setup.adapter)
    assert isinstance(ours.unet.unet, vidcore.UNet2D) and isinstance(ours.vae, vidcore.AutoencoderKL)
    assert type(ours.scheduler).__name__ == "PNDMScheduler"  # the folder's stored SD1.5 scheduler, as diffusers
    assert ours.scheduler.to_diffusers_config() == folder.scheduler.to_diffusers_config()
    got = frames(ours)
    assert np.array_equal(got, frames(folder))  # the reverse map round trip is exact
    saved = setup.pipe.scheduler
    try:
        setup.pipe.scheduler = diffusers.PNDMScheduler.from_config(ta.SD15_SCHEDULER_CONFIG)
        expected = np.asarray(setup.pipe(generator=torch.Generator().manual_seed(0), **KW).frames)
    finally:
        setup.pipe.scheduler = saved
    assert np.abs(got - expected).max() < TOL


def test_ckpt_file_dtype_and_overrides(setup, ldm_file, tmp_path):
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": ldm_state(setup)}, ckpt)  # LDM .ckpt files wrap the tensors in "state_dict"
    adapter = vidcore.load_model(setup.adapter)
    euler = animatediff_scheduler(setup.sd / "scheduler" / "scheduler_config.json", "euler")
    text_encoder = setup.pipe.text_encoder
    pipe = AnimateDiffPipeline.from_single_file(ckpt, motion_adapter=adapter, config_from=setup.sd, scheduler=euler,
                                                text_encoder=text_encoder)
    assert pipe.scheduler is euler and pipe.text_encoder is text_encoder and pipe.motion_adapter is adapter
    reference = AnimateDiffPipeline.from_pretrained(setup.sd, motion_adapter=setup.adapter, scheduler=euler)
    assert np.array_equal(frames(pipe, num_frames=2), frames(reference, num_frames=2))

    half = AnimateDiffPipeline.from_single_file(ldm_file, motion_adapter=setup.adapter, config_from=setup.sd,
                                                torch_dtype="bf16")
    assert half.dtype == torch.bfloat16 and half.vae.dtype == torch.bfloat16
    assert half.text_encoder.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in half.motion_adapter.parameters())


def test_hub_config_from_fetches_no_weights(setup, ldm_file, monkeypatch):
    """config_from as a hub repo id: snapshot_download is asked for configs, tokenizer and scheduler only."""
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, list(allow_patterns)))
        return str(setup.sd)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    pipe = AnimateDiffPipeline.from_single_file(ldm_file, motion_adapter=setup.adapter)  # the default SD1.5 repo
    assert calls == [("stable-diffusion-v1-5/stable-diffusion-v1-5", SINGLE_FILE_CONFIG_PATTERNS)]
    assert frames(pipe, num_frames=2).shape == (1, 2, 16, 24, 3)

    repo = ["model_index.json", "v1-5-pruned.ckpt", "v1-5-pruned-emaonly.safetensors", "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
            "unet/diffusion_pytorch_model.non_ema.bin", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/pytorch_model.bin",
            "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
            "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json", "safety_checker/config.json",
            "safety_checker/model.safetensors", "feature_extractor/preprocessor_config.json"]
    fetched = sorted(f for f in repo if any(fnmatch(f, p) for p in calls[0][1]))
    assert fetched == ["model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
                       "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
                       "tokenizer/vocab.json", "unet/config.json", "vae/config.json"]


def test_errors(setup, ldm_file, tmp_path):
    with pytest.raises(ModelNotFoundError, match="has no motion modules; pass motion_adapter="):
        AnimateDiffPipeline.from_single_file(ldm_file, config_from=setup.sd)
    with pytest.raises(ModelNotFoundError, match="must be a Stable Diffusion 1.x pipeline folder"):
        AnimateDiffPipeline.from_single_file(ldm_file, motion_adapter=setup.adapter, config_from=setup.sd / "unet")
    with pytest.raises(TypeError, match="unexpected arguments for AnimateDiffPipeline.from_single_file"):
        AnimateDiffPipeline.from_single_file(ldm_file, motion_adapter=setup.adapter, config_from=setup.sd,
                                             safety_checker=None)
    adapter_file = save_original(vidcore.load_model(setup.adapter), tmp_path / "mm_tiny.safetensors")
    with pytest.raises(CheckpointError, match="not an original Stable Diffusion 1.x file"):
        AnimateDiffPipeline.from_single_file(adapter_file, motion_adapter=setup.adapter, config_from=setup.sd)
    vae_only = tmp_path / "vae_only.safetensors"
    save_file({k: v for k, v in ldm_state(setup).items() if k.startswith("first_stage_model.")}, str(vae_only))
    with pytest.raises(CheckpointError, match="without the unet"):
        AnimateDiffPipeline.from_single_file(vae_only, motion_adapter=setup.adapter, config_from=setup.sd)


def test_load_sd_single_file_components_subset(setup, ldm_file):
    from vidcore.loading import load_sd_single_file

    parts = load_sd_single_file(ldm_file, config_from=setup.sd, components=["vae"])
    assert list(parts) == ["vae"] and isinstance(parts["vae"], vidcore.AutoencoderKL)
    assert list(load_sd_single_file(ldm_file, config_from=setup.sd, components="unet")) == ["unet"]
    with pytest.raises(ValueError, match=r"components must be among \['text_encoder', 'unet', 'vae'\], got "
                                         r"\['safety_checker'\]"):
        load_sd_single_file(ldm_file, config_from=setup.sd, components=["unet", "safety_checker"])
