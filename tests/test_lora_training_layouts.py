"""LoRAs trained with vidcore.training (add_lora) and written by save_lora load in diffusers and back in vidcore with
the outputs of the trained branches, for every UNet family:

* peft layout (``unet.{layer}.lora_A.weight``): diffusers' ``load_lora_weights`` on AnimateDiffPipeline (frames),
  AnimateDiffSDXLPipeline and TextToVideoSDPipeline (frames); peft's ``inject_adapter_in_model`` +
  ``set_peft_model_state_dict`` on the SVD and I2VGen-XL UNets, whose diffusers pipelines have no LoRA loader;
* vidcore's ``load_lora_weights`` on the AnimateDiff, ModelScope, SVD and I2VGen-XL pipelines (fused weights) equals
  the unfused branches;
* the original AnimateDiff motion-LoRA layout loads back in vidcore (diffusers ignores that layout: checked);
* LoRAs that do not fit (layers the model lacks, another rank, layers a layout cannot hold) are clear errors.

Every branch gets random non-zero down *and* up weights (a fresh LoRA's zero ``up`` would hide a wrong name or
scale), and ``alpha != rank`` so a forgotten alpha / rank factor shows.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import tiny
import tiny_animatediff as ta
import vidcore
from vidcore.errors import ArgumentError, CheckpointError
from vidcore.models.motion import UNetMotion
from vidcore.training.lora import (TARGETS, LoRAConfig, add_lora, lora_layers, lora_state_dict, remove_lora,
                                   save_lora, set_lora_state_dict)

pytest.importorskip("peft", reason="diffusers' LoRA loading (the reference) needs peft")
pytestmark = pytest.mark.usefixtures("one_thread")

RANK, ALPHA = 2, 3.0  # branch scale 1.5, folded into lora_B by save_lora
FRAME_TOL = 1e-4  # pipeline frames in [0, 1], float32 (as tests/test_animatediff_pipeline_lora.py)
UNET_TOL = 1e-5  # max |error| / max |output| of a UNet forward


def rel_err(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    return ((a - b).abs().max() / a.abs().max()).item()


def train_(model, target, seed: int = 0) -> list[str]:
    """add_lora with non-zero random down and up weights: what a LoRA looks like after some training."""
    names = add_lora(model, LoRAConfig(rank=RANK, alpha=ALPHA, target=target))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, linear in lora_layers(model):
            down, up = linear.lora.down.weight, linear.lora.up.weight
            down.copy_(torch.randn(down.shape, generator=g) / down.shape[1] ** 0.5)
            up.copy_(torch.randn(up.shape, generator=g) * 0.3)
    return names


def peft_inject_(ref, path):
    """What a user does for a diffusers UNet whose pipeline has no LoRA loader: inject peft layers named by the file
    and load its state (alpha = rank: the file's B holds the scale)."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    state = {k.removeprefix("unet."): v for k, v in load_file(str(path)).items()}
    layers = sorted({k.rsplit(".lora_", 1)[0] for k in state})
    inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=layers), ref)
    result = set_peft_model_state_dict(ref, state)
    assert not getattr(result, "unexpected_keys", []), result
    return layers


# ----------------------------------------------------------------------------- AnimateDiff (SD1.5), frames

KW = dict(prompt="a boat", negative_prompt="blurry", num_frames=3, height=8, width=16, num_inference_steps=2,
          output_type="np")


def frames(pipe):
    return np.asarray(pipe(generator=torch.Generator().manual_seed(0), **KW).frames)


@pytest.fixture(scope="module")
def animatediff(tmp_path_factory):
    from vidcore.pipelines.animatediff import animatediff_scheduler

    setup = ta.build_tiny_animatediff(tmp_path_factory.mktemp("ad"))
    scheduler = animatediff_scheduler(setup.sd / "scheduler" / "scheduler_config.json")
    pipe = vidcore.AnimateDiffPipeline.from_pretrained(setup.sd, motion_adapter=setup.adapter, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return setup.pipe, pipe, frames(pipe)


def test_animatediff_peft_file_loads_in_diffusers_and_vidcore(animatediff, tmp_path):
    ref, pipe, original = animatediff
    # motion and spatial attention, plus a 1x1-conv projection (SD1.5's proj_in: a conv in diffusers, linear here)
    names = train_(pipe.unet, TARGETS["both"] + (r"^down_blocks\.0\.attentions\.0\.proj_in$",))
    assert any(".motion_modules." in n for n in names) and any(".attentions." in n for n in names)
    branches = frames(pipe)
    path = save_lora(pipe.unet, tmp_path / "lora.safetensors")
    assert load_file(str(path))["unet.down_blocks.0.attentions.0.proj_in.lora_A.weight"].shape[2:] == (1, 1)
    assert np.abs(branches - original).max() > 1e-2  # the LoRA changes the video

    ref.load_lora_weights(str(path), adapter_name="trained")
    try:
        assert np.abs(frames(ref) - branches).max() < FRAME_TOL
    finally:
        ref.unload_lora_weights()

    remove_lora(pipe.unet)
    pipe.load_lora_weights(path, adapter_name="trained")
    try:
        assert np.abs(frames(pipe) - branches).max() < FRAME_TOL
    finally:
        pipe.unload_lora_weights()
    assert np.array_equal(frames(pipe), original)


def test_animatediff_original_layout_loads_back_in_vidcore(animatediff, tmp_path):
    ref, pipe, original = animatediff
    train_(pipe.unet, "temporal", seed=1)
    branches = frames(pipe)
    path = save_lora(pipe.unet, tmp_path / "v2_lora_Trained.safetensors", layout="animatediff")
    state = load_file(str(path))
    assert "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.processor" \
           ".to_out_lora.up.weight" in state
    assert state.keys() == {k for k in state if ".temporal_transformer." in k and k.endswith(("down.weight",
                                                                                              "up.weight"))}
    remove_lora(pipe.unet)
    pipe.load_lora_weights(path)
    try:
        assert np.abs(frames(pipe) - branches).max() < FRAME_TOL
    finally:
        pipe.unload_lora_weights()

    # diffusers does not read the original layout (its loader finds no key it knows and adds nothing): a user
    # converts it with diffusers' scripts/convert_animatediff_motion_lora_to_diffusers.py, or saves layout="peft"
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    ref.load_lora_weights(str(path), adapter_name="original")
    try:
        assert not any(hasattr(m, "lora_A") for m in ref.unet.modules())
    finally:
        ref.unload_lora_weights()


def test_layouts_that_cannot_hold_the_layers_are_refused(animatediff, tmp_path):
    _, pipe, _ = animatediff
    train_(pipe.unet, "spatial")
    try:
        with pytest.raises(ArgumentError, match="layout='peft'"):
            save_lora(pipe.unet, tmp_path / "x.safetensors", layout="animatediff")
        with pytest.raises(ArgumentError, match="layout must be one of"):
            save_lora(pipe.unet, tmp_path / "x.safetensors", layout="kohya")
        assert not (tmp_path / "x.safetensors").exists()
    finally:
        remove_lora(pipe.unet)
