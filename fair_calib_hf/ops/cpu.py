"""Compiled CPU kernels (``fair_calib_hf._C``), registered on top of the reference ops when built: W4A4
(:func:`register`) and the 8-bit-activation ops (:func:`register_a8`: the int8 quantizer and the W4A8 GEMM;
``w8a8_gemm`` runs PyTorch's own ``torch._int_mm``, :mod:`.int8_cpu`).

The quantize op with a Kronecker transform runs one fused C++ kernel per token (``x ⊙ diag``, ``Lᵀ·X·R`` as two
small register-tiled fp32 GEMMs in cache, then quantization and packing); without one it multiplies by the
diagonal in torch and quantizes and packs in C++ (bit-identical to the reference). The fused transform sums in
another order than the reference's torch matmuls, so it meets the reference within the tolerance stated in
:mod:`.reference` (checked by :func:`fair_calib_hf.ops.exactness.assert_quantize_act_close`). The GEMM runs
the best int4 kernel this CPU supports (AVX-512 VNNI ``vpdpbusd``, AVX2 ``vpmaddubsw``, or scalar), chosen at
run time, with the reference's fp32 epilogue order; it is bit-exact. The int8 quantizer and the W4A8 GEMM
(int8 activations × the same int4 weights, same kernels and prepared layout) follow the same rules.

Environment: ``FAIR_CALIB_BACKEND=reference`` keeps the reference ops; ``FAIR_CALIB_CPU_ISA=avx512vnni|avx2|
scalar`` forces the instruction set of the GEMM and the fused transform (one the CPU lacks is refused with a
warning, and the best supported one is used). :func:`set_isa` does the same at run time (the tests use it to check every variant).
"""
from __future__ import annotations

import os
import warnings

import torch

from . import reference

try:
    from .. import _C
except ImportError:  # built without the native extension: the reference ops stay in place
    _C = None

FORCED_REFERENCE = os.environ.get("FAIR_CALIB_BACKEND", "").lower() == "reference"
ENABLED = _C is not None and not FORCED_REFERENCE


def backend_name() -> str:
    """``"avx512vnni"`` / ``"avx2"`` / ``"scalar"`` (the compiled GEMM's instruction set) when the compiled
    kernels are registered, else ``"reference"``."""
    return _C.gemm_isa() if ENABLED else "reference"


def supported_isas() -> list[str]:
    """Instruction sets the compiled CPU GEMM can use on this CPU, best last (empty without the extension)."""
    return list(_C.supported_isas()) if _C is not None else []


def set_isa(name: str) -> str:
    """Force the CPU GEMM's instruction set (``"auto"`` for the best supported); returns the previous one.
    Raises ``ValueError`` for an unknown name or one this CPU cannot run."""
    if _C is None:
        raise RuntimeError("fair_calib_hf was installed without its native extension")
    previous = _C.gemm_isa()
    _C.set_isa(name)
    return previous


def _apply_env_isa() -> None:
    name = os.environ.get("FAIR_CALIB_CPU_ISA", "").strip().lower()
    if not name or _C is None:
        return
    try:
        _C.set_isa(name)
    except ValueError as err:
        warnings.warn(f"fair_calib_hf: FAIR_CALIB_CPU_ISA={name!r} ignored ({err}); using {_C.gemm_isa()}",
                      stacklevel=2)


_apply_env_isa()


def prepared_layout_available() -> bool:
    """Whether :func:`prepare_weight` can run: the compiled kernels are enabled and this CPU has AVX-512 VNNI."""
    return ENABLED and "avx512vnni" in supported_isas()


def prepare_weight(w_packed: torch.Tensor) -> torch.Tensor:
    """The packed int4 weights ``uint8 [N, ceil(K/2)]`` (CPU) in the layout the AVX-512 VNNI GEMM reads directly:
    1-D ``uint8`` of ``ceil(N/64)·64 × ceil(ceil(K/2)/64)·64`` bytes, a byte permutation of the same codes (each
    nibble offset by 8) plus padding, i.e. 0.5 byte per weight plus the padding of N to 64 rows and of K to 128
    codes. Raises ``ValueError`` when this CPU has no AVX-512 VNNI, ``RuntimeError`` without the extension."""
    if _C is None:
        raise RuntimeError("fair_calib_hf was installed without its native extension")
    return _C.prepare_weight(w_packed.contiguous())


def unprepare_weight(w_prepared: torch.Tensor, n: int, packed_k: int) -> torch.Tensor:
    """Inverse of :func:`prepare_weight`: the packed ``uint8 [n, packed_k]`` codes, exactly. Raises
    ``RuntimeError`` when the size does not match ``n × packed_k`` or without the extension."""
    if _C is None:
        raise RuntimeError("fair_calib_hf was installed without its native extension")
    return _C.unprepare_weight(w_prepared, n, packed_k)


def _quantize_kernel(fused, plain):
    """The CPU kernel of an activation quantize op: with a Kronecker transform, ``fused(x, left, right, diag,
    clip)`` (the C++ transform + quantizer); without one, the diagonal in torch, then ``plain(x, clip)``."""

    def kernel(x, left, right, diag, clip):
        clip = 1.0 if clip is None else float(clip)
        if left is not None:
            return fused(x, left, right, diag, clip)
        return plain(reference.apply_input_transform(x, None, None, diag), clip)

    return kernel


def register(quantize_op, gemm_op, gemm_prepared_op) -> None:
    """Register the compiled CPU implementations of the ops (no-op without the extension)."""
    if not ENABLED:
        return

    @gemm_prepared_op.register_kernel("cpu")
    def _(x_packed, x_scale, w_prepared, w_scale, bias, n, k, out_dtype):
        y = _C.w4a4_gemm_prepared_f32(x_packed.contiguous(), x_scale, w_prepared, w_scale.reshape(-1), bias, n)
        return y.to(out_dtype)

    quantize_op.register_kernel("cpu", _quantize_kernel(_C.transform_quantize_pack, _C.quantize_pack))

    @gemm_op.register_kernel("cpu")
    def _(x_packed, x_scale, w_packed, w_scale, bias, k, out_dtype):
        y = _C.w4a4_gemm_f32(x_packed.contiguous(), x_scale, w_packed.contiguous(), w_scale.reshape(-1), bias)
        return y.to(out_dtype)


def register_a8(quantize_int8_op, w4a8_op, w4a8_prepared_op) -> None:
    """Register the compiled CPU implementations of the 8-bit-activation ops (no-op without the extension): the
    int8 quantizer (fused C++ transform with a Kronecker transform, like ``quantize_act_int4``; without one the
    diagonal in torch, then the C++ quantizer, bit-identical) and the W4A8 GEMM (the int4-weight kernels above
    with int8 activations, bit-exact), also on the prepared layout."""
    if not ENABLED:
        return

    quantize_int8_op.register_kernel("cpu", _quantize_kernel(_C.transform_quantize_int8, _C.quantize_int8))

    @w4a8_op.register_kernel("cpu")
    def _(x_q, x_scale, w_packed, w_scale, bias, k, out_dtype):
        if x_q.shape[1] != k:
            raise ValueError(f"w4a8_gemm: x_q has {x_q.shape[1]} columns, expected k={k}")
        y = _C.w4a8_gemm_f32(x_q.contiguous(), x_scale, w_packed.contiguous(), w_scale.reshape(-1), bias)
        return y.to(out_dtype)

    @w4a8_prepared_op.register_kernel("cpu")
    def _(x_q, x_scale, w_prepared, w_scale, bias, n, k, out_dtype):
        if x_q.shape[1] != k:
            raise ValueError(f"w4a8_gemm_prepared: x_q has {x_q.shape[1]} columns, expected k={k}")
        y = _C.w4a8_gemm_prepared_f32(x_q.contiguous(), x_scale, w_prepared, w_scale.reshape(-1), bias, n)
        return y.to(out_dtype)


def int8x4_matmul_int32(x_q: torch.Tensor, w_packed: torch.Tensor) -> torch.Tensor:
    """The compiled exact int32 accumulators of int8 activations ``[M, K]`` × packed int4 weights
    ``[N, ceil(K/2)]`` (W4A8), for exactness checks against the reference."""
    if _C is None:
        raise RuntimeError("fair_calib_hf was installed without its native extension")
    return _C.int8x4_matmul_int32(x_q.contiguous(), w_packed.contiguous())


def int8x4_matmul_int32_prepared(x_q: torch.Tensor, w_prepared: torch.Tensor, n: int) -> torch.Tensor:
    """:func:`int8x4_matmul_int32` on prepared weights (:func:`prepare_weight`), for exactness checks."""
    if _C is None:
        raise RuntimeError("fair_calib_hf was installed without its native extension")
    return _C.int8x4_matmul_int32_prepared(x_q.contiguous(), w_prepared, n)


def int4_matmul_int32_prepared(x_packed: torch.Tensor, w_prepared: torch.Tensor, n: int) -> torch.Tensor:
    """The compiled exact int32 accumulators on prepared weights (:func:`prepare_weight`), for exactness checks."""
    if _C is None:
        raise RuntimeError("fair_calib_hf was installed without its native extension")
    return _C.int4_matmul_int32_prepared(x_packed.contiguous(), w_prepared, n)


def int4_matmul_int32(x_packed: torch.Tensor, w_packed: torch.Tensor) -> torch.Tensor:
    """The compiled exact int32 accumulators (for exactness checks against the reference)."""
    if _C is None:
        raise RuntimeError("fair_calib_hf was installed without its native extension")
    return _C.int4_matmul_int32(x_packed.contiguous(), w_packed.contiguous())
