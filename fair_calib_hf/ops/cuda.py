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


def register(quantize_op, gemm_op) -> None:
    """Register the compiled CUDA implementations of the two ops (no-op without CUDA kernels)."""
    if not ENABLED:
        return

    @quantize_op.register_kernel("cuda")
    def _(x, left, right, diag, clip):
        if not device_supported(x.device) or x.dtype not in OUT_DTYPES or x.shape[1] == 0:
            return reference.quantize_act_reference(x, left, right, diag, clip)
        return _C.cuda_quantize_act(x, left, right, diag, clip)

    @gemm_op.register_kernel("cuda")
    def _(x_packed, x_scale, w_packed, w_scale, bias, k, out_dtype):
        if not device_supported(x_packed.device) or out_dtype not in OUT_DTYPES:
            return reference.w4a4_gemm_reference(x_packed, x_scale, w_packed, w_scale, bias, k, out_dtype)
        return _C.cuda_w4a4_gemm(x_packed, x_scale, w_packed, w_scale, bias, out_dtype)


def int4_matmul_int32(x_packed: torch.Tensor, w_packed: torch.Tensor) -> torch.Tensor:
    """The CUDA kernels' exact int32 accumulators (for exactness checks against the reference)."""
    if not BUILT:
        raise RuntimeError("fair_calib_hf was built without its CUDA kernels")
    return _C.cuda_int4_matmul_int32(x_packed, w_packed)
