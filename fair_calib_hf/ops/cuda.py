"""Compiled CUDA kernels (``fair_calib_hf._C`` built with CUDA), registered for device type ``"cuda"`` on top
of the reference ops, the same way :mod:`.cpu` registers the CPU kernels.

* ``quantize_act_int4``: one fused kernel per token row (online Kronecker transform with the diagonal,
  absmax, per-token symmetric int4 quantization, packing). Without a transform it is bit-identical to the
  reference. With one, the fp32 transform sums in another order than torch's matmul, so the transformed
  values agree to fp32 rounding and a code can differ by one where ``x̃ / s`` sits on a rounding tie (the
  tests bound both). Kronecker factors above 256, or rows that do not fit in shared memory, run the
  reference's torch transform followed by the fused quantizer.
* ``w4a4_gemm``: ``mma.sync`` int4 (m16n8k64) on sm_80/86/89, nibbles unpacked to int8 and ``mma.sync``
  s8 on sm_90+ (Hopper has no int4 tensor cores), a split-K kernel for M ≤ 16; exact int32 accumulators
  and the reference's fp32 epilogue order, so the outputs are bit-identical to the reference.
* ``quantize_act_int8``: the same fused kernel with int8 codes (``s = clip·max|x̃|/127``), the same exactness.
* ``w4a8_gemm`` / ``w8a8_gemm``: the same GEMM kernels (one template) with int8 activations, ``mma.sync`` s8
  (m16n8k32) on every architecture; the int4 weights of W4A8 are sign-extended to int8 in registers.
  Bit-identical to the reference. ``w8a8_gemm`` runs these kernels rather than ``torch._int_mm`` (cuBLASLt:
  M > 16 and K, N multiples of 8 only, and an int32 ``[M, N]`` round trip through memory for the epilogue);
  ``python -m fair_calib_hf.bench gpu`` times both on a GPU.

GPUs below compute capability 8.0 (no integer ``mma.sync`` of these shapes) keep the reference ops.
``FAIR_CALIB_BACKEND=reference`` keeps the reference ops everywhere.
"""
from __future__ import annotations

import functools

import torch

from . import reference
from .cpu import FORCED_REFERENCE, _C

BUILT = _C is not None and bool(getattr(_C, "with_cuda", False))
"""Whether the extension was built with the CUDA kernels."""
ENABLED = BUILT and not FORCED_REFERENCE
OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def device_supported(device: torch.device | int | None = None) -> bool:
    """Whether the CUDA kernels can run on ``device`` (default: the current CUDA device)."""
    if not ENABLED or not torch.cuda.is_available():
        return False
    if isinstance(device, torch.device):
        device = device.index
    index = torch.cuda.current_device() if device is None else device
    return _capability(index) >= (8, 0)


def backend_name(device: torch.device | int | None = None) -> str:
    """``"cuda-int4-mma"`` (sm_80/86/89), ``"cuda-int8-mma"`` (sm_90+) or ``"reference"``."""
    if not device_supported(device):
        return "reference"
    index = torch.cuda.current_device() if device is None else (device.index if isinstance(device, torch.device)
                                                                  else device)
    return "cuda-int8-mma" if _capability(index) >= (9, 0) else "cuda-int4-mma"


def _quantize_kernel(compiled, fallback):
    """The CUDA kernel of an activation quantize op: ``compiled(x, left, right, diag, clip)``, or the reference
    ``fallback`` on an unsupported GPU, for an input dtype other than fp32/bf16/fp16, and for ``K = 0``."""

    def kernel(x, left, right, diag, clip):
        if not device_supported(x.device) or x.dtype not in OUT_DTYPES or x.shape[1] == 0:
            return fallback(x, left, right, diag, clip)
        return compiled(x, left, right, diag, clip)

    return kernel


def register(quantize_op, gemm_op) -> None:
    """Register the compiled CUDA implementations of the two ops (no-op without CUDA kernels)."""
    if not ENABLED:
        return

    quantize_op.register_kernel("cuda", _quantize_kernel(_C.cuda_quantize_act, reference.quantize_act_reference))

    @gemm_op.register_kernel("cuda")
    def _(x_packed, x_scale, w_packed, w_scale, bias, k, out_dtype):
        if not device_supported(x_packed.device) or out_dtype not in OUT_DTYPES:
            return reference.w4a4_gemm_reference(x_packed, x_scale, w_packed, w_scale, bias, k, out_dtype)
        return _C.cuda_w4a4_gemm(x_packed, x_scale, w_packed, w_scale, bias, out_dtype)


def register_a8(quantize_int8_op, w4a8_op, w8a8_op, max_w8a8_k: int) -> None:
    """Register the compiled CUDA implementations of the 8-bit-activation ops (no-op without CUDA kernels):
    ``quantize_act_int8``, ``w4a8_gemm`` and ``w8a8_gemm``. Each falls back to the reference on a GPU below
    compute capability 8.0, for an input or output dtype other than fp32/bf16/fp16, and for ``K = 0``;
    ``w8a8_gemm`` raises ``ValueError`` for ``K > max_w8a8_k`` (the op's int32 overflow bound), like the op."""
    if not ENABLED:
        return

    quantize_int8_op.register_kernel("cuda", _quantize_kernel(_C.cuda_quantize_act_int8,
                                                              reference.quantize_act_int8_reference))

    @w4a8_op.register_kernel("cuda")
    def _(x_q, x_scale, w_packed, w_scale, bias, k, out_dtype):
        if not device_supported(x_q.device) or out_dtype not in OUT_DTYPES or k == 0:
            return reference.w4a8_gemm_reference(x_q, x_scale, w_packed, w_scale, bias, k, out_dtype)
        return _C.cuda_a8_gemm(x_q, x_scale, w_packed, w_scale, bias, out_dtype, 4)

    @w8a8_op.register_kernel("cuda")
    def _(x_q, x_scale, w_int8, w_scale, bias, out_dtype):
        if x_q.shape[1] > max_w8a8_k:
            raise ValueError(f"w8a8_gemm: K={x_q.shape[1]} > {max_w8a8_k} could overflow the int32 accumulator")
        if not device_supported(x_q.device) or out_dtype not in OUT_DTYPES or x_q.shape[1] == 0:
            return reference.w8a8_gemm_reference(x_q, x_scale, w_int8, w_scale, bias, out_dtype)
        return _C.cuda_a8_gemm(x_q, x_scale, w_int8, w_scale, bias, out_dtype, 8)


def int4_matmul_int32(x_packed: torch.Tensor, w_packed: torch.Tensor) -> torch.Tensor:
    """The CUDA kernels' exact int32 accumulators (for exactness checks against the reference)."""
    if not BUILT:
        raise RuntimeError("fair_calib_hf was built without its CUDA kernels")
    return _C.cuda_int4_matmul_int32(x_packed, w_packed)


def a8_matmul_int32(x_q: torch.Tensor, w: torch.Tensor, w_bits: int) -> torch.Tensor:
    """The CUDA kernels' exact int32 accumulators of int8 activations ``x_q [M, K]`` × weights ``w``: packed int4
    ``uint8 [N, ceil(K/2)]`` (``w_bits`` 4, W4A8) or ``int8 [N, K]`` (8, W8A8). Raises ``RuntimeError`` without
    the CUDA kernels."""
    if not BUILT:
        raise RuntimeError("fair_calib_hf was built without its CUDA kernels")
    return _C.cuda_a8_matmul_int32(x_q, w, w_bits)
