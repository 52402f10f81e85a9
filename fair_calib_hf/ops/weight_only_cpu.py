"""Weight-only int4 on the CPU through PyTorch's own kernel (``aten._weight_int4pack_mm_for_cpu``).

PyTorch ships a CPU int4 weight-only matmul for bf16 activations: weights converted once by
``aten._convert_weight_to_int4pack_for_cpu`` (codes ``q = c + 8`` in [0, 15]) and dequantized on the fly as
``(q − 8) · scale + zero`` with bf16 ``scales_and_zeros [K / group, N, 2]`` and a group size of 32, 64, 128 or
256. (An fp16 or fp32 input to that kernel runs 10–100× slower than bf16 on this CPU, so every input is cast to
bf16 and the result back.) This project's symmetric codes use ``zero = 0``; a per-channel scale is repeated over the largest of those
group sizes that divides ``K``.

**Tolerance against the reference** (:func:`fair_calib_hf.ops.reference.weight_only_gemm_reference`, fp32): the
kernel reads the activations and the scales in bf16 and returns bf16, so it agrees to
``|y − y_ref| ≤ INT4PACK_RTOL · max|y_ref|`` per output tensor (bf16 keeps 8 significant bits; measured here
≈ 4e-3). At more than :data:`INT4PACK_MAX_TOKENS` tokens the layer instead dequantizes the codes and runs the
reference's fp32 GEMM (PyTorch's kernel is built for decoding-sized batches); that path is bit-identical to the
reference.

8-bit per-channel weights need no conversion: ``aten._weight_int8pack_mm`` reads ``int8 [N, K]`` codes and bf16
per-channel scales directly; it is registered as the CPU kernel of the ``weight_only_gemm`` op for up to
:data:`INT8PACK_MAX_TOKENS` tokens (bf16 inside, the same tolerance), the reference above.

The prepared weight is torch's own layout; :func:`unprepare_int4` inverts it exactly when it recognises the
layout (blocks of 64, 32 or 16 output channels, the lower half of each block in the low nibbles; checked
against the stored codes when preparing), so the module can drop its own copy of the codes.
"""
from __future__ import annotations

import os

import torch

from ..packing import dequantize_grouped, pack_int4, unpack_int4

INT4PACK_RTOL = 2e-2
"""Stated tolerance of the int4pack path, relative to ``max|y_ref|`` of the output."""
INT4PACK_MAX_TOKENS = int(os.environ.get("FAIR_CALIB_INT4PACK_MAX_TOKENS", "1024"))
"""Token count up to which torch's int4 kernel runs (above it: dequantize + fp32 GEMM). Measured 2026-12-07 (2 threads,
BENCHMARKS.md, weight-only kernels): the kernel's time grows linearly with the tokens (4096²: 0.19 ms per token)
while the fallback pays a fixed ~150 ms to read the prepared layout back and dequantize before its fp32 GEMM; at
1,024 tokens the kernel still wins (190 vs 251 ms on 4096²)."""
INT8PACK_MAX_TOKENS = int(os.environ.get("FAIR_CALIB_INT8PACK_MAX_TOKENS", "512"))
"""Token count up to which torch's int8 weight-only kernel runs for W8A16 (above it: the reference, dequantize + fp32
GEMM). Measured 2026-12-07: kernel ≈ 0.2 ms per token on 4096², the reference 36 ms of dequantization plus its GEMM:
crossover near 500 tokens on 4096² and near 1,000 on 4096×12288."""
KERNEL_GROUP_SIZES = (256, 128, 64, 32)
_BLOCKS = (64, 32, 16)


def available() -> bool:
    """Whether this torch has the CPU int4 weight-only kernel (and ``FAIR_CALIB_BACKEND`` is not ``reference``)."""
    return (os.environ.get("FAIR_CALIB_BACKEND", "").lower() != "reference"
            and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
            and hasattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu"))


def int8_available() -> bool:
    """Whether this torch has the CPU int8 weight-only kernel (and ``FAIR_CALIB_BACKEND`` is not ``reference``)."""
    return os.environ.get("FAIR_CALIB_BACKEND", "").lower() != "reference" and hasattr(torch, "_weight_int8pack_mm")


WEIGHT_ALIGNMENT = 64
"""Byte alignment torch's int8 weight-only kernel needs of the weight's data (torch 2.13 on this CPU: a weight whose
data pointer is not a multiple of 16 bytes, e.g. a tensor read at an odd offset of a safetensors file, crashes the
process; 64 is the CPU allocator's own alignment)."""


def aligned(t: torch.Tensor) -> bool:
    """Whether ``t``'s data pointer is a multiple of :data:`WEIGHT_ALIGNMENT` bytes."""
    return t.data_ptr() % WEIGHT_ALIGNMENT == 0


def register(weight_only_op) -> None:
    """Register the CPU kernel of ``weight_only_gemm``: torch's int8 weight-only kernel for per-channel 8-bit
    weights at up to :data:`INT8PACK_MAX_TOKENS` tokens whose data is :func:`aligned` (loading realigns them,
    :meth:`~fair_calib_hf.modules.WeightOnlyLinear.prepare_cpu_layout`), the reference otherwise (no-op without the
    kernel)."""
    if not int8_available():
        return
    from . import reference

    @weight_only_op.register_kernel("cpu")
    def _(x, w_stored, w_scale, bias, bits, group_size, k):
        if bits != 8 or group_size or x.shape[0] > INT8PACK_MAX_TOKENS or not aligned(w_stored):
            return reference.weight_only_gemm_reference(x, w_stored, w_scale, bias, bits, group_size, k)
        y = torch._weight_int8pack_mm(x.to(torch.bfloat16).contiguous(), w_stored.contiguous(),
                                      w_scale.reshape(-1).to(torch.bfloat16)).float()
        if bias is not None:
            y = y + bias.float()
        return y.to(x.dtype)


def kernel_group_size(k: int, group_size: int | None) -> int | None:
    """The group size handed to torch's kernel: ``group_size`` when it divides ``k``; per channel, the largest
    of 256/128/64/32 dividing ``k``; ``None`` when the kernel cannot take this shape."""
    if group_size is not None:
        return group_size if group_size in KERNEL_GROUP_SIZES and k % group_size == 0 else None
    return next((g for g in KERNEL_GROUP_SIZES if k % g == 0), None)


def _guess_codes(prepared: torch.Tensor, n: int, k: int, block: int) -> torch.Tensor:
    """The codes ``int8 [n, k]`` of ``prepared`` read as blocks of ``block`` output channels."""
    half = block // 2
    p = prepared.reshape(n // block, k, half).to(torch.int16)
    lo, hi = p & 0xF, p >> 4
    q = torch.cat((lo, hi), dim=2).permute(0, 2, 1).reshape(n, k)
    return (q - 8).to(torch.int8)


def prepare_int4(weight_packed: torch.Tensor, weight_scale: torch.Tensor, k: int, group_size: int | None):
    """``(prepared uint8, scales_and_zeros bf16 [K/g, N, 2])`` of the packed int4 codes ``uint8 [N, ceil(K/2)]``
    and fp32 scales ``[N, G]``, or ``None`` when the kernel is unavailable or cannot take the shape (``N`` not a
    multiple of 16, no usable group size) or when :func:`unprepare_int4` would not reproduce the codes exactly
    (checked here)."""
    n = weight_packed.shape[0]
    g = kernel_group_size(k, group_size)
    if not available() or g is None or n % 16 or weight_packed.device.type != "cpu":
        return None
    codes = unpack_int4(weight_packed, k)
    try:
        prepared = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32) + 8, 1)
    except RuntimeError:
        return None
    scale = weight_scale.float()
    if group_size is None:
        scale = scale.reshape(n, 1).expand(n, k // g)
    sz = torch.stack((scale.t(), torch.zeros_like(scale.t())), dim=-1).to(torch.bfloat16).contiguous()
    block = _layout_block(prepared, codes, n, k)
    if block is None:  # a layout this release cannot read back: keep the stored codes and the reference path
        return None
    _LAYOUT_CACHE[(n, k)] = block
    return prepared, sz


def _layout_block(prepared, codes, n, k):
    for block in _BLOCKS:
        if n % block == 0 and prepared.numel() * 2 == n * k and torch.equal(_guess_codes(prepared, n, k, block), codes):
            return block
    return None


_LAYOUT_CACHE: dict = {}


def unprepare_int4(prepared: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The packed int4 codes ``uint8 [n, ceil(k/2)]`` of a weight prepared by :func:`prepare_int4` (exact; only
    called when that reported the layout invertible)."""
    block = _LAYOUT_CACHE.get((n, k))
    if block is None:  # the layout torch used for this shape: probe once with known codes
        probe = ((torch.arange(n * k).reshape(n, k) * 7 + torch.arange(n)[:, None]) % 16 - 8).to(torch.int32)
        probe_prepared = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe + 8, 1)
        block = _layout_block(probe_prepared, probe.to(torch.int8), n, k)
        if block is None:
            raise RuntimeError(f"unprepare_int4: torch's int4 layout for [{n}, {k}] is not one this release inverts")
        _LAYOUT_CACHE[(n, k)] = block
    return pack_int4(_guess_codes(prepared, n, k, block))


def int4pack_linear(x: torch.Tensor, prepared: torch.Tensor, scales_and_zeros: torch.Tensor,
                    weight_scale: torch.Tensor, bias: torch.Tensor | None, n: int, k: int,
                    group_size: int | None) -> torch.Tensor:
    """``x [M, K]`` (fp32/bf16/fp16) times a prepared int4 weight → ``[M, N]`` in ``x.dtype``: torch's kernel (bf16
    inside) for ``M ≤`` :data:`INT4PACK_MAX_TOKENS`, else dequantize + the reference's fp32 GEMM."""
    if x.shape[0] <= INT4PACK_MAX_TOKENS:
        g = kernel_group_size(k, group_size)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16).contiguous(), prepared, g,
                                                       scales_and_zeros).float()
    else:
        w = dequantize_grouped(unprepare_int4(prepared, n, k), weight_scale, 4, group_size, k)
        y = x.float() @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
