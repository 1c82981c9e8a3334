"""bfloat16 models on CPUs without native bfloat16 arithmetic: matmuls and convolutions computed in float32.

On x86 CPUs without ``avx512_bf16`` / AMX (AVX2-only machines, many AMD EPYC and older Xeon), PyTorch has no
fast bf16 kernel for ``linear`` / ``conv``: oneDNN's bf16 path is switched off and the ops fall back to
reference loops (``aten::_slow_conv2d_forward``, ``slow_conv3d_forward``, a scalar bf16 gemm) that run 10-50x
slower than the float32 kernels on the same tensors. Those fallbacks already multiply bf16 values and
accumulate in float32, rounding the result to bf16 once; so computing the same op as
``op(x.float(), w.float(), b.float()).bfloat16()`` with the fast float32 kernels gives the same value up to the
order of the float32 accumulation (then one bf16 rounding): the outputs stay bf16, the weights stay bf16 in
memory (each call converts the weights it uses), and only the arithmetic moves to float32.

:func:`fp32_compute` decorates a model's entry points (``forward``, ``encode``, ``decode``): when the model
computes in bf16 (``model.dtype``: its weights, or the compute dtype of fp8-stored weights) on the CPU and the CPU
lacks native bf16 (:func:`emulated_bf16`), the call runs under a ``TorchFunctionMode`` that does that for ``linear``, ``conv1d/2d/3d`` and the matmul family. Anything else
(GPU, float32/float16 models, CPUs with native bf16) runs exactly as before. ``VIDCORE_CPU_BF16_FP32_COMPUTE``
= ``0`` / ``1`` forces it off / on (default: on where the CPU lacks native bf16).
"""

from __future__ import annotations

import functools
import os
import threading

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_FUNCS = frozenset({F.linear, F.conv1d, F.conv2d, F.conv3d, torch.matmul, torch.mm, torch.bmm, torch.addmm,
                    torch.baddbmm, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.mm, torch.Tensor.bmm})


@functools.cache
def _native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True  # unknown: leave the computation alone


def emulated_bf16() -> bool:
    """True when bf16 matmuls / convolutions on this CPU would run on PyTorch's slow reference kernels (or
    ``VIDCORE_CPU_BF16_FP32_COMPUTE=1``); ``VIDCORE_CPU_BF16_FP32_COMPUTE=0`` makes it False."""
    env = os.environ.get("VIDCORE_CPU_BF16_FP32_COMPUTE", "")
    if env in ("0", "1"):
        return env == "1"
    return not _native_bf16()


def _up(a):
    return a.float() if isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 else a


class Float32Compute(TorchFunctionMode):
    """Runs bf16 CPU ``linear`` / ``conv*`` / matmuls as float32 ops on upcast operands, result rounded to bf16."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FUNCS and args:
            x = args[0]
            if isinstance(x, torch.Tensor) and x.dtype == torch.bfloat16 and x.device.type == "cpu":
                out = func(*[_up(a) for a in args], **{k: _up(v) for k, v in kwargs.items()})
                return out.to(torch.bfloat16)
        return func(*args, **kwargs)


_state = threading.local()  # .active: a decorated call is running on this thread


def fp32_compute(method):
    """Decorator for a model method: run it under :class:`Float32Compute` when the model is bf16 on a CPU without
    native bf16 (see the module docstring); otherwise call it unchanged."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if torch.compiler.is_compiling() or getattr(_state, "active", False):
            return method(self, *args, **kwargs)
        p = next(self.parameters(), None)
        if p is None or self.dtype != torch.bfloat16 or p.device.type != "cpu" or not emulated_bf16():
            return method(self, *args, **kwargs)
        _state.active = True
        try:
            with Float32Compute():
                return method(self, *args, **kwargs)
        finally:
            _state.active = False

    return wrapper
