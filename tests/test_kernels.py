"""Triton temporal-attention kernel vs its PyTorch reference, on CPU through the Triton interpreter.

``TRITON_INTERPRET=1`` is set before triton is imported (the kernel module also jits lazily, so the
mode is honoured even if ``kernels`` was imported earlier). The interpreter runs programs one by one
(~15-40 ms each), so every case keeps the grid to a handful of programs.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from vidcore.kernels.temporal_attention import (  # noqa: E402
    HAS_TRITON,
    MAX_PROGRAMS,
    grid_size,
    launch_config,
    supports,
    temporal_attention_reference,
    temporal_attention_triton,
    triton_temporal_backend,
)

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (4e-3, 4e-3), torch.bfloat16: (3e-2, 3e-2)}


def _qkv(b, f, n, heads, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b * f, n, heads * d, generator=g).to(dtype) for _ in range(3)]


def _assert_close(out, ref, dtype):
    atol, rtol = TOL[dtype]
    assert out.dtype == ref.dtype
    assert not out.isnan().any(), "kernel left unwritten (NaN) elements"
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)


# ------------------------------------------------------------------------------------------------
# reference (no triton needed)
# ------------------------------------------------------------------------------------------------

def _naive(q, k, v, f, heads, residual=None):
    """Loop-by-loop definition in float64: each (video, pixel, head) attends over its frames."""
    rows, n, c = q.shape
    d = c // heads
    out = torch.zeros(rows, n, c, dtype=torch.float64)
    q, k, v = q.double(), k.double(), v.double()
    for b in range(rows // f):
        for p in range(n):
            for h in range(heads):
                cols = slice(h * d, (h + 1) * d)
                for i in range(f):
                    scores = [float((q[b * f + i, p, cols] * k[b * f + j, p, cols]).sum()) / math.sqrt(d)
                              for j in range(f)]
                    mx = max(scores)
                    w = [math.exp(s - mx) for s in scores]
                    tot = sum(w)
                    out[b * f + i, p, cols] = sum(w[j] / tot * v[b * f + j, p, cols] for j in range(f))
    if residual is not None:
        out += residual.double()
    return out


@pytest.mark.parametrize("f,heads,d", [(1, 2, 3), (3, 2, 5), (4, 1, 8)])
def test_reference_matches_naive_loops(f, heads, d):
    q, k, v = _qkv(2, f, 3, heads, d, seed=f)
    res = torch.randn_like(q)
    torch.testing.assert_close(temporal_attention_reference(q, k, v, f, heads).double(), _naive(q, k, v, f, heads),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(temporal_attention_reference(q, k, v, f, heads, residual=res).double(),
                               _naive(q, k, v, f, heads, res), atol=1e-5, rtol=1e-5)


def test_reference_matches_rearrange_sdpa_path():
    from einops import rearrange
    f, heads, d = 5, 3, 8
    q, k, v = _qkv(2, f, 6, heads, d)
    to = lambda t: rearrange(t, "(b f) n (h d) -> (b n) h f d", f=f, h=heads)  # noqa: E731
    sdpa = torch.nn.functional.scaled_dot_product_attention(to(q), to(k), to(v))
    expected = rearrange(sdpa, "(b n) h f d -> (b f) n (h d)", n=6)
    torch.testing.assert_close(temporal_attention_reference(q, k, v, f, heads), expected, atol=1e-5, rtol=1e-5)


def test_reference_dtype_and_errors():
    q, k, v = _qkv(1, 4, 3, 2, 8, dtype=torch.bfloat16)
    assert temporal_attention_reference(q, k, v, 4, 2).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="num_frames"):
        temporal_attention_reference(q, k, v, 3, 2)
    with pytest.raises(ValueError, match="heads"):
        temporal_attention_reference(q, k, v, 4, 3)
    with pytest.raises(ValueError, match="shape"):
        temporal_attention_reference(q, k[:, :2], v, 4, 2)


def test_import_without_triton(tmp_path):
    """vidcore.kernels imports, and the reference runs, when `import triton` fails."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'triton' or name.startswith('triton.'):\n"
        "            raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, vidcore.kernels\n"
        "from vidcore.kernels import temporal_attention as ta\n"
        "assert not vidcore.kernels.HAS_TRITON and 'triton' not in sys.modules\n"
        "q = torch.randn(4, 3, 8)\n"
        "assert ta.temporal_attention_reference(q, q, q, 2, 2).shape == q.shape\n"
        "assert not ta.supports(q, 2, 2) and ta.triton_temporal_backend(q, q, q, 2, 2) is None\n"
        "try:\n"
        "    ta.temporal_attention_triton(q, q, q, 2, 2)\n"
        "except RuntimeError as e:\n"
        "    assert 'triton' in str(e)\n"
        "else:\n"
        "    raise AssertionError('expected RuntimeError')\n"
    )
    # Runs the installed package from a neutral folder: with the repository root on sys.path its
    # kernels/ folder would be importable as PyPI's top-level `kernels`.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env)


# ------------------------------------------------------------------------------------------------
# launch configuration / grid (pure Python)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("f,d", [(1, 40), (14, 64), (25, 64), (16, 160), (64, 64), (128, 256), (24, 80)])
def test_launch_config_shapes(f, d):
    for variant in ("dot", "fma"):
        cfg = launch_config(f, d, 10_000, variant)
        for key in ("BLOCK_N", "BLOCK_FQ", "BLOCK_D"):
            assert cfg[key] & (cfg[key] - 1) == 0, (key, cfg)
        assert cfg["BLOCK_D"] >= d and cfg["BLOCK_FQ"] * cfg["q_blocks"] >= f
        if variant == "dot":
            assert min(cfg["BLOCK_FQ"], cfg["BLOCK_FK"], cfg["BLOCK_D"]) >= 16
            assert cfg["BLOCK_N"] % cfg["num_warps"] == 0
        assert cfg["BLOCK_FQ"] * cfg["BLOCK_D"] <= 4096  # per-pixel fp32 accumulator fits a warp's registers


def test_grid_beyond_65535_and_limit():
    # I2VGen-XL L0 with CFG: 2 videos x 88*160 pixels x 5 heads, one pixel per program
    cfg = launch_config(16, 64, 88 * 160, block_n=1)
    assert grid_size(2, 5, 88 * 160, cfg) == 2 * 5 * 88 * 160 > 65_535
    cfg = launch_config(25, 64, 72 * 128)  # SVD-XT L0, default tiles
    assert grid_size(2, 5, 72 * 128, cfg) == 2 * 5 * (72 * 128 // cfg["BLOCK_N"])
    with pytest.raises(ValueError, match="2\\*\\*31"):
        grid_size(MAX_PROGRAMS, 2, 1, launch_config(8, 64, 1))


def test_supports_rejects_cpu_and_bad_shapes():
    q = torch.randn(8, 4, 64)
    assert not supports(q, 4, 2)  # CPU tensor: dispatch must not pick the kernel
    assert triton_temporal_backend(q, q, q, 4, 2) is None


# ------------------------------------------------------------------------------------------------
# Triton kernel under the interpreter
# ------------------------------------------------------------------------------------------------

@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("d", [40, 64, 80, 128, 160])
@pytest.mark.parametrize("f", [1, 3, 8, 16])
def test_triton_matches_reference(f, d, dtype):
    heads, n = 2, 5
    q, k, v = _qkv(2, f, n, heads, d, dtype, seed=f * 1000 + d)
    out = torch.full_like(q, float("nan"))  # poisoned: every element must be written
    got = temporal_attention_triton(q, k, v, f, heads, out=out)
    assert got is out
    _assert_close(out, temporal_attention_reference(q, k, v, f, heads), dtype)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("f,d", [(1, 40), (3, 64), (16, 160), (25, 80)])
def test_triton_fma_variant(f, d, dtype):
    q, k, v = _qkv(1, f, 3, 2, d, dtype, seed=f + d)
    out = torch.full_like(q, float("nan"))
    temporal_attention_triton(q, k, v, f, 2, out=out, variant="fma")
    _assert_close(out, temporal_attention_reference(q, k, v, f, 2), dtype)


@needs_triton
@pytest.mark.parametrize("f,d,variant", [(40, 160, "dot"), (70, 32, "dot"), (33, 256, "fma"), (128, 16, "dot")])
def test_triton_long_clips_use_several_query_blocks(f, d, variant):
    cfg = launch_config(f, d, 2, variant)
    assert cfg["q_blocks"] > 1
    q, k, v = _qkv(1, f, 2, 1, d, seed=f)
    out = temporal_attention_triton(q, k, v, f, 1, variant=variant)
    _assert_close(out, temporal_attention_reference(q, k, v, f, 1), torch.float32)


@needs_triton
def test_triton_pixel_blocks_with_ragged_tail():
    # 13 pixels in blocks of 4: the last block is masked; several blocks, heads and videos
    q, k, v = _qkv(3, 6, 13, 3, 24, torch.float16, seed=7)
    out = torch.full_like(q, float("nan"))
    temporal_attention_triton(q, k, v, 6, 3, out=out, block_n=4)
    _assert_close(out, temporal_attention_reference(q, k, v, 6, 3), torch.float16)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_fused_qkv_slices(dtype):
    """q, k, v as column slices of one fused projection output (b f) n (3 heads d): no copies."""
    b, f, n, heads, d = 2, 8, 4, 2, 40
    qkv = torch.randn(b * f, n, 3 * heads * d).to(dtype)
    q, k, v = qkv.split(heads * d, dim=-1)
    assert not q.is_contiguous() and q.stride(-1) == 1
    out = torch.full((b * f, n, heads * d), float("nan"), dtype=dtype)
    temporal_attention_triton(q, k, v, f, heads, out=out)
    _assert_close(out, temporal_attention_reference(q.contiguous(), k.contiguous(), v.contiguous(), f, heads), dtype)


@needs_triton
def test_triton_transposed_batch_views_and_strided_out():
    """Inputs stored pixel-major (n, b f, c) and viewed as (b f, n, c); output into a wider buffer."""
    b, f, n, heads, d = 2, 3, 5, 2, 64
    q, k, v = (torch.randn(n, b * f, heads * d).transpose(0, 1) for _ in range(3))
    assert q.stride(0) < q.stride(1)
    buf = torch.full((b * f, n, heads * d + 16), float("nan"))
    out = buf[..., 8:8 + heads * d]
    temporal_attention_triton(q, k, v, f, heads, out=out)
    _assert_close(out, temporal_attention_reference(q, k, v, f, heads), torch.float32)
    assert buf[..., :8].isnan().all() and buf[..., -8:].isnan().all(), "wrote outside `out`"


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_fused_residual(dtype):
    b, f, n, heads, d = 1, 8, 3, 2, 80
    q, k, v = _qkv(b, f, n, heads, d, dtype, seed=3)
    res = torch.randn_like(q)
    ref = temporal_attention_reference(q, k, v, f, heads, residual=res)
    out = torch.full_like(q, float("nan"))
    temporal_attention_triton(q, k, v, f, heads, residual=res, out=out)
    _assert_close(out, ref, dtype)
    # in place into the residual stream
    res2 = res.clone()
    assert temporal_attention_triton(q, k, v, f, heads, residual=res2, out=res2) is res2
    _assert_close(res2, ref, dtype)


@needs_triton
def test_triton_program_ids_beyond_65535():
    """The grid is 1-D (program_id(0) only): run the programs just past 65 535 of a 66 000-program grid."""
    f, heads, d, n = 2, 1, 4, 1
    videos = 66_000
    q, k, v = _qkv(videos, f, n, heads, d, seed=11)
    cfg = launch_config(f, d, n, block_n=1)
    assert grid_size(videos, heads, n, cfg) == videos
    out = torch.full_like(q, float("nan"))
    lo, hi = 65_530, 65_540
    temporal_attention_triton(q, k, v, f, heads, out=out, block_n=1, _program_slice=(lo, hi))
    rows = slice(lo * f, hi * f)
    ref = temporal_attention_reference(q[rows], k[rows], v[rows], f, heads)
    _assert_close(out[rows], ref, torch.float32)
    assert out[: lo * f].isnan().all() and out[hi * f:].isnan().all()


@needs_triton
def test_triton_int64_offsets_path():
    q, k, v = _qkv(2, 4, 3, 2, 16, seed=5)
    out = temporal_attention_triton(q, k, v, 4, 2, _force_int64=True)
    _assert_close(out, temporal_attention_reference(q, k, v, 4, 2), torch.float32)


@needs_triton
def test_triton_errors():
    q, k, v = _qkv(1, 4, 3, 2, 16)
    with pytest.raises(ValueError, match="contiguous last dim"):
        temporal_attention_triton(q, k, torch.randn(32, 3, 4).transpose(0, 2), 4, 2)
    with pytest.raises(ValueError, match="dtype"):
        temporal_attention_triton(q.double(), k.double(), v.double(), 4, 2)
    with pytest.raises(ValueError, match="out must be"):
        temporal_attention_triton(q, k, v, 4, 2, out=torch.empty_like(q, dtype=torch.float16))
    with pytest.raises(ValueError, match="num_frames"):
        temporal_attention_triton(*_qkv(1, 130, 1, 1, 16), 130, 1)
