"""Temporal attention read straight from the spatial layout.

Video UNets attend over *frames* at every pixel: q, k, v arrive as ``(b f) n (heads d)`` (row index =
``video * f + frame``, ``n = h * w`` pixels) and the usual path rearranges them to ``(b n) heads f d``,
runs SDPA and rearranges back -- two extra copies of q/k/v/out for a memory-bound operation. The
Triton kernel here reads q, k, v in place (any strides for the first two dims), keeps the ``f x f``
softmax of each (video, pixel, head) in registers and writes the output in the input layout, so
every byte is read once and written once.

* :func:`temporal_attention_reference` -- the plain PyTorch definition (the kernel's contract).
* :func:`temporal_attention_triton` -- the Triton forward kernel (CUDA, or CPU with ``TRITON_INTERPRET=1``).
* :func:`supports` -- whether the kernel can take a given CUDA input (for dispatch).
* :func:`triton_temporal_backend` -- ``fn(q, k, v, num_frames, heads)`` returning the output or
  ``None`` to decline; :func:`vidcore.nn.attention.temporal_attend` calls it for the "triton" and "auto"
  backends (:func:`vidcore.set_attention_backend`).

Importing this module never requires triton (``HAS_TRITON`` says whether it is usable).
"""

from __future__ import annotations

import math
import os

import torch

try:  # triton is optional: the reference and the SDPA path work without it
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # ImportError, or a broken install (missing libs): behave as "not installed"
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = [
    "HAS_TRITON",
    "temporal_attention_reference",
    "temporal_attention_triton",
    "supports",
    "triton_temporal_backend",
    "launch_config",
    "grid_size",
    "MAX_FRAMES",
    "MAX_HEAD_DIM",
]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_FRAMES = 128
MAX_HEAD_DIM = 256
MAX_PROGRAMS = 2**31 - 1  # CUDA grid.x limit (grid.y/z are 65 535: the kernel never uses them)
VARIANTS = ("dot", "fma")


# ------------------------------------------------------------------------------------------------
# checks shared by the reference and the kernel
# ------------------------------------------------------------------------------------------------

def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int, heads: int,
                  residual: torch.Tensor | None) -> tuple[int, int, int, int]:
    """Validate shapes; return (num_videos, pixels, channels, head_dim)."""
    if q.dim() != 3:
        raise ValueError(f"q must be (b*f, n, heads*d), got shape {tuple(q.shape)}")
    for name, t in (("k", k), ("v", v)) + ((("residual", residual),) if residual is not None else ()):
        if t.shape != q.shape:
            raise ValueError(f"{name} must have q's shape {tuple(q.shape)}, got {tuple(t.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    num_frames, heads = int(num_frames), int(heads)
    rows, n, c = q.shape
    if num_frames < 1 or rows % num_frames:
        raise ValueError(f"num_frames={num_frames} must be >= 1 and divide q.shape[0]={rows}")
    if heads < 1 or c % heads:
        raise ValueError(f"heads={heads} must be >= 1 and divide the channel dim {c}")
    return rows // num_frames, n, c, c // heads


# ------------------------------------------------------------------------------------------------
# reference
# ------------------------------------------------------------------------------------------------

def temporal_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int,
                                 heads: int, residual: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over the frames of each (video, pixel, head), in float32.

    q, k, v: ``(b*f, n, heads*d)`` with row index ``video * f + frame``; returns the same layout in
    q's dtype, ``+ residual`` (added in float32 before the final cast) if given.
    """
    b, n, c, d = _check_inputs(q, k, v, num_frames, heads, residual)

    def to_heads(t: torch.Tensor) -> torch.Tensor:  # (b f) n (h d) -> b n h f d
        return t.reshape(b, num_frames, n, heads, d).permute(0, 2, 3, 1, 4).float()

    qh, kh, vh = to_heads(q), to_heads(k), to_heads(v)
    scores = torch.matmul(qh * (1.0 / math.sqrt(d)), kh.transpose(-1, -2))  # b n h f f
    out = torch.matmul(scores.softmax(dim=-1), vh)  # b n h f d
    out = out.permute(0, 3, 1, 2, 4).reshape(b * num_frames, n, c)
    if residual is not None:
        out = out + residual.float()
    return out.to(q.dtype)


# ------------------------------------------------------------------------------------------------
# launch configuration (pure Python, testable without running the kernel)
# ------------------------------------------------------------------------------------------------

def _next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


def launch_config(num_frames: int, head_dim: int, pixels: int, variant: str = "dot",
                  block_n: int | None = None, num_warps: int | None = None) -> dict:
    """Tile sizes for one program = (video, head, pixel block, query-frame block).

    Reasoning (GPU; the CPU interpreter only checks correctness):

    * The op is memory bound (arithmetic intensity ~f/2 FLOP/byte in bf16, 8-12.5 for f=16-25,
      far below an H100's ~300 ridge), so the goal is that every byte is read once and that enough
      bytes are in flight per SM; compute only has to stay off the critical path.
    * ``BLOCK_D`` = head dim rounded up to a power of two (>= 16 for ``tl.dot``); 40/80/160 are
      padded with masks (masked lanes cost registers and MMA work, not memory traffic).
    * All query frames of a program share one tile, so each k/v row is loaded once; the key frames
      are walked with an online softmax in blocks of ``BLOCK_FK`` (16 = the MMA minimum). The query
      tile is capped so that one pixel's fp32 accumulator (BLOCK_FQ x BLOCK_D) stays <= 4096 values
      (<= 128 registers/thread for a warp); longer clips (f > 64, or f > 16 at d > 128) use several
      query-frame programs that re-read k/v (hit in L2: those programs have adjacent ids).
    * ``BLOCK_N`` pixels per program: the accumulator tile BLOCK_N x BLOCK_FQ x BLOCK_D is kept at
      ~2048 fp32 values, so programs are small and many are resident per SM (their loads in flight
      are what covers HBM latency). Measured on an H200 (bf16, block_n x num_warps swept, see
      benchmarks/RESULTS.md): at SVD-XT level 0 (f=25 -> 32, d=64) 1-2 pixels with 1 warp reach
      3.8-3.9 TB/s, 93-95 % of the copy bandwidth, while 4 pixels with 4 warps (an earlier ~8192
      value tile) reached 2.8 TB/s; for f=16, d=40 -> 64, 2 pixels with 2 warps are within 2 % of
      the best. Triton's 3-D ``tl.dot`` puts the warps on the batch (pixel) dimension, so
      ``num_warps = min(4, BLOCK_N)``.
    * Heads vary fastest in the program id, then pixel blocks: concurrently running programs read
      neighbouring ``d``-wide column chunks of the same pixel rows, so partial 32-byte sectors
      (d=40 bf16 = 80 B rows) are merged in L2 instead of being fetched twice from HBM.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    lo = 16 if variant == "dot" else 1  # tl.dot needs M, N, K >= 16
    block_d = max(lo, _next_pow2(head_dim))
    fq_cap = max(lo, min(64, 4096 // block_d))
    block_fq = min(max(lo, _next_pow2(num_frames)), fq_cap)
    block_fk = 16 if variant == "dot" else 1
    if block_n is None:
        block_n = max(1, min(64, 2048 // (block_fq * block_d)))
        block_n = min(block_n, _next_pow2(max(1, pixels)))
    if block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two, got {block_n}")
    if num_warps is None:
        num_warps = min(4, block_n) if variant == "dot" else 4
    return {
        "BLOCK_N": block_n,
        "BLOCK_FQ": block_fq,
        "BLOCK_FK": block_fk,
        "BLOCK_D": block_d,
        "num_warps": num_warps,
        "q_blocks": -(-num_frames // block_fq),
    }


def grid_size(num_videos: int, heads: int, pixels: int, cfg: dict) -> int:
    """Number of programs of the 1-D grid; raises if it exceeds the CUDA grid.x limit (2**31 - 1)."""
    p_blocks = -(-pixels // cfg["BLOCK_N"])
    total = num_videos * heads * p_blocks * cfg["q_blocks"]
    if total > MAX_PROGRAMS:
        raise ValueError(f"temporal attention grid of {total} programs exceeds 2**31-1; split the batch")
    return total


def _max_offset(t: torch.Tensor) -> int:
    return sum((s - 1) * st for s, st in zip(t.shape, t.stride()) if s > 0)


# ------------------------------------------------------------------------------------------------
# Triton kernel
# ------------------------------------------------------------------------------------------------

def _temporal_attn_fwd(
    Q, K, V, R, O,
    sq0, sq1, sk0, sk1, sv0, sv1, sr0, sr1, so0, so1,
    N, HEADS, n_pblocks, qk_scale, pid_base,
    NUM_FRAMES: tl.constexpr, HEAD_DIM: tl.constexpr, Q_BLOCKS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_FQ: tl.constexpr, BLOCK_FK: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, USE_DOT: tl.constexpr, INT64: tl.constexpr, IEEE: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    # program id -> (video, pixel block, head, query-frame block), query block fastest then head
    pid = tl.program_id(0) + pid_base  # pid_base > 0 only for partial launches (tests)
    qb = pid % Q_BLOCKS
    rest = pid // Q_BLOCKS
    head = rest % HEADS
    rest = rest // HEADS
    pb = rest % n_pblocks
    video = rest // n_pblocks

    pix = pb * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    fq = qb * BLOCK_FQ + tl.arange(0, BLOCK_FQ)  # query frames (BFQ,)
    dd = tl.arange(0, BLOCK_D)
    col = head * HEAD_DIM + dd  # (BD,)
    row0 = video * NUM_FRAMES
    if INT64:
        pix = pix.to(tl.int64)
        row0 = row0.to(tl.int64)
    pix_ok = pix < N
    d_ok = dd < HEAD_DIM

    # q tile (pixel, query frame, d), loaded once in the input dtype
    q_rows = row0 + fq
    q_mask = pix_ok[:, None, None] & (fq < NUM_FRAMES)[None, :, None] & d_ok[None, None, :]
    q_offs = q_rows[None, :, None] * sq0 + pix[:, None, None] * sq1 + col[None, None, :]
    q = tl.load(Q + q_offs, mask=q_mask, other=0.0)
    if UPCAST_DOT:  # interpreter only: its tl.dot multiplies bf16 bit patterns (triton#11584)
        q = q.to(tl.float32)

    m_i = tl.full((BLOCK_N, BLOCK_FQ), float("-inf"), tl.float32)  # running max (log2 domain)
    l_i = tl.zeros((BLOCK_N, BLOCK_FQ), tl.float32)  # running denominator
    acc = tl.zeros((BLOCK_N, BLOCK_FQ, BLOCK_D), tl.float32)

    if USE_DOT:
        # key frames in blocks of BLOCK_FK; per pixel a (BFQ x BD) @ (BD x BFK) batched MMA
        for j0 in range(0, NUM_FRAMES, BLOCK_FK):
            fk = j0 + tl.arange(0, BLOCK_FK)
            k_ok = fk < NUM_FRAMES
            kv_mask = pix_ok[:, None, None] & k_ok[None, :, None] & d_ok[None, None, :]
            k_rows = row0 + fk
            k = tl.load(K + k_rows[None, :, None] * sk0 + pix[:, None, None] * sk1 + col[None, None, :],
                        mask=kv_mask, other=0.0)
            v = tl.load(V + k_rows[None, :, None] * sv0 + pix[:, None, None] * sv1 + col[None, None, :],
                        mask=kv_mask, other=0.0)
            if UPCAST_DOT:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            if IEEE:
                s = tl.dot(q, tl.permute(k, (0, 2, 1)), input_precision="ieee")
            else:
                s = tl.dot(q, tl.permute(k, (0, 2, 1)))
            s = tl.where(k_ok[None, None, :], s * qk_scale, float("-inf"))  # (BN, BFQ, BFK)
            m_new = tl.maximum(m_i, tl.max(s, 2))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, :, None])
            l_i = l_i * alpha + tl.sum(p, 2)
            p_in = p.to(V.dtype.element_ty)  # probabilities enter the second MMA in the input dtype
            if UPCAST_DOT:
                p_in = p_in.to(tl.float32)
            if IEEE:
                pv = tl.dot(p_in, v, input_precision="ieee")
            else:
                pv = tl.dot(p_in, v)
            acc = acc * alpha[:, :, None] + pv
            m_i = m_new
    else:
        # one key frame at a time on CUDA cores: s = <q, k_j> over d, rank-1 update of acc
        qf = q.to(tl.float32) * qk_scale
        kv_mask2 = pix_ok[:, None] & d_ok[None, :]
        for j in range(0, NUM_FRAMES):
            k_row = row0 + j
            k = tl.load(K + k_row * sk0 + pix[:, None] * sk1 + col[None, :], mask=kv_mask2, other=0.0)
            v = tl.load(V + k_row * sv0 + pix[:, None] * sv1 + col[None, :], mask=kv_mask2, other=0.0)
            s = tl.sum(qf * k.to(tl.float32)[:, None, :], 2)  # (BN, BFQ)
            m_new = tl.maximum(m_i, s)
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new)
            l_i = l_i * alpha + p
            acc = acc * alpha[:, :, None] + p[:, :, None] * v.to(tl.float32)[:, None, :]
            m_i = m_new

    out = acc / l_i[:, :, None]
    if HAS_RESIDUAL:
        r = tl.load(R + q_rows[None, :, None] * sr0 + pix[:, None, None] * sr1 + col[None, None, :],
                    mask=q_mask, other=0.0)
        out += r.to(tl.float32)
    o_offs = q_rows[None, :, None] * so0 + pix[:, None, None] * so1 + col[None, None, :]
    tl.store(O + o_offs, out.to(O.dtype.element_ty), mask=q_mask)


_JITTED: dict[bool, object] = {}


def _interpret_mode() -> bool:
    try:
        return bool(triton.knobs.runtime.interpret)
    except AttributeError:  # older triton without knobs
        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _kernel():
    """The jitted kernel, created on first use so that ``TRITON_INTERPRET`` is honoured even if this
    module was imported before the variable was set (triton picks the mode at decoration time)."""
    mode = _interpret_mode()
    if mode not in _JITTED:
        _JITTED[mode] = triton.jit(_temporal_attn_fwd)
    return _JITTED[mode]


def temporal_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int, heads: int,
                              residual: torch.Tensor | None = None, out: torch.Tensor | None = None, *,
                              variant: str = "dot", block_n: int | None = None,
                              num_warps: int | None = None,
                              _program_slice: tuple[int, int] | None = None,
                              _force_int64: bool = False) -> torch.Tensor:
    """Triton forward of :func:`temporal_attention_reference` (same arguments and result).

    q, k, v (and ``residual``/``out``): ``(b*f, n, heads*d)`` with any strides for the first two
    dims and a contiguous last dim (slices of a fused qkv projection work without copies). The
    output is written into ``out`` if given (q's shape and dtype; it may be ``residual`` itself for
    an in-place residual add, but must not overlap q, k or v), else into a new contiguous tensor.
    ``variant``: ``"dot"`` (tensor-core ``tl.dot`` per pixel; fp32 inputs use exact IEEE dots) or
    ``"fma"`` (CUDA-core broadcast/reduce, one key frame per step). ``block_n``/``num_warps``
    override the tile heuristic (benchmark sweeps). ``_program_slice=(start, stop)`` launches only
    those program ids of the full grid (tests: exercise ids beyond 65 535 under the slow interpreter);
    ``_force_int64`` takes the 64-bit offset path that tensors of >= 2**31 elements take.
    """
    if not HAS_TRITON:
        raise RuntimeError("temporal_attention_triton needs the `triton` package (pip install triton)")
    b, n, c, d = _check_inputs(q, k, v, num_frames, heads, residual)
    num_frames, heads = int(num_frames), int(heads)
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {q.dtype} not supported; use one of {SUPPORTED_DTYPES}")
    if num_frames > MAX_FRAMES or d > MAX_HEAD_DIM:
        raise ValueError(f"num_frames={num_frames} (max {MAX_FRAMES}) / head dim {d} (max {MAX_HEAD_DIM}) "
                         "out of range for the Triton kernel")
    interpret = _interpret_mode()
    devices = {t.device for t in (q, k, v) + tuple(x for x in (residual, out) if x is not None)}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    if q.device.type != "cuda" and not interpret:
        raise RuntimeError("temporal_attention_triton runs on CUDA tensors (or on CPU with TRITON_INTERPRET=1)")
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    elif out.shape != q.shape or out.dtype != q.dtype:
        raise ValueError(f"out must be {tuple(q.shape)} {q.dtype}, got {tuple(out.shape)} {out.dtype}")
    named = (("q", q), ("k", k), ("v", v), ("out", out)) + ((("residual", residual),) if residual is not None else ())
    for name, t in named:
        if t.stride(-1) != 1 and t.shape[-1] > 1:
            raise ValueError(f"{name} must have a contiguous last dim (stride 1), got strides {t.stride()}")
    if q.numel() == 0:
        return out

    cfg = launch_config(num_frames, d, n, variant, block_n, num_warps)
    grid = grid_size(b, heads, n, cfg)
    int64 = _force_int64 or max(_max_offset(t) for _, t in named) >= 2**31 - 1
    r = residual if residual is not None else q  # dummy pointer when unused
    start, stop = (0, grid) if _program_slice is None else _program_slice
    if not 0 <= start < stop <= grid:
        raise ValueError(f"_program_slice {_program_slice} outside the grid of {grid} programs")
    _kernel()[(stop - start,)](
        q, k, v, r, out,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        r.stride(0), r.stride(1), out.stride(0), out.stride(1),
        n, heads, -(-n // cfg["BLOCK_N"]), math.log2(math.e) / math.sqrt(d), start,
        NUM_FRAMES=num_frames, HEAD_DIM=d, Q_BLOCKS=cfg["q_blocks"],
        BLOCK_N=cfg["BLOCK_N"], BLOCK_FQ=cfg["BLOCK_FQ"], BLOCK_FK=cfg["BLOCK_FK"], BLOCK_D=cfg["BLOCK_D"],
        HAS_RESIDUAL=residual is not None, USE_DOT=variant == "dot", INT64=int64,
        IEEE=q.dtype == torch.float32, UPCAST_DOT=interpret and q.dtype == torch.bfloat16,
        num_warps=cfg["num_warps"],
    )
    return out


# ------------------------------------------------------------------------------------------------
# dispatch helpers
# ------------------------------------------------------------------------------------------------

def supports(q: torch.Tensor, num_frames: int, heads: int) -> bool:
    """True when :func:`temporal_attention_triton` can take ``q`` (and k, v of the same kind) on GPU:
    triton importable, CUDA tensor, fp16/bf16/fp32, shape ``(b*f, n, heads*d)`` with f | b*f,
    heads | channels, head dim <= 256, f <= 128, contiguous last dim."""
    if not HAS_TRITON or not isinstance(q, torch.Tensor) or q.device.type != "cuda":
        return False
    if q.dtype not in SUPPORTED_DTYPES or q.dim() != 3:
        return False
    num_frames, heads = int(num_frames), int(heads)
    rows, _, c = q.shape
    if num_frames < 1 or num_frames > MAX_FRAMES or rows % num_frames or heads < 1 or c % heads:
        return False
    if c // heads > MAX_HEAD_DIM or (q.stride(-1) != 1 and c > 1):
        return False
    if q.dtype == torch.bfloat16 and torch.cuda.get_device_capability(q.device)[0] < 8:
        return False  # bf16 tl.dot needs sm80+
    return True


def triton_temporal_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int,
                            heads: int) -> torch.Tensor | None:
    """Backend used by ``vidcore.nn.attention`` under "auto": the Triton result, or ``None`` to decline
    (no triton, not CUDA, unsupported dtype/shape/strides), in which case the caller runs SDPA."""
    if not all(supports(t, num_frames, heads) for t in (q, k, v)):
        return None
    if k.shape != q.shape or v.shape != q.shape or k.dtype != q.dtype or v.dtype != q.dtype:
        return None
    return temporal_attention_triton(q, k, v, num_frames, heads)
