"""The Triton temporal-attention kernel compiled for a real GPU (skipped without CUDA).

tests/test_kernels.py checks the kernel under the Triton interpreter on tiny grids; this file runs
the compiled kernel at the head dims and frame counts of the real models, at a full SVD-XT level
(more than 65,535 programs), through the attention dispatch ("auto" must pick it on CUDA) and inside
whole UNets (Triton backend vs SDPA backend).
"""

from __future__ import annotations

import pytest
import torch

from vidcore.kernels.temporal_attention import HAS_TRITON, temporal_attention_reference, temporal_attention_triton

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and triton")

@pytest.fixture(autouse=True)
def _no_tf32():
    """TF32 convs/matmuls round their inputs to 10 mantissa bits, so a 1e-7 difference in an attention
    output can flip a rounding and show up as ~1e-3 downstream: compare whole UNets in true fp32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _qkv(rows, n, c, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(rows, n, c, generator=g, device="cuda").to(dtype) for _ in range(3)]


def _check(out, ref, dtype):
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    tol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


# (frames, head dim): SVD (14/25 x 64), AnimateDiff (16 x 40/80/160), ModelScope (16 x 64), long clips
SHAPES = [(14, 64), (25, 64), (16, 40), (16, 80), (16, 160), (16, 64), (24, 128), (32, 64), (64, 64), (1, 64), (7, 40)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("f,d", SHAPES)
def test_dot_kernel_matches_reference(f, d, dtype):
    heads = 3
    q, k, v = _qkv(2 * f, 37, heads * d, dtype, seed=f * d)  # 37 pixels: a ragged last pixel block
    out = torch.full_like(q, float("nan"))  # poisoned: every element must be written
    temporal_attention_triton(q, k, v, f, heads, out=out)
    _check(out, temporal_attention_reference(q, k, v, f, heads), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("f,d", [(14, 64), (16, 40), (25, 160)])
def test_fma_kernel_matches_reference(f, d, dtype):
    q, k, v = _qkv(2 * f, 19, 2 * d, dtype, seed=1)
    _check(temporal_attention_triton(q, k, v, f, 2, variant="fma"), temporal_attention_reference(q, k, v, f, 2), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fused_qkv_slices_residual_and_inplace_out(dtype):
    f, heads, d = 16, 5, 64
    c = heads * d
    qkv = torch.randn(2 * f, 50, 3 * c, device="cuda", dtype=dtype)
    q, k, v = qkv[..., :c], qkv[..., c:2 * c], qkv[..., 2 * c:]  # strided views, no copies
    residual = torch.randn(2 * f, 50, c, device="cuda", dtype=dtype)
    ref = temporal_attention_reference(q, k, v, f, heads, residual=residual)
    out = temporal_attention_triton(q, k, v, f, heads, residual=residual, out=residual)  # in place
    assert out.data_ptr() == residual.data_ptr()
    _check(out, ref, dtype)


def test_svd_xt_level0_grid_beyond_65535():
    """SVD-XT 1024x576 level 0 with CFG: 2 videos x 25 frames x 72*128 pixels x 5 heads x 64."""
    f, heads, d, n = 25, 5, 64, 72 * 128
    q, k, v = _qkv(2 * f, n, heads * d, torch.bfloat16, seed=3)
    out = temporal_attention_triton(q, k, v, f, heads)
    # reference on a slice of pixels (the full fp32 reference would need ~10 GB of scores)
    sl = slice(n - 600, n)
    ref = temporal_attention_reference(q[:, sl], k[:, sl], v[:, sl], f, heads)
    _check(out[:, sl], ref, torch.bfloat16)
    ref0 = temporal_attention_reference(q[:, :600], k[:, :600], v[:, :600], f, heads)
    _check(out[:, :600], ref0, torch.bfloat16)


def test_auto_dispatch_picks_triton_on_cuda(monkeypatch):
    import vidcore.kernels.temporal_attention as ka
    from vidcore.nn.attention import attention_backend, temporal_attend

    calls = []
    real = ka.temporal_attention_triton

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ka, "temporal_attention_triton", spy)
    q, k, v = _qkv(2 * 16, 64, 4 * 40, torch.float16)
    with attention_backend("auto"):
        out = temporal_attend(q, k, v, 16, 4)
    assert calls, "auto did not use the Triton kernel for a supported CUDA input"
    with attention_backend("sdpa"):
        ref = temporal_attend(q, k, v, 16, 4)
    assert len(calls) == 1, "the sdpa backend must not call the kernel"
    _check(out, ref, torch.float16)


def _unet3d():
    from vidcore.models.unet3d import UNet3D, UNet3DConfig

    torch.manual_seed(0)
    cfg = UNet3DConfig(block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=8, cross_attention_dim=32,
                       norm_num_groups=8, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                       up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), sample_size=16)
    return UNet3D(cfg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_unet3d_triton_backend_matches_sdpa(dtype):
    from vidcore.nn.attention import attention_backend

    unet = _unet3d().to("cuda", dtype).eval()
    for p in unet.parameters():  # zero-initialised output layers would hide the temporal attention
        if p.abs().max() == 0:
            p.data.normal_(0, 0.02)
    x = torch.randn(2, 4, 16, 16, 16, device="cuda", dtype=dtype)
    ctx = torch.randn(2, 7, 32, device="cuda", dtype=dtype)
    with torch.no_grad():
        with attention_backend("triton"):
            a = unet(x, 500, ctx)
        with attention_backend("sdpa"):
            b = unet(x, 500, ctx)
    assert torch.isfinite(a).all()
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol)


def test_svd_unet_triton_backend_matches_sdpa():
    from vidcore.models.svd_unet import SVDUNet, SVDUNetConfig
    from vidcore.nn.attention import attention_backend

    torch.manual_seed(0)
    cfg = SVDUNetConfig(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                        num_attention_heads=(2, 4), addition_time_embed_dim=8, projection_class_embeddings_input_dim=24,
                        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), num_frames=14,
                        sample_size=16)
    unet = SVDUNet(cfg).to("cuda").eval()
    for p in unet.parameters():
        if p.abs().max() == 0:
            p.data.normal_(0, 0.02)
    x = torch.randn(1, 14, 8, 16, 16, device="cuda")
    ctx = torch.randn(1, 1, 32, device="cuda")
    ids = torch.tensor([[6.0, 127.0, 0.02]], device="cuda")
    with torch.no_grad():
        with attention_backend("triton"):
            a = unet(x, 1.5, ctx, ids)
        with attention_backend("sdpa"):
            b = unet(x, 1.5, ctx, ids)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
