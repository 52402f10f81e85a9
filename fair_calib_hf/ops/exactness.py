"""The exactness contract of the compiled W4A4 kernels against :mod:`.reference`, as one check.

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
from .reference import quantize_act_reference

SCALE_RTOL = 1e-5
"""Relative tolerance on the per-token scales ``s = clip·max|x̃|/7`` (fp32 sums of ``a + b`` terms in another
order: measured ≤ 8e-7 on random inputs with factors up to 128 × 148)."""
TIE_ATOL = 1e-3
"""Distance (in units of the quantization step) to a rounding tie within which a code may differ by one."""


def assert_quantize_act_close(got: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, left=None, right=None,
                              diag=None, clip=None) -> None:
    """Check a kernel's ``(packed uint8 [M, ceil(K/2)], scale float32 [M])`` for ``x [M, K]`` (any float dtype,
    any device) and the transform ``(left [a, a], right [b, b], diag [K])`` (each optional; ``left`` and
    ``right`` together) and ``clip`` (0-d tensor or ``None``) against :func:`.reference.quantize_act_reference`
    under the contract in the module docstring. Raises ``AssertionError`` naming the first violation (how many
    codes, how far from a tie, the worst scale error)."""
    to_cpu = (lambda t: None if t is None else t.detach().cpu())
    x, left, right, diag, clip = map(to_cpu, (x, left, right, diag, clip))
    got_packed, got_scale = got[0].cpu(), got[1].cpu()
    ref_packed, ref_scale = quantize_act_reference(x, left, right, diag, clip)
    assert got_packed.shape == ref_packed.shape and got_packed.dtype == torch.uint8, \
        f"packed codes: got {tuple(got_packed.shape)} {got_packed.dtype}, expected {tuple(ref_packed.shape)} uint8"
    assert got_scale.shape == ref_scale.shape and got_scale.dtype == torch.float32, \
        f"scales: got {tuple(got_scale.shape)} {got_scale.dtype}, expected {tuple(ref_scale.shape)} float32"
    if left is None:  # no reordered sums anywhere: bit-identical
        assert torch.equal(got_scale, ref_scale), "scales differ from the reference (no transform: must be equal)"
        assert torch.equal(got_packed, ref_packed), "codes differ from the reference (no transform: must be equal)"
        return
    rel = ((got_scale.double() - ref_scale.double()).abs() / ref_scale.double()).max().item()
    assert rel <= SCALE_RTOL, f"scales differ from the reference by a relative {rel:.3g} > {SCALE_RTOL}"
    k = x.shape[1]
    diff = unpack_int4(got_packed, k).int() - unpack_int4(ref_packed, k).int()
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
