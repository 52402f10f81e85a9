"""The packed W4A4 format: constants, int4 pack/unpack and the symmetric quantizers.

Definitions (the contract every backend and every later issue must match):

* **int4 code**: an integer in [-8, 7].
* **Packing** (``PACK_FORMAT = "int4_s_u8_lo_even_k"``): a row of K codes becomes ``ceil(K/2)`` bytes;
  byte j holds code 2j in its low nibble and code 2j+1 in its high nibble, both as 4-bit two's
  complement. An odd K is padded with one zero code (exact: it contributes nothing to a dot product).
  This is CUTLASS ``int4b_t`` order, and QuaRot/FlatQuant's ``pack_i4`` order.
* **Weights**: per output channel, symmetric, no zero point:
  ``s_w[n] = clip[n] · max_k |W[n,k]| / 7``, ``q = clamp(round(W / s_w), -8, 7)``.
* **Activations**: per token (row of the flattened ``[M, K]`` input), symmetric, dynamic:
  ``s_x[m] = clip · max_k |x[m,k]| / 7``, ``q = clamp(round(x / s_x), -8, 7)``.
* **Zero rows**: a row whose absolute maximum is 0 gets scale 1 (FlatQuant's rule), so its codes are 0.
* **Rounding**: round half to even (``torch.round``), on ``x / s`` computed as a true fp32 division.
  Every kernel must do the same to return identical codes.

Weight-only precisions (``a_bits=16``) use the same symmetric rule with ``b``-bit codes in
``[-2^(b-1), 2^(b-1) - 1]`` and ``s = clip · absmax / (2^(b-1) - 1)``, per output channel or per **group** of
``group_size`` consecutive input channels (``s_w [N, ceil(K / group_size)]``, the last group possibly shorter):
4-bit codes packed as above, 8-bit codes stored as ``int8 [N, K]`` (:func:`quantize_weight_grouped`).
"""
from __future__ import annotations

import torch

PACK_FORMAT = "int4_s_u8_lo_even_k"
"""Name of the byte layout above; written into checkpoints and checked on load."""

QMIN, QMAX = -8, 7
"""Range of a signed int4 code."""


def packed_width(k: int) -> int:
    """Number of bytes that hold ``k`` int4 codes (``ceil(k / 2)``)."""
    return (k + 1) // 2


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack int4 codes ``[..., K]`` (any integer dtype, values in [-8, 7]) into ``uint8 [..., ceil(K/2)]``."""
    if codes.is_floating_point() or codes.is_complex():
        raise TypeError(f"pack_int4 expects integer codes, got {codes.dtype}")
    if codes.numel() and (int(codes.min()) < QMIN or int(codes.max()) > QMAX):
        raise ValueError(f"pack_int4: codes must lie in [{QMIN}, {QMAX}], got [{int(codes.min())}, {int(codes.max())}]")
    codes = codes.to(torch.int16)
    if codes.shape[-1] % 2:
        codes = torch.nn.functional.pad(codes, (0, 1))
    nibbles = codes & 0xF  # two's complement low 4 bits
    lo, hi = nibbles[..., 0::2], nibbles[..., 1::2]
    return (lo | (hi << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Unpack ``uint8 [..., B]`` into int8 codes ``[..., k]`` (``k`` defaults to ``2·B``)."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_int4 expects uint8, got {packed.dtype}")
    p = packed.to(torch.int16)
    lo, hi = p & 0xF, (p >> 4) & 0xF
    codes = torch.stack((lo, hi), dim=-1).flatten(-2)
    codes = torch.where(codes >= 8, codes - 16, codes).to(torch.int8)
    if k is not None:
        if not 2 * packed.shape[-1] - 1 <= k <= 2 * packed.shape[-1]:
            raise ValueError(f"unpack_int4: {packed.shape[-1]} bytes cannot hold {k} codes")
        codes = codes[..., :k]
    return codes


def symmetric_scale(absmax: torch.Tensor, clip: torch.Tensor | float = 1.0, qmax: int = QMAX) -> torch.Tensor:
    """fp32 scale ``clip · absmax / qmax`` (``qmax`` 7: int4), with 1 where that is 0 (all-zero rows)."""
    s = (absmax.float() * clip) / qmax
    return torch.where(s == 0, torch.ones_like(s), s)


def quantize_symmetric(x: torch.Tensor, scale: torch.Tensor, qmin: int = QMIN, qmax: int = QMAX) -> torch.Tensor:
    """int8 codes ``clamp(round(x / scale), qmin, qmax)`` (int4 by default); ``scale`` broadcasts over ``x``."""
    return torch.clamp(torch.round(x.float() / scale), qmin, qmax).to(torch.int8)


def quantize_weight_per_channel(weight: torch.Tensor, clip: torch.Tensor | float = 1.0):
    """Quantize ``W [N, K]`` per output channel.

    Returns ``(packed uint8 [N, ceil(K/2)], scale float32 [N, 1])``; ``clip`` is a scalar or ``[N, 1]``.
    """
    w = weight.detach().float()
    scale = symmetric_scale(w.abs().amax(dim=1, keepdim=True), clip)
    return pack_int4(quantize_symmetric(w, scale)), scale


def code_range(bits: int) -> tuple[int, int]:
    """``(qmin, qmax)`` of a signed symmetric ``bits``-bit code: ``(-2^(bits-1), 2^(bits-1) - 1)``."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def group_count(k: int, group_size: int | None) -> int:
    """Number of scale groups along ``K``: 1 per output channel (``group_size`` None), else ``ceil(K / group_size)``."""
    return 1 if group_size is None else -(-k // group_size)


def expand_groups(scale: torch.Tensor, k: int, group_size: int | None) -> torch.Tensor:
    """``scale [N, G]`` repeated along ``K`` to ``[N, K]`` (column ``j`` gets group ``j // group_size``)."""
    if group_size is None:
        return scale.reshape(-1, 1).expand(-1, k)
    return scale.repeat_interleave(group_size, dim=1)[:, :k]


def grouped_weight_scale(weight: torch.Tensor, bits: int, group_size: int | None,
                         clip: torch.Tensor | float = 1.0) -> torch.Tensor:
    """fp32 symmetric scales ``[N, G]`` of ``W [N, K]``: ``clip · max|W[n, group]| / qmax`` (1 for an all-zero
    group); ``clip`` is a scalar or ``[N, 1]``; ``G`` from :func:`group_count`."""
    w = weight.detach().float()
    n, k = w.shape
    g = group_count(k, group_size)
    if group_size is None:
        absmax = w.abs().amax(dim=1, keepdim=True)
    else:
        padded = torch.nn.functional.pad(w.abs(), (0, g * group_size - k))
        absmax = padded.reshape(n, g, group_size).amax(dim=2)
    return symmetric_scale(absmax, clip, code_range(bits)[1])


def quantize_to_grid(weight: torch.Tensor, scale: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    """int8 codes ``clamp(round(W / s), qmin, qmax)`` of ``W [N, K]`` on the grid ``scale [N, G]``."""
    return quantize_symmetric(weight.detach(), expand_groups(scale.float(), weight.shape[1], group_size),
                              *code_range(bits))


def store_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """The stored form of int8 codes ``[N, K]``: packed ``uint8 [N, ceil(K/2)]`` for 4 bits, ``int8 [N, K]`` for 8."""
    return pack_int4(codes) if bits == 4 else codes.to(torch.int8).contiguous()


def load_codes(stored: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of :func:`store_codes`: int8 codes ``[N, k]``."""
    return unpack_int4(stored, k) if bits == 4 else stored.to(torch.int8)


def quantize_weight_grouped(weight: torch.Tensor, bits: int = 4, group_size: int | None = None,
                            clip: torch.Tensor | float = 1.0):
    """Round-to-nearest symmetric quantization of ``W [N, K]`` with per-channel (``group_size`` None) or
    per-group scales. Returns ``(stored codes, scale float32 [N, G])`` (:func:`store_codes`). With ``bits=4``
    and no groups this is :func:`quantize_weight_per_channel` bit for bit."""
    scale = grouped_weight_scale(weight, bits, group_size, clip)
    return store_codes(quantize_to_grid(weight, scale, bits, group_size), bits), scale


def dequantize_grouped(stored: torch.Tensor, scale: torch.Tensor, bits: int, group_size: int | None,
                       in_features: int) -> torch.Tensor:
    """float32 ``W_q [N, K] = codes · s_w`` of a grouped weight (:func:`quantize_weight_grouped`)."""
    codes = load_codes(stored, bits, in_features).float()
    return codes * expand_groups(scale.float(), in_features, group_size)


def dequantize_weight(packed: torch.Tensor, scale: torch.Tensor, in_features: int) -> torch.Tensor:
    """float32 ``W_q [N, K] = codes · s_w``: the weight a packed module effectively multiplies by."""
    return dequantize_grouped(packed, scale.reshape(-1, 1), 4, None, in_features)
