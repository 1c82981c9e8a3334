"""AnimateDiffPipeline's LoRA methods (vidcore/pipelines/lora.py): the pipeline with a loaded / fused motion LoRA
gives exactly the frames of a pipeline whose UNetMotion had the LoRA fused directly (vidcore.fuse_lora), matches
diffusers' AnimateDiffPipeline.load_lora_weights + fuse_lora within the pipeline tolerance, and unfuse_lora /
unload_lora_weights give back the original weights and frames bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import tiny_animatediff as ta
import vidcore
from vidcore.errors import CheckpointError

pytest.importorskip("peft", reason="diffusers' LoRA loading (the reference) needs peft")

KW = dict(prompt="a boat", negative_prompt="blurry", num_frames=3, height=8, width=16, num_inference_steps=2,
          output_type="np")
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return ta.build_tiny_animatediff(tmp_path_factory.mktemp("ad-lora"))


@pytest.fixture(scope="module")
def loras(setup, tmp_path_factory):
    """Two LoRA files: a hub-style folder (zoom-in) and a single .safetensors file (pan-left)."""
    root = tmp_path_factory.mktemp("loras")
    (root / "zoom-in").mkdir()
    save_file(ta.motion_lora(setup.pipe.unet, seed=1), str(root / "zoom-in" / "diffusion_pytorch_model.safetensors"))
    save_file(ta.motion_lora(setup.pipe.unet, seed=2), str(root / "pan-left.safetensors"))
    return root / "zoom-in", root / "pan-left.safetensors"


def load(setup):
    from vidcore.pipelines.animatediff import animatediff_scheduler

    # the diffusers reference samples with AnimateDiff's recommended DDIM, built here from the stored config
    scheduler = animatediff_scheduler(setup.sd / "scheduler" / "scheduler_config.json")
    pipe = vidcore.AnimateDiffPipeline.from_pretrained(setup.sd, motion_adapter=setup.adapter, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def frames(pipe, seed=0):
    return pipe(generator=torch.Generator().manual_seed(seed), **KW).frames


def weights(pipe) -> dict:
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def assert_same_weights(pipe, expected: dict):
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_fuse_equals_a_directly_fused_unet_and_unfuse_restores(setup, loras):
    zoom, _ = loras
    pipe = load(setup)
    original_weights, original = weights(pipe), frames(pipe)

    pipe.load_lora_weights(zoom, adapter_name="zoom-in")
    assert pipe.get_active_adapters() == ["zoom-in"] and pipe.get_list_adapters() == {"unet": ["zoom-in"]}
    pipe.fuse_lora(lora_scale=0.7)
    fused = frames(pipe)

    direct = load(setup)
    vidcore.fuse_lora(direct.unet, vidcore.load_motion_lora(zoom), scale=0.7)
    assert np.array_equal(fused, frames(direct))
    assert np.abs(fused - original).max() > 1e-3  # the LoRA changes the video

    pipe.unfuse_lora()
    assert pipe.get_active_adapters() == [] and pipe.get_list_adapters() == {"unet": ["zoom-in"]}
    assert_same_weights(pipe, original_weights)
    assert np.array_equal(frames(pipe), original)
    pipe.fuse_lora(lora_scale=0.7)  # still loaded: back in
    assert np.array_equal(frames(pipe), fused)
    pipe.unload_lora_weights()
    assert pipe.get_list_adapters() == {} and pipe.get_active_adapters() == []
    assert_same_weights(pipe, original_weights)


def test_matches_diffusers_load_lora_weights_and_fuse(setup, loras):
    zoom, _ = loras
    ref, pipe = setup.pipe, load(setup)
    try:
        ref.load_lora_weights(str(zoom), adapter_name="zoom-in")
        pipe.load_lora_weights(zoom, adapter_name="zoom-in")
        # loaded = active at weight 1 (diffusers: unmerged PEFT layers; vidcore: fused)
        expected = np.asarray(ref(generator=torch.Generator().manual_seed(0), **KW).frames)
        assert np.abs(expected - frames(pipe)).max() < TOL
        ref.fuse_lora(lora_scale=0.6)
        pipe.fuse_lora(lora_scale=0.6)
        expected = np.asarray(ref(generator=torch.Generator().manual_seed(0), **KW).frames)
        assert np.abs(expected - frames(pipe)).max() < TOL
    finally:
        ref.unfuse_lora()
        ref.unload_lora_weights()


def test_two_adapters_with_weights(setup, loras):
    zoom, pan = loras
    pipe = load(setup)
    original_weights = weights(pipe)
    pipe.load_lora_weights(zoom)
    pipe.load_lora_weights(pan)  # diffusers' default names
    assert pipe.get_active_adapters() == ["default_0", "default_1"]
    pipe.set_adapters(["default_0", "default_1"], adapter_weights=[0.5, -1.5])
    got = frames(pipe)

    direct = load(setup)
    vidcore.fuse_lora(direct.unet, vidcore.load_motion_lora(zoom), scale=0.5)
    vidcore.fuse_lora(direct.unet, vidcore.load_motion_lora(pan), scale=-1.5)
    assert np.array_equal(got, frames(direct))

    pipe.set_adapters("default_1", 0.8)  # one active, the other kept loaded
    alone = load(setup)
    vidcore.fuse_lora(alone.unet, vidcore.load_motion_lora(pan), scale=0.8)
    assert np.array_equal(frames(pipe), frames(alone))
    assert pipe.get_active_adapters() == ["default_1"]
    pipe.delete_adapters("default_1")
    assert pipe.get_active_adapters() == [] and pipe.get_list_adapters() == {"unet": ["default_0"]}
    assert_same_weights(pipe, original_weights)


def test_errors_leave_the_weights_alone(setup, loras):
    zoom, _ = loras
    pipe = load(setup)
    original_weights = weights(pipe)
    pipe.load_lora_weights(zoom, adapter_name="zoom")
    fused_weights = weights(pipe)
    with pytest.raises(ValueError, match="adapter name 'zoom' is already in use"):
        pipe.load_lora_weights(zoom, adapter_name="zoom")
    state = dict(ta.motion_lora(setup.pipe.unet, seed=3))
    key = next(k for k in state if k.endswith(".up.weight"))
    state[key] = torch.ones(state[key].shape[0] * 2, state[key].shape[1])
    with pytest.raises(CheckpointError, match="does not fit a weight of shape"):
        pipe.load_lora_weights(state, adapter_name="wide")
    stray = {"unet.down_blocks.0.motion_modules.9.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.ones(2, 16),
             "unet.down_blocks.0.motion_modules.9.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.ones(16, 2)}
    with pytest.raises(CheckpointError, match="not in this UNetMotion"):
        pipe.load_lora_weights(stray)
    with pytest.raises(ValueError, match=r"adapter\(s\) \['nope'\] are not loaded; loaded: \['zoom'\]"):
        pipe.set_adapters(["zoom", "nope"])
    with pytest.raises(ValueError, match="adapter_weights has 2 entries for 1 adapter_names"):
        pipe.set_adapters("zoom", [1.0, 2.0])
    assert pipe.get_list_adapters() == {"unet": ["zoom"]} and pipe.get_active_adapters() == ["zoom"]
    assert_same_weights(pipe, fused_weights)
    with pytest.raises(ValueError, match="NaN/inf weights"):
        pipe.fuse_lora(lora_scale=float("inf"), safe_fusing=True)
    assert_same_weights(pipe, fused_weights)
    pipe.fuse_lora(components=["text_encoder"], lora_scale=3.0)  # motion LoRAs live in the UNet only
    assert_same_weights(pipe, fused_weights)
    pipe.unload_lora_weights()
    assert_same_weights(pipe, original_weights)
