"""UNet3D parity with diffusers' UNet3DConditionModel on random tiny configs, plus its options."""

import pytest
import torch

import tiny
import vidcore


def rel_err(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


CONFIGS = {
    "two-levels": dict(),
    "three-levels-odd-heads": dict(block_out_channels=(16, 32, 48), attention_head_dim=8, norm_num_groups=8,
                                   layers_per_block=1, cross_attention_dim=24),
    "all-cross-attn": dict(down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D"),
                           up_block_types=("CrossAttnUpBlock3D", "CrossAttnUpBlock3D"), attention_head_dim=4),
}


def build(tmp_path, seed=0, **overrides):
    from diffusers import UNet3DConditionModel

    ref = tiny.randomize_(UNet3DConditionModel(**tiny.tiny_unet3d_config(**overrides)), seed).eval()
    ref.save_pretrained(tmp_path / "unet")
    ref.save_pretrained(tmp_path / "unet", variant="fp16")
    return ref, vidcore.load_model(tmp_path / "unet")


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("frames,height,width", [(3, 8, 12), (5, 10, 6)])
def test_unet3d_matches_diffusers(tmp_path, name, frames, height, width):
    ref, ours = build(tmp_path, **CONFIGS[name])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, frames, height, width, generator=g)
    ctx = torch.randn(2, 7, ref.config.cross_attention_dim, generator=g)
    t = torch.tensor([3, 871])
    with torch.no_grad():
        expected = ref(x, t, ctx).sample
        got = ours(x, t, ctx)
    assert got.shape == expected.shape
    assert rel_err(expected, got) < 1e-5


def test_unet3d_odd_latent_size_and_scalar_timestep(tmp_path):
    ref, ours = build(tmp_path, **CONFIGS["three-levels-odd-heads"])
    x = torch.randn(1, 4, 2, 9, 7)
    ctx = torch.randn(1, 5, 24)
    with torch.no_grad():
        assert rel_err(ref(x, 500, ctx).sample, ours(x, 500, ctx)) < 1e-5


def test_freeu_matches_diffusers(tmp_path):
    ref, ours = build(tmp_path)
    ref.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    ours.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    x, ctx = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 7, 32)
    with torch.no_grad():
        expected = ref(x, 10, ctx).sample
        got = ours(x, 10, ctx)
        ours.disable_freeu()
        plain = ours(x, 10, ctx)
    assert rel_err(expected, got) < 1e-5
    assert rel_err(expected, plain) > 1e-3  # FreeU really changes the output


@pytest.mark.parametrize("dim", [0, 1])
def test_forward_chunking_is_exact(tmp_path, dim):
    _, ours = build(tmp_path)
    x, ctx = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 7, 32)
    with torch.no_grad():
        plain = ours(x, 10, ctx)
        ours.enable_forward_chunking(chunk_size=3, dim=dim)
        chunked = ours(x, 10, ctx)
    assert rel_err(plain, chunked) < 1e-6


def test_fp16_variant_loads_same_weights(tmp_path):
    _, ours = build(tmp_path)
    half = vidcore.load_model(tmp_path / "unet", variant="fp16", torch_dtype=torch.float16)
    assert next(half.parameters()).dtype == torch.float16
    for (k, a), (_, b) in zip(ours.state_dict().items(), half.state_dict().items()):
        assert torch.equal(a.half(), b), k  # tiny.randomize_ rounds to fp16, so this is exact


def test_bf16_forward_is_finite(tmp_path):
    _, ours = build(tmp_path)
    ours = ours.to(torch.bfloat16)
    x, ctx = torch.randn(1, 4, 3, 8, 8, dtype=torch.bfloat16), torch.randn(1, 7, 32, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.isfinite(ours(x, 10, ctx)).all()


def test_math_backend_matches_sdpa(tmp_path):
    _, ours = build(tmp_path)
    x, ctx = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 7, 32)
    with torch.no_grad():
        sdpa = ours(x, 10, ctx)
        with vidcore.attention_backend("math"):
            math = ours(x, 10, ctx)
    assert rel_err(sdpa, math) < 1e-5


def test_unknown_block_type_is_a_clear_error():
    from vidcore.models.unet3d import UNet3DConfig

    with pytest.raises(ValueError, match="unknown down block type 'FancyBlock'"):
        UNet3DConfig.from_diffusers_config(tiny.tiny_unet3d_config(down_block_types=["FancyBlock", "DownBlock3D"]))
