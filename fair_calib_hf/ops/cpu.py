"""Compiled CPU kernels (``fair_calib_hf._C``), registered on top of the reference ops when built.

The fused quantize op applies the input transform with the same torch code as the reference (floating
point, so the codes are identical given the same transformed input) and quantizes/packs in C++. The GEMM
runs the AVX2 int4 kernel (scalar fallback without AVX2) with the reference's fp32 epilogue order.
``FAIR_CALIB_BACKEND=reference`` in the environment keeps the reference ops.
"""
from __future__ import annotations

import os

import torch

from . import reference

try:
    from .. import _C
except ImportError:  # built without the native extension: the reference ops stay in place
    _C = None

FORCED_REFERENCE = os.environ.get("FAIR_CALIB_BACKEND", "").lower() == "reference"
ENABLED = _C is not None and not FORCED_REFERENCE


def backend_name() -> str:
    """``"avx2"`` / ``"scalar"`` when the compiled kernels are registered, else ``"reference"``."""
    return _C.gemm_isa() if ENABLED else "reference"


def register(quantize_op, gemm_op) -> None:
    """Register the compiled CPU implementations of the two ops (no-op without the extension)."""
    if not ENABLED:
        return

    @quantize_op.register_kernel("cpu")
    def _(x, left, right, diag, clip):
        xf = reference.apply_input_transform(x, left, right, diag)
        return _C.quantize_pack(xf, 1.0 if clip is None else float(clip))

    @gemm_op.register_kernel("cpu")
    def _(x_packed, x_scale, w_packed, w_scale, bias, k, out_dtype):
        y = _C.w4a4_gemm_f32(x_packed.contiguous(), x_scale, w_packed.contiguous(), w_scale.reshape(-1), bias)
        return y.to(out_dtype)


def int4_matmul_int32(x_packed: torch.Tensor, w_packed: torch.Tensor) -> torch.Tensor:
    """The compiled exact int32 accumulators (for exactness checks against the reference)."""
    if _C is None:
        raise RuntimeError("fair_calib_hf was installed without its native extension")
    return _C.int4_matmul_int32(x_packed.contiguous(), w_packed.contiguous())
