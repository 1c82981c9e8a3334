"""Few-step AnimateDiff (AnimateLCM recipe) against diffusers: AnimateDiffPipeline with LCMScheduler / TCDScheduler
for 4 steps gives diffusers' frames, and a spatial UNet LoRA in kohya's key layout (the one
``wangfuyun/AnimateLCM``'s ``AnimateLCM_sd15_t2v_lora.safetensors`` uses) loads through ``load_lora_weights`` as
diffusers loads it. The tiny UNet has ``time_cond_proj_dim`` (an LCM-distilled base): diffusers' AnimateDiffPipeline
passes no ``timestep_cond``, and neither does vidcore."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_animatediff as ta
import torch
from safetensors.torch import save_file

import vidcore
from vidcore import schedulers as vs
from vidcore.pipelines.animatediff import animatediff_scheduler

TOL = 1e-4
KW = {"prompt": "a boat", "negative_prompt": "blurry", "num_frames": 3, "height": 8, "width": 16,
      "num_inference_steps": 4, "output_type": "np"}
LORA_FILE = "AnimateLCM_sd15_t2v_lora.safetensors"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return ta.build_tiny_animatediff(tmp_path_factory.mktemp("ad-lcm"), unet_overrides={"time_cond_proj_dim": 8})


def pair(setup, kind: str):
    """(diffusers pipeline, vidcore pipeline), both on ``kind`` built from the recommended DDIM config with
    linear betas (AnimateLCM's recipe)."""
    import diffusers

    ref = setup.pipe
    ref.scheduler = getattr(diffusers, kind).from_config(ref.scheduler.config, beta_schedule="linear")
    ddim = animatediff_scheduler(setup.sd / "scheduler" / "scheduler_config.json")
    scheduler = vs.scheduler_class(kind).from_config(ddim.to_diffusers_config(), beta_schedule="linear")
    ours = vidcore.AnimateDiffPipeline.from_pretrained(setup.sd, motion_adapter=setup.adapter, scheduler=scheduler)
    ours.set_progress_bar_config(disable=True)
    return ref, ours


def run(pipe, seed=0, **kw):
    return np.asarray(pipe(generator=torch.Generator().manual_seed(seed), **{**KW, **kw}).frames)


@pytest.mark.parametrize("kind,extra", [("LCMScheduler", {"guidance_scale": 1.5}),
                                        ("LCMScheduler", {"guidance_scale": 1.0}),
                                        ("TCDScheduler", {"guidance_scale": 2.0, "eta": 0.3})],
                         ids=["lcm-cfg1.5", "lcm-no-cfg", "tcd-gamma0.3"])
def test_few_step_pipeline_matches_diffusers(setup, kind, extra):
    ref, ours = pair(setup, kind)
    assert ours.unet.unet.config.time_cond_proj_dim == 8
    expected, got = run(ref, **extra), run(ours, **extra)
    assert expected.shape == got.shape == (1, 3, 8, 16, 3)
    assert np.abs(expected - got).max() < TOL
    assert len(ours.scheduler.timesteps) == 4


def kohya_lora(ref_unet, seed: int = 0, rank: int = 2) -> dict:
    """A random LoRA over the spatial layers of diffusers' UNetMotionModel ``ref_unet`` in kohya's layout:
    ``lora_unet_{path with _}.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` (attention projections,
    feed-forwards, 1x1 proj_in/out convs and the res blocks' 3x3 convs)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in ref_unet.named_modules():
        if ".motion_modules." in name or not name.startswith(("down_blocks", "up_blocks", "mid_block")):
            continue
        leaf = name.rsplit(".", 1)[-1]
        wanted = (leaf in ("to_q", "to_k", "to_v", "proj_in", "proj_out", "proj", "conv1")
                  or name.endswith((".to_out.0", ".ff.net.2")))
        if not wanted or not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        base = "lora_unet_" + name.replace(".", "_")
        if isinstance(module, torch.nn.Linear):
            fan_in, fan_out, kernel = module.in_features, module.out_features, ()
        else:
            fan_in, fan_out, kernel = module.in_channels, module.out_channels, tuple(module.kernel_size)
        down_shape = (rank, fan_in, *kernel)
        up_shape = (fan_out, rank, *(1 for _ in kernel))
        state[f"{base}.lora_down.weight"] = torch.randn(down_shape, generator=g) / (fan_in ** 0.5)
        state[f"{base}.lora_up.weight"] = torch.randn(up_shape, generator=g) * 0.3
        state[f"{base}.alpha"] = torch.tensor(1.0)  # scale alpha / rank = 0.5
    assert any("conv1" in k for k in state) and any("attn2_to_out_0" in k for k in state)
    return state


def test_kohya_spatial_lora_matches_diffusers(setup, tmp_path):
    pytest.importorskip("peft", reason="diffusers' LoRA loading (the reference) needs peft")
    save_file(kohya_lora(setup.pipe.unet), str(tmp_path / LORA_FILE))
    ref, ours = pair(setup, "LCMScheduler")
    before = run(ours, guidance_scale=1.5)
    try:
        ref.load_lora_weights(str(tmp_path), weight_name=LORA_FILE, adapter_name="lcm-lora")
        ours.load_lora_weights(tmp_path, weight_name=LORA_FILE, adapter_name="lcm-lora")
        assert ours.get_active_adapters() == ["lcm-lora"]
        got = run(ours, guidance_scale=1.5)
        assert np.abs(run(ref, guidance_scale=1.5) - got).max() < TOL
        assert np.abs(got - before).max() > 1e-3  # the LoRA changes the video
        ref.set_adapters(["lcm-lora"], [0.8])
        ours.set_adapters(["lcm-lora"], [0.8])
        assert np.abs(run(ref, guidance_scale=1.5) - run(ours, guidance_scale=1.5)).max() < TOL
    finally:
        ref.unload_lora_weights()
    ours.unload_lora_weights()
    assert np.array_equal(run(ours, guidance_scale=1.5), before)


def test_kohya_lora_for_another_model_is_refused(setup):
    from vidcore.errors import CheckpointError

    _, ours = pair(setup, "LCMScheduler")
    stray = {"lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.ones(2, 32, 1, 1),
             "lora_unet_input_blocks_1_1_proj_in.lora_up.weight": torch.ones(32, 2, 1, 1)}
    with pytest.raises(CheckpointError, match="lora_unet_input_blocks_1_1_proj_in"):
        ours.load_lora_weights(stray, adapter_name="ldm-names")
    assert ours.get_list_adapters() == {}


def test_kohya_names_of_the_real_sd15_motion_unet_are_unambiguous():
    """Every weight of diffusers' SD1.5 + v1-5-2 (AnimateLCM layout) UNetMotionModel has its own kohya flat name,
    so a kohya LoRA for it resolves to exactly one layer (meta device: no memory)."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from test_motion import ADAPTER_ANIMATELCM_CONFIG, SD15_UNET_CONFIG
    from vidcore.conversion.maps.motion_lora import kohya_layer_names

    with torch.device("meta"):
        unet = UNetMotionModel.from_unet2d(UNet2DConditionModel.from_config(SD15_UNET_CONFIG),
                                           MotionAdapter.from_config(ADAPTER_ANIMATELCM_CONFIG), load_weights=False)
    names = [k.removesuffix(".weight") for k in unet.state_dict() if k.endswith(".weight")]
    table = kohya_layer_names(names)
    assert len(table) == len(names) == 727
    assert table["lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0"] == \
        "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0"
