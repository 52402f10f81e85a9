"""The packed-linear ops, each registered once with ``torch.library``.

The pure-torch reference (:mod:`.reference`) is the default implementation on every device. Compiled
kernels register per device type on top of it (``torch.library.register_kernel``) when they are built
(``fair_calib_hf._C``): the CPU kernels in :mod:`.cpu`, the CUDA kernels in :mod:`.cuda` (only in a CUDA
build of the extension; they need compute capability ≥ 8.0). :func:`active_backend` says which
implementation runs.

Ops (namespace ``fair_calib``):

* ``quantize_act_int4(x [M,K], left?, right?, diag?, clip?) -> (packed uint8 [M, ceil(K/2)], scale f32 [M])``
* ``w4a4_gemm(x_packed, x_scale, w_packed, w_scale, bias?, k, out_dtype) -> [M, N]``
* ``w4a4_gemm_prepared(x_packed, x_scale, w_prepared, w_scale, bias?, n, k, out_dtype) -> [M, N]``: the same
  GEMM on weights held in the CPU VNNI kernel's prepared layout (:func:`.cpu.prepare_weight`; CPU only)
* ``quantize_act_int8(x [M,K], left?, right?, diag?, clip?) -> (codes int8 [M, K], scale f32 [M])``: the same
  online transform, per-token symmetric int8 (``s = clip·max|x̃|/127``) for W4A8 / W8A8
* ``w4a8_gemm(x_q int8 [M,K], x_scale, w_packed uint8 [N, ceil(K/2)], w_scale, bias?, k, out_dtype) -> [M, N]``:
  int8 activations × int4 weights, exact int32 accumulation, the W4A4 epilogue
* ``w4a8_gemm_prepared(x_q, x_scale, w_prepared, w_scale, bias?, n, k, out_dtype) -> [M, N]``: the same GEMM on
  the weights in the prepared layout of :func:`.cpu.prepare_weight` (the W4A4 one: the same int4 codes; CPU only)
* ``w8a8_gemm(x_q int8 [M,K], x_scale, w_int8 [N,K], w_scale, bias?, out_dtype) -> [M, N]``: int8 × int8, exact
  int32 accumulation (``K ≤`` :data:`MAX_W8A8_K` so that it cannot overflow), the W4A4 epilogue; on the CPU it
  runs PyTorch's own ``torch._int_mm`` with a fused C++ epilogue, and this package's AVX-512 VNNI kernel at a few
  tokens (:mod:`.int8_cpu`, bit-identical)
* ``weight_only_gemm(x [M,K], w_stored, w_scale [N,G], bias?, bits, group_size, k) -> [M, N]`` in ``x.dtype``:
  weight-only 4/8-bit (reference on every device). On the CPU a :class:`~fair_calib_hf.modules.WeightOnlyLinear`
  prepared for PyTorch's own int4 kernel calls :func:`.weight_only_cpu.int4pack_linear` instead (torch's op,
  within :data:`.weight_only_cpu.INT4PACK_RTOL` of the reference); per-channel 8-bit weights at few tokens run
  torch's int8 weight-only kernel on the CPU (:func:`.weight_only_cpu.register`, the same tolerance).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..packing import packed_width
from . import cpu, cuda, int8_cpu, reference, weight_only_cpu

__all__ = ["quantize_act_int4", "w4a4_gemm", "w4a4_gemm_prepared", "quantize_act_int8", "w4a8_gemm",
           "w4a8_gemm_prepared", "w8a8_gemm",
           "weight_only_gemm", "active_backend"]

MAX_W8A8_K = reference.MAX_W8A8_K


@torch.library.custom_op("fair_calib::quantize_act_int4", mutates_args=())
def quantize_act_int4(
    x: torch.Tensor,
    left: Optional[torch.Tensor],
    right: Optional[torch.Tensor],
    diag: Optional[torch.Tensor],
    clip: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Online transform + per-token symmetric int4 quantization + packing of ``x [M, K]``."""
    return reference.quantize_act_reference(x, left, right, diag, clip)


@quantize_act_int4.register_fake
def _(x, left, right, diag, clip):
    m, k = x.shape
    return x.new_empty((m, packed_width(k)), dtype=torch.uint8), x.new_empty((m,), dtype=torch.float32)


@torch.library.custom_op("fair_calib::w4a4_gemm", mutates_args=())
def w4a4_gemm(
    x_packed: torch.Tensor,
    x_scale: torch.Tensor,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    bias: Optional[torch.Tensor],
    k: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Packed int4 activations × packed int4 weights, exact int32 accumulation, fp32 scale epilogue."""
    return reference.w4a4_gemm_reference(x_packed, x_scale, w_packed, w_scale, bias, k, out_dtype)


@w4a4_gemm.register_fake
def _(x_packed, x_scale, w_packed, w_scale, bias, k, out_dtype):
    return x_packed.new_empty((x_packed.shape[0], w_packed.shape[0]), dtype=out_dtype)


@torch.library.custom_op("fair_calib::w4a4_gemm_prepared", mutates_args=())
def w4a4_gemm_prepared(
    x_packed: torch.Tensor,
    x_scale: torch.Tensor,
    w_prepared: torch.Tensor,
    w_scale: torch.Tensor,
    bias: Optional[torch.Tensor],
    n: int,
    k: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """``w4a4_gemm`` with the weights in the prepared layout (1-D uint8 from :func:`.cpu.prepare_weight` of the
    packed ``[n, ceil(k/2)]`` codes); the result is bit-identical to ``w4a4_gemm`` on the packed codes."""
    w_packed = cpu.unprepare_weight(w_prepared, n, packed_width(k))
    return reference.w4a4_gemm_reference(x_packed, x_scale, w_packed, w_scale, bias, k, out_dtype)


@w4a4_gemm_prepared.register_fake
def _(x_packed, x_scale, w_prepared, w_scale, bias, n, k, out_dtype):
    return x_packed.new_empty((x_packed.shape[0], n), dtype=out_dtype)


@torch.library.custom_op("fair_calib::quantize_act_int8", mutates_args=())
def quantize_act_int8(
    x: torch.Tensor,
    left: Optional[torch.Tensor],
    right: Optional[torch.Tensor],
    diag: Optional[torch.Tensor],
    clip: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Online transform + per-token symmetric int8 quantization of ``x [M, K]`` (codes unpacked)."""
    return reference.quantize_act_int8_reference(x, left, right, diag, clip)


@quantize_act_int8.register_fake
def _(x, left, right, diag, clip):
    m, k = x.shape
    return x.new_empty((m, k), dtype=torch.int8), x.new_empty((m,), dtype=torch.float32)


@torch.library.custom_op("fair_calib::w4a8_gemm", mutates_args=())
def w4a8_gemm(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    bias: Optional[torch.Tensor],
    k: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """int8 activations × packed int4 weights, exact int32 accumulation, fp32 scale epilogue."""
    return reference.w4a8_gemm_reference(x_q, x_scale, w_packed, w_scale, bias, k, out_dtype)


@w4a8_gemm.register_fake
def _(x_q, x_scale, w_packed, w_scale, bias, k, out_dtype):
    return x_q.new_empty((x_q.shape[0], w_packed.shape[0]), dtype=out_dtype)


@torch.library.custom_op("fair_calib::w4a8_gemm_prepared", mutates_args=())
def w4a8_gemm_prepared(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_prepared: torch.Tensor,
    w_scale: torch.Tensor,
    bias: Optional[torch.Tensor],
    n: int,
    k: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """``w4a8_gemm`` with the weights in the prepared layout (1-D uint8 from :func:`.cpu.prepare_weight` of the
    packed ``[n, ceil(k/2)]`` codes); the result is bit-identical to ``w4a8_gemm`` on the packed codes."""
    w_packed = cpu.unprepare_weight(w_prepared, n, packed_width(k))
    return reference.w4a8_gemm_reference(x_q, x_scale, w_packed, w_scale, bias, k, out_dtype)


@w4a8_gemm_prepared.register_fake
def _(x_q, x_scale, w_prepared, w_scale, bias, n, k, out_dtype):
    return x_q.new_empty((x_q.shape[0], n), dtype=out_dtype)


@torch.library.custom_op("fair_calib::w8a8_gemm", mutates_args=())
def w8a8_gemm(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_int8: torch.Tensor,
    w_scale: torch.Tensor,
    bias: Optional[torch.Tensor],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """int8 activations × int8 weights, exact int32 accumulation, fp32 scale epilogue."""
    if x_q.shape[1] > MAX_W8A8_K:
        raise ValueError(f"w8a8_gemm: K={x_q.shape[1]} > {MAX_W8A8_K} could overflow the int32 accumulator")
    return reference.w8a8_gemm_reference(x_q, x_scale, w_int8, w_scale, bias, out_dtype)


@w8a8_gemm.register_fake
def _(x_q, x_scale, w_int8, w_scale, bias, out_dtype):
    return x_q.new_empty((x_q.shape[0], w_int8.shape[0]), dtype=out_dtype)


@torch.library.custom_op("fair_calib::weight_only_gemm", mutates_args=())
def weight_only_gemm(
    x: torch.Tensor,
    w_stored: torch.Tensor,
    w_scale: torch.Tensor,
    bias: Optional[torch.Tensor],
    bits: int,
    group_size: int,
    k: int,
) -> torch.Tensor:
    """Weight-only GEMM on stored codes (:func:`.reference.weight_only_gemm_reference`)."""
    return reference.weight_only_gemm_reference(x, w_stored, w_scale, bias, bits, group_size, k)


@weight_only_gemm.register_fake
def _(x, w_stored, w_scale, bias, bits, group_size, k):
    return x.new_empty((x.shape[0], w_stored.shape[0]))


cpu.register(quantize_act_int4, w4a4_gemm, w4a4_gemm_prepared)
cpu.register_a8(quantize_act_int8, w4a8_gemm, w4a8_gemm_prepared)
weight_only_cpu.register(weight_only_gemm)
int8_cpu.register(w8a8_gemm)
cuda.register(quantize_act_int4, w4a4_gemm)
cuda.register_a8(quantize_act_int8, w4a8_gemm, w8a8_gemm, MAX_W8A8_K)


def active_backend(device_type: str = "cpu") -> str:
    """Name of the implementation the ops run on ``device_type``: ``"avx512vnni"`` / ``"avx2"`` /
    ``"scalar"`` (compiled CPU kernels), ``"cuda-int4-mma"`` / ``"cuda-int8-mma"`` (compiled CUDA kernels on
    the current GPU) or ``"reference"`` (pure torch, exact, slow)."""
    if device_type == "cpu":
        return cpu.backend_name()
    if device_type == "cuda":
        return cuda.backend_name()
    return "reference"
