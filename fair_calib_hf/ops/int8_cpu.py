"""``w8a8_gemm`` on the CPU: PyTorch's own int8 × int8 GEMM, and this package's kernel for a few tokens.

``torch._int_mm`` (``int8 [M, K] × int8 [K, N] → int32 [M, N]``, any shape on the CPU; oneDNN's s8 GEMM,
``gemm_api`` in ``ONEDNN_VERBOSE``) returns the exact int32 accumulators, so with the reference's fp32 epilogue
(:func:`.reference.w4a4_epilogue`) the result is bit-identical to :func:`.reference.w8a8_gemm_reference`. It reads
the weight ``[N, K]`` transposed in place (measured faster than a contiguous ``[K, N]`` copy on this project's
CPUs). With the compiled extension:

* the epilogue runs in one C++ pass in place on the accumulators (``_C.int32_epilogue_``: the same fp32 operations
  in the same order, bit-identical; the torch epilogue's passes and allocations made the W8A8 layer 40 % slower,
  10.3 ms against 7.4 ms at 4096², M = 256, one thread, on this project's Xeon);
* up to :data:`OWN_KERNEL_MAX_M` tokens, when the CPU GEMM's instruction set is AVX-512 VNNI, the package's own
  W8A8 kernel runs instead (``kernels/cpu/w8a8_avx512.cpp``: the weight rows streamed once, exact int32, the
  epilogue fused): ``torch._int_mm`` is 2–4× slower there (its packing and blocking do not pay at a few tokens;
  one thread, 4096² and the Dream-7B shapes, M ≤ 4), and faster from about 16 tokens on.

``FAIR_CALIB_BACKEND=reference`` keeps the reference.

Measured defect (torch 2.13.0 CPU): with ``K = 1`` and ``N > 1`` ``torch._int_mm`` returns wrong sums (every
``K`` from 2 to 299 was exact on random codes; ``tests/test_act8.py`` checks it); ``K <``
:data:`MIN_INT_MM_K` runs the reference (or the own kernel, at a few tokens).
"""
from __future__ import annotations

import torch

from . import reference
from .cpu import _C, FORCED_REFERENCE

ENABLED = not FORCED_REFERENCE and hasattr(torch, "_int_mm")
MIN_INT_MM_K = 2
"""Smallest ``K`` handed to ``torch._int_mm`` (its CPU kernel is wrong at ``K = 1``)."""
OWN_KERNEL_MAX_M = 8
"""Token counts up to which the package's VNNI W8A8 kernel replaces ``torch._int_mm`` (the measured crossover is
8–16 tokens on this project's Xeon with AVX-512 VNNI and AMX)."""


def int8_matmul_int32(x_q: torch.Tensor, w_int8: torch.Tensor) -> torch.Tensor:
    """Exact ``acc [M, N] = x_q [M, K] · w_int8 [N, K]ᵀ`` in int32 with ``torch._int_mm`` (CPU tensors)."""
    return torch._int_mm(x_q.contiguous(), w_int8.contiguous().t())


def own_kernel_available() -> bool:
    """Whether the package's W8A8 kernel can run now: the extension is built and the CPU GEMM's instruction set is
    AVX-512 VNNI (:func:`.cpu.set_isa` / ``FAIR_CALIB_CPU_ISA`` select it)."""
    return ENABLED and _C is not None and _C.gemm_isa() == "avx512vnni"


def own_matmul_int32(x_q: torch.Tensor, w_int8: torch.Tensor) -> torch.Tensor:
    """The package's exact int32 accumulators of ``x_q [M, K] · w_int8 [N, K]ᵀ`` (for exactness checks). Raises
    ``ValueError`` when the instruction set is not AVX-512 VNNI, ``RuntimeError`` without the extension."""
    if _C is None:
        raise RuntimeError("fair_calib_hf was installed without its native extension")
    return _C.w8a8_matmul_int32(x_q.contiguous(), w_int8.contiguous())


def register(w8a8_op) -> None:
    """Register the CPU kernel of ``w8a8_gemm`` (module docstring)."""
    if not ENABLED:
        return

    @w8a8_op.register_kernel("cpu")
    def _(x_q, x_scale, w_int8, w_scale, bias, out_dtype):
        if x_q.shape[1] > reference.MAX_W8A8_K:
            raise ValueError(f"w8a8_gemm: K={x_q.shape[1]} > {reference.MAX_W8A8_K} could overflow the int32 "
                             "accumulator")
        if x_q.shape[0] <= OWN_KERNEL_MAX_M and own_kernel_available():
            y = _C.w8a8_gemm_f32(x_q.contiguous(), x_scale, w_int8.contiguous(), w_scale.reshape(-1), bias)
            return y.to(out_dtype)
        if x_q.shape[1] < MIN_INT_MM_K:
            return reference.w8a8_gemm_reference(x_q, x_scale, w_int8, w_scale, bias, out_dtype)
        acc = int8_matmul_int32(x_q, w_int8)
        if _C is None:
            return reference.w4a4_epilogue(acc, x_scale, w_scale, bias, out_dtype)
        return _C.int32_epilogue_(acc, x_scale, w_scale.reshape(-1), bias).to(out_dtype)
