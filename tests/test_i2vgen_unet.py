"""I2VGen-XL UNet parity with diffusers' I2VGenXLUNet, real-config key coverage, low-precision sanity."""

import pytest
import torch

import tiny
import vidcore

BASE = dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
            cross_attention_dim=32, attention_head_dim=8, num_attention_heads=64,
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"))
CONFIGS = {
    "two-levels": {},
    "three-levels": dict(block_out_channels=(16, 32, 32), layers_per_block=2, cross_attention_dim=24,
                         down_block_types=("CrossAttnDownBlock3D",) * 2 + ("DownBlock3D",),
                         up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 2),
}


def build(tmp_path, **overrides):
    from diffusers import I2VGenXLUNet

    ref = tiny.randomize_(I2VGenXLUNet(**{**BASE, **overrides}), 0).eval()
    ref.save_pretrained(tmp_path / "unet")
    return ref, vidcore.load_model(tmp_path / "unet")


def inputs(ctx_dim, b=2, f=3, h=8, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return r(b, 4, f, h, w), r(b, 4, f, h, w), r(b, ctx_dim), r(b, 7, ctx_dim)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("f,h,w", [(3, 8, 12), (5, 6, 10)])
def test_i2vgen_unet_matches_diffusers(tmp_path, name, f, h, w):
    ref, ours = build(tmp_path, **CONFIGS[name])
    ctx = ref.config.cross_attention_dim
    x, image_latents, image_embeds, text = inputs(ctx, f=f, h=h, w=w)
    t, fps = torch.tensor([5, 700]), torch.tensor([16, 8])
    with torch.no_grad():
        expected = ref(x, t, fps=fps, image_latents=image_latents, image_embeddings=image_embeds,
                       encoder_hidden_states=text).sample
        got = ours(x, t, fps, image_latents, image_embeds, text)
    assert ((expected - got).abs().max() / expected.abs().max()).item() < 1e-5


def test_real_config_every_key_and_shape_converts():
    from diffusers import I2VGenXLUNet

    from vidcore.conversion.maps.diffusers_i2vgen import I2VGEN_MAP
    from vidcore.loading import BY_DIFFUSERS, build

    # ali-vilab/i2vgen-xl unet/config.json
    config = {"_class_name": "I2VGenXLUNet", "attention_head_dim": 64, "block_out_channels": [320, 640, 1280, 1280],
              "cross_attention_dim": 1024, "down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
              "in_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "num_attention_heads": 64,
              "out_channels": 4, "sample_size": 32, "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3}
    with torch.device("meta"):
        ref = I2VGenXLUNet.from_config(config)
    ours = build(BY_DIFFUSERS["I2VGenXLUNet"], config)
    source = ref.state_dict()
    converted, _ = I2VGEN_MAP.convert(source, {k: v.shape for k, v in ours.state_dict().items()})
    assert len(converted) == len(source) == 1511
    assert ours.conv_in.weight.shape == (320, 8, 3, 3)
    assert abs(sum(p.numel() for p in ours.parameters()) / 1e6 - 1420.47) < 0.05


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_forward_is_finite(tmp_path, dtype):
    _, ours = build(tmp_path)
    ours = ours.to(dtype)
    x, il, ie, text = (t.to(dtype) for t in inputs(32))
    with torch.no_grad():
        out = ours(x, 10, 16, il, ie, text)
    assert torch.isfinite(out).all() and out.abs().max() > 0
