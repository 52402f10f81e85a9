"""Pure-torch reference implementations of the W4A4 ops: the definition every compiled kernel must match.

* ``quantize_act_reference``: optional online transform, then per-token symmetric int4 quantization and
  packing (definitions in :mod:`fair_calib_hf.packing`).
* ``w4a4_gemm_reference``: exact int32 accumulation of int4 × int4 dot products, then the fp32 epilogue
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

from ..packing import dequantize_grouped, pack_int4, quantize_symmetric, symmetric_scale, unpack_int4

EXACT_FP32_CHUNK = 1 << 18
"""K-chunk for the exact accumulation: 2^18 products of |q| ≤ 8 give partial sums |s| ≤ 2^24, every one an
integer exactly representable in fp32, so an fp32 GEMM over one chunk is exact in any summation order."""


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


def quantize_act_reference(x, left=None, right=None, diag=None, clip=None):
    """``x [M, K]`` (any float dtype) → ``(packed uint8 [M, ceil(K/2)], scale float32 [M])``."""
    xf = apply_input_transform(x, left, right, diag)
    clip = 1.0 if clip is None else clip.float()
    scale = symmetric_scale(xf.abs().amax(dim=1), clip)
    return pack_int4(quantize_symmetric(xf, scale[:, None])), scale


def int4_matmul_int32(x_packed: torch.Tensor, w_packed: torch.Tensor, k: int) -> torch.Tensor:
    """Exact ``acc[m, n] = Σ_k qx[m, k] · qw[n, k]`` as int32 ``[M, N]`` (fp32 GEMMs over exact chunks)."""
    qx = unpack_int4(x_packed, k).float()
    qw = unpack_int4(w_packed, k).float()
    acc = torch.zeros(qx.shape[0], qw.shape[0], dtype=torch.int32, device=qx.device)
    for k0 in range(0, k, EXACT_FP32_CHUNK):
        part = qx[:, k0:k0 + EXACT_FP32_CHUNK] @ qw[:, k0:k0 + EXACT_FP32_CHUNK].t()
        acc += part.to(torch.int32)
    return acc


def w4a4_epilogue(acc, x_scale, w_scale, bias, out_dtype):
    """fp32 ``(acc · s_x[m]) · s_w[n] (+ bias[n])`` cast to ``out_dtype``."""
    y = acc.float() * x_scale.float().reshape(-1, 1) * w_scale.float().reshape(1, -1)
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def w4a4_gemm_reference(x_packed, x_scale, w_packed, w_scale, bias, k, out_dtype):
    """Reference W4A4 GEMM: ``[M, ceil(K/2)] × [N, ceil(K/2)]ᵀ → out_dtype [M, N]``."""
    return w4a4_epilogue(int4_matmul_int32(x_packed, w_packed, k), x_scale, w_scale, bias, out_dtype)


def weight_only_gemm_reference(x, w_stored, w_scale, bias, bits, group_size, k):
    """Reference weight-only GEMM: ``y = x · (codes ⊙ s_w)ᵀ (+ bias)`` computed in fp32, returned in ``x.dtype``.
    ``x [M, K]`` float; ``w_stored``: packed ``uint8 [N, ceil(K/2)]`` (4-bit) or ``int8 [N, K]`` (8-bit);
    ``w_scale`` fp32 ``[N, G]``; ``group_size`` 0 for per-channel scales."""
    w = dequantize_grouped(w_stored, w_scale, bits, group_size or None, k)
    y = x.float() @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
