"""PyTorch's own int8 × int8 GEMM for ``w8a8_gemm`` on the CPU.

``torch._int_mm`` (``int8 [M, K] × int8 [K, N] → int32 [M, N]``, any shape on the CPU) returns the exact int32
accumulators, so with the reference's fp32 epilogue (:func:`.reference.w4a4_epilogue`) the result is
bit-identical to :func:`.reference.w8a8_gemm_reference`. It reads the weight ``[N, K]`` transposed in place
(measured faster than a contiguous ``[K, N]`` copy on this project's CPUs). With the compiled extension the
epilogue runs in one C++ pass in place on the accumulators (``_C.int32_epilogue_``, the same fp32 operations in
the same order: bit-identical; the torch epilogue's three passes and allocations cost about as much as the GEMM
at M ≥ 64 on an AMX CPU). ``FAIR_CALIB_BACKEND=reference`` keeps the reference.
"""
from __future__ import annotations

import torch

from . import reference
from .cpu import _C, FORCED_REFERENCE

ENABLED = not FORCED_REFERENCE and hasattr(torch, "_int_mm")


def int8_matmul_int32(x_q: torch.Tensor, w_int8: torch.Tensor) -> torch.Tensor:
    """Exact ``acc [M, N] = x_q [M, K] · w_int8 [N, K]ᵀ`` in int32 with ``torch._int_mm`` (CPU tensors)."""
    return torch._int_mm(x_q.contiguous(), w_int8.contiguous().t())


def register(w8a8_op) -> None:
    """Register ``torch._int_mm`` + the reference epilogue as the CPU kernel of ``w8a8_gemm``."""
    if not ENABLED:
        return

    @w8a8_op.register_kernel("cpu")
    def _(x_q, x_scale, w_int8, w_scale, bias, out_dtype):
        if x_q.shape[1] > 1 << 17:
            raise ValueError(f"w8a8_gemm: K={x_q.shape[1]} > {1 << 17} could overflow the int32 accumulator")
        acc = int8_matmul_int32(x_q, w_int8)
        if _C is None:
            return reference.w4a4_epilogue(acc, x_scale, w_scale, bias, out_dtype)
        return _C.int32_epilogue_(acc, x_scale, w_scale.reshape(-1), bias).to(out_dtype)
