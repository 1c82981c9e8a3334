"""AnimateDiff SDXL: UNetMotion over an SDXL UNet2D equals diffusers' UNetMotionModel (text_time
micro-conditioning, odd frame counts, non-square), a saved SDXL UNetMotionModel folder loads, the real SDXL
UNet + sdxl-beta adapter convert on the meta device, and SD1.5/SDXL mix-ups are one-line errors."""

import pytest
import torch

import tiny
import vidcore
from test_unet2d import SD15_UNET_CONFIG, rel_err
from test_unet2d_sdxl import SDXL_UNET_CONFIG, sdxl_inputs
from vidcore.models.motion import UNetMotion

SDXL_BETA_ADAPTER_CONFIG = {  # guoyww/animatediff-motion-adapter-sdxl-beta config.json
    "_class_name": "MotionAdapter", "block_out_channels": [320, 640, 1280], "conv_in_channels": None,
    "motion_layers_per_block": 2, "motion_max_seq_length": 32, "motion_mid_block_layers_per_block": 1,
    "motion_norm_num_groups": 32, "motion_num_attention_heads": 8, "motion_transformer_layers_per_block": 1,
    "motion_transformer_layers_per_mid_block": 1, "use_motion_mid_block": False,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def build(tmp_path, seed=0):
    from diffusers import MotionAdapter as RefAdapter
    from diffusers import UNet2DConditionModel, UNetMotionModel

    unet = tiny.randomize_(UNet2DConditionModel(**tiny.tiny_sdxl_unet_config()), seed).eval()
    adapter = tiny.randomize_(RefAdapter(**tiny.tiny_sdxl_motion_adapter_config()), seed + 1).eval()
    unet.save_pretrained(tmp_path / "sdxl" / "unet")
    adapter.save_pretrained(tmp_path / "adapter")
    ref = UNetMotionModel.from_unet2d(unet, adapter).eval()
    # diffusers' from_unet2d leaves add_embedding at its random init (a known diffusers bug); copy it here
    ref.add_embedding.load_state_dict(unet.add_embedding.state_dict())
    ours = UNetMotion(vidcore.load_model(tmp_path / "sdxl", subfolder="unet"), vidcore.load_model(tmp_path / "adapter"))
    return ref, ours


@pytest.mark.parametrize("frames,height,width", [(5, 7, 9)])  # odd frame count, non-square
def test_sdxl_unet_motion_matches_diffusers(tmp_path, frames, height, width):
    ref, ours = build(tmp_path)
    config = tiny.tiny_sdxl_unet_config()
    _, ctx, added = sdxl_inputs(config)
    x = torch.randn(2, 4, frames, height, width, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([7, 640])
    with torch.no_grad():
        expected = ref(x, t, ctx.repeat_interleave(frames, dim=0), added_cond_kwargs=added).sample
        got = ours(x, t, ctx, added_cond_kwargs=added)
    assert rel_err(expected, got) < 1e-5

    # a saved UNetMotionModel folder (an AnimateDiffSDXLPipeline's unet/) loads with its text_time embedding
    from vidcore.pipelines.animatediff import load_unet_motion

    ref.save_pretrained(tmp_path / "motion_unet")
    again = load_unet_motion(tmp_path / "motion_unet")
    with torch.no_grad():
        assert rel_err(expected, again(x, t, ctx, added_cond_kwargs=added)) < 1e-5


def test_real_sdxl_unet_and_beta_adapter_on_meta():
    from diffusers import MotionAdapter as RefAdapter
    from diffusers import UNet2DConditionModel

    from vidcore.loading import BY_DIFFUSERS, build

    built = {}
    for cls, config in (("UNet2DConditionModel", SDXL_UNET_CONFIG), ("MotionAdapter", SDXL_BETA_ADAPTER_CONFIG)):
        with torch.device("meta"):
            ref = (UNet2DConditionModel if cls == "UNet2DConditionModel" else RefAdapter).from_config(config)
        arch = BY_DIFFUSERS[cls]
        built[cls] = ours = build(arch, dict(ref.config))
        converted, _ = arch.keymap(dict(ref.config)).convert(
            ref.state_dict(), {k: v.shape for k, v in ours.state_dict().items()})
        assert len(converted) == len(ref.state_dict()) == len(ours.state_dict())
    adapter = built["MotionAdapter"]
    assert adapter.mid_block is None and adapter.max_frames == 32
    assert abs(sum(p.numel() for p in adapter.parameters()) / 1e6 - 236.8) < 0.1
    UNetMotion(built["UNet2DConditionModel"], adapter)  # fits


def test_sd15_and_sdxl_mixups_are_one_line_errors():
    from vidcore.loading import BY_DIFFUSERS, build
    from test_motion import ADAPTER_V15_2_CONFIG

    with torch.device("meta"):
        sd15 = build(BY_DIFFUSERS["UNet2DConditionModel"], SD15_UNET_CONFIG)
        sdxl = build(BY_DIFFUSERS["UNet2DConditionModel"], SDXL_UNET_CONFIG)
        sdxl_adapter = build(BY_DIFFUSERS["MotionAdapter"], SDXL_BETA_ADAPTER_CONFIG)
        sd15_adapter = build(BY_DIFFUSERS["MotionAdapter"], ADAPTER_V15_2_CONFIG)
    with pytest.raises(ValueError, match=r"an SDXL motion adapter cannot animate an SD1.5 UNet") as err:
        UNetMotion(sd15, sdxl_adapter)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"an SD1.5 motion adapter cannot animate an SDXL UNet.*sdxl-beta"):
        UNetMotion(sdxl, sd15_adapter)
