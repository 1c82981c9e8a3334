"""AutoencoderKL parity with diffusers: encode, decode, sampling, slicing, tiling."""

import pytest
import torch

import tiny
import vidcore


def rel_err(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


CONFIGS = {
    "two-levels": dict(),
    "three-levels": dict(block_out_channels=(16, 32, 32), norm_num_groups=8, layers_per_block=2, sample_size=24),
    "no-quant-convs": dict(use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False),
}


def build(tmp_path, seed=0, **overrides):
    from diffusers import AutoencoderKL

    ref = tiny.randomize_(AutoencoderKL(**tiny.tiny_vae_config(**overrides)), seed).eval()
    ref.save_pretrained(tmp_path / "vae")
    return ref, vidcore.load_model(tmp_path / "vae")


@pytest.mark.parametrize("name", CONFIGS)
def test_encode_decode_match(tmp_path, name):
    ref, ours = build(tmp_path, **CONFIGS[name])
    x = torch.randn(3, 3, 20, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        post_ref, post = ref.encode(x).latent_dist, ours.encode(x)
        assert rel_err(post_ref.mean, post.mean) < 1e-5
        assert rel_err(post_ref.std, post.std) < 1e-5
        a = post_ref.sample(torch.Generator().manual_seed(4))
        b = post.sample(torch.Generator().manual_seed(4))
        assert rel_err(a, b) < 1e-5
        assert rel_err(ref.decode(a).sample, ours.decode(b)) < 1e-5


def test_slicing_matches_diffusers_and_unsliced(tmp_path):
    ref, ours = build(tmp_path)
    z = torch.randn(4, 4, 6, 5)
    with torch.no_grad():
        plain = ours.decode(z)
        ref.enable_slicing()
        ours.enable_slicing()
        assert rel_err(ref.decode(z).sample, ours.decode(z)) < 1e-5
        assert rel_err(plain, ours.decode(z)) < 1e-5


@pytest.mark.parametrize("size", [(40, 56), (72, 36)])
def test_tiling_matches_diffusers(tmp_path, size):
    ref, ours = build(tmp_path)  # sample_size 32 -> tiles of 32 px / 16 latents, overlap 1/4
    ref.enable_tiling()
    ours.enable_tiling()
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ref.encode(x).latent_dist.mean, ours.encode(x).mean
        assert a.shape == b.shape
        assert rel_err(a, b) < 1e-5
        assert rel_err(ref.decode(a).sample, ours.decode(b)) < 1e-5


def test_bf16_decode_is_finite(tmp_path):
    _, ours = build(tmp_path)
    ours = ours.to(torch.bfloat16)
    with torch.no_grad():
        out = ours.decode(torch.randn(1, 4, 4, 4, dtype=torch.bfloat16))
    assert torch.isfinite(out).all()
