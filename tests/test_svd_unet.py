"""SVD UNet parity with diffusers' UNetSpatioTemporalConditionModel, real-config coverage, the
single-token cross-attention shortcut, and a graph-break-free torch.compile."""

import pytest
import torch

import tiny
import vidcore
from vidcore.nn.attention import Attention

BASE = dict(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), num_attention_heads=(2, 4),
            cross_attention_dim=32, layers_per_block=2, addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=24, in_channels=8, num_frames=3)
CONFIGS = {
    "two-levels": {},
    "three-levels-two-transformer-layers": dict(
        block_out_channels=(32, 32, 64), num_attention_heads=(1, 2, 2), layers_per_block=1,
        transformer_layers_per_block=2, down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 2 + ("DownBlockSpatioTemporal",),
        up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 2),
}


def build(tmp_path, **overrides):
    from diffusers import UNetSpatioTemporalConditionModel

    ref = tiny.randomize_(UNetSpatioTemporalConditionModel(**{**BASE, **overrides}), 0).eval()
    ref.save_pretrained(tmp_path / "unet")
    return ref, vidcore.load_model(tmp_path / "unet")


def inputs(b=2, f=3, h=8, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, f, 8, h, w, generator=g)
    ctx = torch.randn(b, 1, 32, generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.02], [5.0, 40.0, 0.3]])[:b]
    return x, ctx, ids


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("f,h,w", [(3, 8, 6), (5, 5, 7)])
def test_svd_unet_matches_diffusers(tmp_path, name, f, h, w):
    ref, ours = build(tmp_path, **CONFIGS[name])
    x, ctx, ids = inputs(f=f, h=h, w=w)
    t = torch.tensor([0.25 * 2.3, -0.7])  # continuous timesteps (0.25 ln sigma)
    with torch.no_grad():
        expected = ref(x, t, ctx, ids).sample
        got = ours(x, t, ctx, ids)
    assert got.shape == expected.shape
    assert ((expected - got).abs().max() / expected.abs().max()).item() < 1e-5


def test_single_token_cross_attention_shortcut_is_exact():
    attn = tiny.randomize_(Attention(16, 2, 8, context_dim=12), 0)
    x, ctx = torch.randn(3, 10, 16), torch.randn(3, 1, 12)
    q, k, v = attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)
    split = lambda t: t.view(3, -1, 2, 8).transpose(1, 2)  # noqa: E731
    full = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    expected = attn.to_out(full.transpose(1, 2).reshape(3, 10, 16))
    torch.testing.assert_close(attn(x, ctx), expected, rtol=1e-6, atol=1e-6)


def test_real_config_every_key_and_shape_converts():
    from diffusers import UNetSpatioTemporalConditionModel

    from vidcore.conversion.maps.diffusers_svd import SVD_UNET_MAP
    from vidcore.loading import BY_DIFFUSERS, build

    # stabilityai/stable-video-diffusion-img2vid-xt unet/config.json
    config = {"_class_name": "UNetSpatioTemporalConditionModel", "addition_time_embed_dim": 256,
              "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 1024,
              "down_block_types": ["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
              "in_channels": 8, "layers_per_block": 2, "num_attention_heads": [5, 10, 20, 20], "num_frames": 25,
              "out_channels": 4, "projection_class_embeddings_input_dim": 768, "sample_size": 96,
              "transformer_layers_per_block": 1,
              "up_block_types": ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3}
    with torch.device("meta"):
        ref = UNetSpatioTemporalConditionModel.from_config(config)
    ours = build(BY_DIFFUSERS["UNetSpatioTemporalConditionModel"], config)
    source = ref.state_dict()
    converted, _ = SVD_UNET_MAP.convert(source, {k: v.shape for k, v in ours.state_dict().items()})
    assert len(converted) == len(source) == 1428
    assert abs(sum(p.numel() for p in ours.parameters()) / 1e6 - 1524.62) < 0.05


def test_fullgraph_compile_has_no_graph_break(tmp_path):
    _, ours = build(tmp_path)
    x, ctx, ids = inputs(b=1)
    compiled = torch.compile(ours, fullgraph=True, backend="eager")  # fullgraph raises on any graph break
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, 0.5, ctx, ids), ours(x, 0.5, ctx, ids))


def test_forward_chunking_is_exact(tmp_path):
    _, ours = build(tmp_path)
    x, ctx, ids = inputs()
    with torch.no_grad():
        plain = ours(x, 0.5, ctx, ids)
        ours.enable_forward_chunking(chunk_size=2, dim=1)
        torch.testing.assert_close(ours(x, 0.5, ctx, ids), plain, rtol=1e-5, atol=1e-6)
