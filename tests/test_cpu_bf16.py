"""vidcore.nn.cpu_bf16: bf16 models on CPUs without native bf16 compute their matmuls / convs in float32.

The switch is forced on and off with VIDCORE_CPU_BF16_FP32_COMPUTE so the tests do the same on every CPU.
"""

import pytest
import tiny
import torch
import torch.nn.functional as F

import vidcore
from vidcore.nn import cpu_bf16


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / a.float().abs().max()).item()


@pytest.fixture
def unet_pair(tmp_path):
    from diffusers import UNet3DConditionModel

    ref = tiny.randomize_(UNet3DConditionModel(**tiny.tiny_unet3d_config()), 0).eval()
    ref.save_pretrained(tmp_path / "unet")
    return ref, vidcore.load_model(tmp_path / "unet").eval()


def test_ops_equal_float32_compute_rounded_once():
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g).bfloat16() for s in ((5, 7, 24), (16, 24), (16,)))
    img, k = torch.randn(2, 8, 9, 9, generator=g).bfloat16(), torch.randn(4, 8, 3, 3, generator=g).bfloat16()
    with cpu_bf16.Float32Compute():
        lin = F.linear(x, w, b)
        conv = F.conv2d(img, k, padding=1)
        mm = x @ w.t()
    assert lin.dtype == conv.dtype == mm.dtype == torch.bfloat16
    assert torch.equal(lin, F.linear(x.float(), w.float(), b.float()).bfloat16())
    assert torch.equal(conv, F.conv2d(img.float(), k.float(), padding=1).bfloat16())
    assert torch.equal(mm, (x.float() @ w.float().t()).bfloat16())
    # the reference bf16 kernels also accumulate in float32: at most an accumulation-order difference remains
    assert rel_err(F.linear(x, w, b), lin) < 1e-2


def test_bf16_unet_close_to_native_bf16_and_fp32(unet_pair, monkeypatch):
    ref, ours = unet_pair
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(1, 4, 3, 8, 8, generator=g), torch.randn(1, 7, 32, generator=g)
    with torch.no_grad():
        full = ours(x, 10, ctx)
        ours.bfloat16()
        monkeypatch.setenv("VIDCORE_CPU_BF16_FP32_COMPUTE", "0")
        plain = ours(x.bfloat16(), 10, ctx.bfloat16())
        monkeypatch.setenv("VIDCORE_CPU_BF16_FP32_COMPUTE", "1")
        upcast = ours(x.bfloat16(), 10, ctx.bfloat16())
        ref_bf16 = ref.bfloat16()(x.bfloat16(), 10, encoder_hidden_states=ctx.bfloat16()).sample
    assert upcast.dtype == torch.bfloat16 and torch.isfinite(upcast).all()
    assert not torch.equal(plain, upcast)  # the switch did something
    bf16_noise = rel_err(full, ref_bf16)  # what bf16 costs diffusers itself
    assert rel_err(full, upcast) <= 1.5 * bf16_noise
    assert rel_err(ref_bf16, upcast) <= 2 * bf16_noise
    assert rel_err(plain, upcast) <= 2 * bf16_noise


def test_float32_and_switched_off_are_untouched(unet_pair, monkeypatch):
    _, ours = unet_pair
    x, ctx = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 7, 32)
    monkeypatch.setenv("VIDCORE_CPU_BF16_FP32_COMPUTE", "1")
    calls, real = [], cpu_bf16.Float32Compute
    monkeypatch.setattr(cpu_bf16, "Float32Compute", lambda: calls.append(1) or real())
    with torch.no_grad():
        ours(x, 10, ctx)
        assert not calls  # float32 model: no mode
        ours.bfloat16()
        monkeypatch.setenv("VIDCORE_CPU_BF16_FP32_COMPUTE", "0")
        ours(x.bfloat16(), 10, ctx.bfloat16())
        assert not calls  # switched off
        monkeypatch.setenv("VIDCORE_CPU_BF16_FP32_COMPUTE", "1")
        ours(x.bfloat16(), 10, ctx.bfloat16())
        assert calls == [1]  # one mode for the whole forward, not one per nested decorated call


def test_vae_decode_uses_it(tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    tiny.randomize_(AutoencoderKL(**tiny.tiny_vae_config()), 0).save_pretrained(tmp_path / "vae")
    vae = vidcore.load_model(tmp_path / "vae").eval()
    z = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = vae.decode(z)
        vae.bfloat16()
        monkeypatch.setenv("VIDCORE_CPU_BF16_FP32_COMPUTE", "1")
        upcast = vae.decode(z.bfloat16())
        monkeypatch.setenv("VIDCORE_CPU_BF16_FP32_COMPUTE", "0")
        plain = vae.decode(z.bfloat16())
    assert rel_err(full, upcast) <= 1.5 * rel_err(full, plain) + 1e-3
