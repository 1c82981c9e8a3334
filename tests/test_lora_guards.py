"""Features that cannot act on LoRA training branches refuse them instead of dropping them silently: fused QKV
(its one matmul skips the to_q/k/v hooks), model files (branch tensors have no place there, the folder would not
load back) and group offload (onloaded copies would take the updates)."""

from __future__ import annotations

import pytest
import torch

import tiny
from vidcore.errors import ArgumentError, UnsupportedFeatureError
from vidcore.loading.save import save_diffusers, save_native
from vidcore.models.unet3d import UNet3D, UNet3DConfig
from vidcore.training import LoRAConfig, add_lora, merge_lora, remove_lora


@pytest.fixture
def unet():
    return tiny.randomize_(UNet3D(UNet3DConfig.from_diffusers_config(tiny.tiny_unet3d_config())), seed=0)


def test_fused_qkv_refuses_live_branches(unet):
    add_lora(unet, LoRAConfig(rank=2, target="both"))
    with pytest.raises(RuntimeError, match="bypass the LoRA training branches"):
        unet.fuse_qkv_projections()
    remove_lora(unet)
    unet.fuse_qkv_projections()  # nothing left to bypass


def test_saving_a_model_with_branches_is_refused_until_merged(unet, tmp_path):
    add_lora(unet, LoRAConfig(rank=2))
    with pytest.raises(ArgumentError, match="carries LoRA training branches"):
        save_diffusers(unet, tmp_path / "unet")
    with pytest.raises(ArgumentError, match="merge_lora"):
        save_native(unet, tmp_path / "unet.safetensors")
    assert not any(tmp_path.iterdir())
    merge_lora(unet)
    save_diffusers(unet, tmp_path / "unet")
    loaded = UNet3D.from_pretrained(tmp_path / "unet")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), unet.state_dict().values()))


def test_branches_are_refused_under_group_offload(unet):
    unet.enable_group_offload("cpu")
    with pytest.raises(UnsupportedFeatureError, match="before enable_group_offload"):
        add_lora(unet, LoRAConfig(rank=2))
    unet.disable_group_offload()
    add_lora(unet, LoRAConfig(rank=2))
