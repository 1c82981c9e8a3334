"""Attention backend dispatch: choices, per-module pinning, and that "auto" never runs Triton on the CPU."""

import importlib

import pytest
import torch

import tiny
import vidcore
from vidcore.nn import attention as A


def qkv(frames=3, n=5, heads=2, d=8, videos=2, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(videos * frames, n, heads * d, generator=g, dtype=dtype) for _ in range(3)]


def test_backends_agree_on_temporal_attention():
    q, k, v = qkv()
    outs = {}
    for name in ("auto", "sdpa", "math"):
        with vidcore.attention_backend(name):
            outs[name] = A.temporal_attend(q, k, v, 3, 2)
    from vidcore.kernels import temporal_attention_reference

    ref = temporal_attention_reference(q, k, v, 3, 2)
    for out in outs.values():
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_auto_never_runs_triton_on_cpu(monkeypatch):
    import vidcore.kernels.temporal_attention as kt

    def boom(*args, **kwargs):
        raise AssertionError("Triton kernel called on CPU under 'auto'")

    monkeypatch.setattr(kt, "temporal_attention_triton", boom)
    monkeypatch.setattr(kt, "triton_temporal_backend", boom)
    q, k, v = qkv()
    with vidcore.attention_backend("auto"):
        A.temporal_attend(q, k, v, 3, 2)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown attention backend 'flash'; choose one of"):
        vidcore.set_attention_backend("flash")


def test_per_module_backend_overrides_global(tmp_path, monkeypatch):
    from diffusers import UNet3DConditionModel

    tiny.randomize_(UNet3DConditionModel(**tiny.tiny_unet3d_config()), 0).save_pretrained(tmp_path / "u")
    unet = vidcore.load_model(tmp_path / "u")
    calls = []
    real = A.math_attention
    monkeypatch.setattr(A, "math_attention", lambda *a: calls.append(1) or real(*a))
    x, ctx = torch.randn(1, 4, 2, 4, 4), torch.randn(1, 5, 32)
    with torch.no_grad():
        plain = unet(x, 5, ctx)
        assert not calls
        A.set_module_attention_backend(unet, "math")
        pinned = unet(x, 5, ctx)
    assert calls  # every attention of the UNet went through the math backend
    torch.testing.assert_close(plain, pinned, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not importlib.import_module("vidcore.kernels").HAS_TRITON, reason="triton not installed")
def test_triton_backend_in_a_whole_unet_under_the_interpreter(tmp_path):
    """The kernel wired into UNet3D's temporal transformers gives the SDPA result (CPU interpreter)."""
    from diffusers import UNet3DConditionModel

    cfg = tiny.tiny_unet3d_config(block_out_channels=(16, 16), norm_num_groups=4, layers_per_block=1,
                                  cross_attention_dim=16, attention_head_dim=8)
    tiny.randomize_(UNet3DConditionModel(**cfg), 0).save_pretrained(tmp_path / "u")
    unet = vidcore.load_model(tmp_path / "u")
    x, ctx = torch.randn(1, 4, 3, 2, 2), torch.randn(1, 5, 16)
    with torch.no_grad():
        expected = unet(x, 5, ctx)
        A.set_module_attention_backend(unet, "triton")
        got = unet(x, 5, ctx)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("groups,frames", [(2, 3), (3, 4), (1, 5)])
def test_cross_frame_attention_matches_diffusers_processor(groups, frames):
    from diffusers.models.attention_processor import Attention as DAttention
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
        CrossFrameAttnProcessor2_0,
    )

    ref = tiny.randomize_(DAttention(query_dim=16, heads=2, dim_head=8), 0).eval()
    ref.set_processor(CrossFrameAttnProcessor2_0(batch_size=groups))
    ours = A.Attention(16, 2, 8).eval()
    ours.load_state_dict({k.replace("to_out.0", "to_out"): v for k, v in ref.state_dict().items()})
    x = torch.randn(groups * frames, 6, 16, generator=torch.Generator().manual_seed(1))
    A.set_cross_frame_attention(ours, frames)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)
        ctx = torch.randn(groups * frames, 4, 16)
        torch.testing.assert_close(ours(x, ctx), ref(x, ctx), rtol=1e-5, atol=1e-6)  # cross-attention unchanged
        A.set_cross_frame_attention(ours, None)
        assert not torch.allclose(ours(x), ref(x))  # back to per-frame self-attention


def test_cross_frame_source_frame_and_bad_batch():
    attn = A.Attention(8, 1, 8).eval()
    x = torch.randn(6, 3, 8)
    A.set_cross_frame_attention(attn, 3, source_frame=2)
    with torch.no_grad():
        out = attn(x)
        # frame 2 of each video attends to itself: equals plain self-attention for that frame
        A.set_cross_frame_attention(attn, None)
        plain = attn(x)
    torch.testing.assert_close(out[2::3], plain[2::3])
    A.set_cross_frame_attention(attn, 4)
    with pytest.raises(ValueError, match="batch 6 is not a multiple of 4 frames"):
        attn(x)
    with pytest.raises(ValueError, match=r"source_frame must be in \[0, 3\)"):
        A.set_cross_frame_attention(attn, 3, source_frame=3)


@pytest.mark.parametrize("tokens", [77, 1])
def test_per_video_context_equals_repeated_context(tokens):
    """x is (b f) n c and the context is given once per video (b m c): the result must equal attending
    to the context repeated for every frame (what diffusers' video UNets build), with fewer k/v rows."""
    torch.manual_seed(0)
    attn = A.Attention(query_dim=16, heads=2, head_dim=8, context_dim=12).eval()
    b, f, n = 2, 5, 9
    x = torch.randn(b * f, n, 16)
    ctx = torch.randn(b, tokens, 12)
    calls = []
    attn.to_k.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        shared = attn(x, ctx)
        repeated = attn(x, ctx.repeat_interleave(f, dim=0))
    torch.testing.assert_close(shared, repeated, atol=1e-6, rtol=1e-5)
    if tokens > 1:
        assert calls == [b, b * f]  # k projected once per video, not per frame
    with pytest.raises(ValueError, match="not a multiple"):
        attn(torch.randn(7, n, 16), ctx)
