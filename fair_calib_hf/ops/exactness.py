"""The exactness contract of the compiled kernels against :mod:`.reference`, as one check (int4 and int8
activations).

* **GEMM:** given the packed codes and scales, bit-identical (``torch.equal``); checked directly by the tests.
* **Transform + quantization** (:func:`assert_quantize_act_close`): a kernel that sums the online transform in
  another order than the reference's torch matmuls (the fused CPU and CUDA kernels) meets the reference within

  - scales: relative difference ≤ :data:`SCALE_RTOL`;
  - codes: equal, except that a code may differ by exactly one step where the exact value ``x̃ / s`` (transform
    in float64) lies within :data:`TIE_ATOL` of a rounding tie (a half-integer) — the only place where fp32
    rounding of the sum can move a code.

  Without a transform (diagonal only, or nothing) the kernels are bit-identical and the check demands it.
"""
from __future__ import annotations

import torch

from ..packing import unpack_int4
from .reference import quantize_act_int8_reference, quantize_act_reference

SCALE_RTOL = 1e-5
"""Relative tolerance on the per-token scales ``s = clip·max|x̃|/7`` or ``/127`` (fp32 sums of ``a + b`` terms in
another order: measured ≤ 8e-7 on random inputs with factors up to 128 × 148)."""
TIE_ATOL = 1e-3
"""Distance (in units of the quantization step) to a rounding tie within which a code may differ by one."""


def assert_quantize_act_close(got: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, left=None, right=None,
                              diag=None, clip=None, bits: int = 4) -> None:
    """Check a kernel's ``(codes, scale float32 [M])`` for ``x [M, K]`` (any float dtype, any device) and the
    transform ``(left [a, a], right [b, b], diag [K])`` (each optional; ``left`` and ``right`` together) and ``clip``
    (0-d tensor or ``None``) against the reference under the contract in the module docstring. ``bits`` 4: the codes
    are packed ``uint8 [M, ceil(K/2)]`` (:func:`.reference.quantize_act_reference`); 8: ``int8 [M, K]``
    (:func:`.reference.quantize_act_int8_reference`). Raises ``ValueError`` for other ``bits`` and
    ``AssertionError`` naming the first violation (how many codes, how far from a tie, the worst scale error)."""
    if bits not in (4, 8):
        raise ValueError(f"assert_quantize_act_close: bits={bits!r}; allowed: 4, 8")
    to_cpu = (lambda t: None if t is None else t.detach().cpu())
    x, left, right, diag, clip = map(to_cpu, (x, left, right, diag, clip))
    got_codes, got_scale = got[0].cpu(), got[1].cpu()
    reference = quantize_act_reference if bits == 4 else quantize_act_int8_reference
    codes_dtype = torch.uint8 if bits == 4 else torch.int8
    ref_codes, ref_scale = reference(x, left, right, diag, clip)
    assert got_codes.shape == ref_codes.shape and got_codes.dtype == codes_dtype, \
        f"codes: got {tuple(got_codes.shape)} {got_codes.dtype}, expected {tuple(ref_codes.shape)} {codes_dtype}"
    assert got_scale.shape == ref_scale.shape and got_scale.dtype == torch.float32, \
        f"scales: got {tuple(got_scale.shape)} {got_scale.dtype}, expected {tuple(ref_scale.shape)} float32"
    if left is None:  # no reordered sums anywhere: bit-identical
        assert torch.equal(got_scale, ref_scale), "scales differ from the reference (no transform: must be equal)"
        assert torch.equal(got_codes, ref_codes), "codes differ from the reference (no transform: must be equal)"
        return
    rel = ((got_scale.double() - ref_scale.double()).abs() / ref_scale.double()).max().item()
    assert rel <= SCALE_RTOL, f"scales differ from the reference by a relative {rel:.3g} > {SCALE_RTOL}"
    k = x.shape[1]
    unpack = (lambda c: unpack_int4(c, k)) if bits == 4 else (lambda c: c)
    diff = unpack(got_codes).int() - unpack(ref_codes).int()
    if not bool((diff != 0).any()):
        return
    worst = int(diff.abs().max())
    assert worst <= 1, f"a code differs from the reference by {worst} steps (at most 1, at a rounding tie)"
    xt = x.double() * (diag.double() if diag is not None else 1.0)
    xt = xt @ torch.kron(left.double(), right.double())
    exact = xt / ref_scale.double()[:, None]
    tie_distance = ((exact.abs() - exact.abs().floor()) - 0.5).abs()
    far = (diff != 0) & (tie_distance > TIE_ATOL)
    assert not bool(far.any()), (
        f"{int(far.sum())} of {int((diff != 0).sum())} differing codes are not at a rounding tie (distance up to "
        f"{float(tie_distance[far].max()):.3g} > {TIE_ATOL} steps)")
