"""Pure-torch reference implementations of the ops: the definition every compiled kernel must match.

* ``quantize_act_reference``: optional online transform, then per-token symmetric int4 quantization and
  packing (definitions in :mod:`fair_calib_hf.packing`); ``quantize_act_int8_reference``: the same with int8
  codes (``s_x = clip·max|x̃|/127``, codes in [-128, 127], stored ``int8 [M, K]`` unpacked).
* ``w4a4_gemm_reference`` / ``w4a8_gemm_reference`` / ``w8a8_gemm_reference``: exact int32 accumulation of the
  integer dot products (int4 × int4, int8 activations × int4 weights, int8 × int8), then the fp32 epilogue
  ``y[m, n] = (acc[m, n] · s_x[m]) · s_w[n] (+ bias[n])``, evaluated in that order, stored in ``out_dtype``.

**Exactness of the compiled kernels** (CPU and CUDA) against these definitions:

* the integer GEMM and its epilogue are **bit-identical** given the packed codes and scales;
* quantization without a Kronecker transform (diagonal only, or nothing) is **bit-identical**;
* transform + quantization may sum the transform in another order (fused kernels): the scales agree to a
  relative 1e-5 and a code may differ by one step, only where the exact value ``x̃/s`` is within 1e-3 of a
  rounding tie. One check implements this contract for every test:
  :func:`fair_calib_hf.ops.exactness.assert_quantize_act_close`.
"""
from __future__ import annotations

import torch

from ..packing import (code_range, dequantize_grouped, pack_int4, quantize_symmetric, symmetric_scale,
                       unpack_int4)

EXACT_FP32_CHUNK = 1 << 18
"""K-chunk for the exact int4 × int4 accumulation: 2^18 products of |q| ≤ 8 give partial sums |s| ≤ 2^24, every
one an integer exactly representable in fp32, so an fp32 GEMM over one chunk is exact in any summation order.
Wider codes take proportionally shorter chunks (:func:`exact_chunk`)."""


MAX_W8A8_K = (1 << 17) - 1
"""Largest ``K`` for which an int32 accumulator of int8 × int8 products cannot overflow: every product is at most
``(−128)² = 2^14``, so ``K`` of them sum to at most ``K · 2^14 ≤ 2^31 − 2^14 < 2^31``; ``K = 2^17`` codes all at
−128 would reach exactly ``2^31`` (clipped activations do clamp to −128)."""


def exact_chunk(x_bits: int, w_bits: int) -> int:
    """K-chunk over which an fp32 GEMM of ``x_bits`` × ``w_bits`` signed codes is exact: the largest ``c`` with
    ``c · 2^(x_bits-1) · 2^(w_bits-1) ≤ 2^24`` (2^18 for int4 × int4, 2^14 for int8 × int4, 2^10 for int8 ×
    int8)."""
    return 1 << (24 - (x_bits - 1) - (w_bits - 1))


def kron_apply(x: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``x [..., a·b] · (left ⊗ right)`` without forming the Kronecker product: ``vec(leftᵀ · X · right)``
    with ``X`` each row reshaped row-major to ``[a, b]``."""
    a, b = left.shape[0], right.shape[0]
    return (left.t() @ x.reshape(-1, a, b) @ right).reshape(x.shape)


def apply_input_transform(x: torch.Tensor, left, right, diag) -> torch.Tensor:
    """fp32 ``x̃ = (x ⊙ diag) · (left ⊗ right)`` for ``x [M, K]``, computed as ``vec(leftᵀ · X · right)``
    with ``X`` the row ``x`` reshaped row-major to ``[a, b]``. Any of the three may be ``None`` (identity);
    ``left`` and ``right`` come together."""
    xf = x.float()
    if diag is not None:
        xf = xf * diag.float()
    if left is not None:
        xf = kron_apply(xf, left.float(), right.float())
    return xf


def quantize_act_codes(x, left=None, right=None, diag=None, clip=None, bits: int = 4):
    """``x [M, K]`` (any float dtype) → ``(codes int8 [M, K], scale float32 [M])``: the online transform, then
    per-token symmetric ``bits``-bit quantization ``s = clip·max|x̃|/qmax`` (1 for an all-zero row),
    ``clamp(round(x̃/s), qmin, qmax)`` with ``(qmin, qmax)`` from :func:`fair_calib_hf.packing.code_range`."""
    qmin, qmax = code_range(bits)
    xf = apply_input_transform(x, left, right, diag)
    clip = 1.0 if clip is None else clip.float()
    scale = symmetric_scale(xf.abs().amax(dim=1), clip, qmax)
    return quantize_symmetric(xf, scale[:, None], qmin, qmax), scale


def quantize_act_reference(x, left=None, right=None, diag=None, clip=None):
    """``x [M, K]`` (any float dtype) → ``(packed uint8 [M, ceil(K/2)], scale float32 [M])``."""
    codes, scale = quantize_act_codes(x, left, right, diag, clip, 4)
    return pack_int4(codes), scale


def quantize_act_int8_reference(x, left=None, right=None, diag=None, clip=None):
    """``x [M, K]`` (any float dtype) → ``(codes int8 [M, K], scale float32 [M])``, per-token int8."""
    return quantize_act_codes(x, left, right, diag, clip, 8)


def int_matmul_int32(qx: torch.Tensor, qw: torch.Tensor, x_bits: int, w_bits: int) -> torch.Tensor:
    """Exact ``acc[m, n] = Σ_k qx[m, k] · qw[n, k]`` as int32 ``[M, N]`` for signed codes ``qx [M, K]`` of
    ``x_bits`` and ``qw [N, K]`` of ``w_bits`` (any integer dtype): fp32 GEMMs over exact chunks
    (:func:`exact_chunk`), summed in int32."""
    qx, qw = qx.float(), qw.float()
    chunk = exact_chunk(x_bits, w_bits)
    acc = torch.zeros(qx.shape[0], qw.shape[0], dtype=torch.int32, device=qx.device)
    for k0 in range(0, qx.shape[1], chunk):
        part = qx[:, k0:k0 + chunk] @ qw[:, k0:k0 + chunk].t()
        acc += part.to(torch.int32)
    return acc


def int4_matmul_int32(x_packed: torch.Tensor, w_packed: torch.Tensor, k: int) -> torch.Tensor:
    """Exact ``acc[m, n] = Σ_k qx[m, k] · qw[n, k]`` as int32 ``[M, N]`` of packed int4 codes."""
    return int_matmul_int32(unpack_int4(x_packed, k), unpack_int4(w_packed, k), 4, 4)


def w4a4_epilogue(acc, x_scale, w_scale, bias, out_dtype):
    """fp32 ``(acc · s_x[m]) · s_w[n] (+ bias[n])`` cast to ``out_dtype``."""
    y = acc.float() * x_scale.float().reshape(-1, 1) * w_scale.float().reshape(1, -1)
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def w4a4_gemm_reference(x_packed, x_scale, w_packed, w_scale, bias, k, out_dtype):
    """Reference W4A4 GEMM: ``[M, ceil(K/2)] × [N, ceil(K/2)]ᵀ → out_dtype [M, N]``."""
    return w4a4_epilogue(int4_matmul_int32(x_packed, w_packed, k), x_scale, w_scale, bias, out_dtype)


def w4a8_gemm_reference(x_q, x_scale, w_packed, w_scale, bias, k, out_dtype):
    """Reference W4A8 GEMM: int8 activations ``x_q [M, K]`` × packed int4 weights ``[N, ceil(K/2)]``ᵀ, exact
    int32 accumulation, the W4A4 epilogue → ``out_dtype [M, N]``."""
    acc = int_matmul_int32(x_q, unpack_int4(w_packed, k), 8, 4)
    return w4a4_epilogue(acc, x_scale, w_scale, bias, out_dtype)


def w8a8_gemm_reference(x_q, x_scale, w_int8, w_scale, bias, out_dtype):
    """Reference W8A8 GEMM: int8 activations ``x_q [M, K]`` × int8 weights ``w_int8 [N, K]``ᵀ, exact int32
    accumulation, the W4A4 epilogue → ``out_dtype [M, N]``."""
    return w4a4_epilogue(int_matmul_int32(x_q, w_int8, 8, 8), x_scale, w_scale, bias, out_dtype)


def weight_only_gemm_reference(x, w_stored, w_scale, bias, bits, group_size, k):
    """Reference weight-only GEMM: ``y = x · (codes ⊙ s_w)ᵀ (+ bias)`` computed in fp32, returned in ``x.dtype``.
    ``x [M, K]`` float; ``w_stored``: packed ``uint8 [N, ceil(K/2)]`` (4-bit) or ``int8 [N, K]`` (8-bit);
    ``w_scale`` fp32 ``[N, G]``; ``group_size`` 0 for per-channel scales."""
    w = dequantize_grouped(w_stored, w_scale, bits, group_size or None, k)
    y = x.float() @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
