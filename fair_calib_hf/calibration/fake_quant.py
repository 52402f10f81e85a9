"""Stage II's fake quantizer: symmetric per-row quantize-dequantize with straight-through rounding.

:func:`fake_quant_rows` is the one entry point. On fp32 CPU tensors with the native extension built it runs the
fused kernel (:mod:`fair_calib_hf.ops.fake_quant_cpu`: one C++ pass forward, two backward, four values saved
per row instead of seven full-size tensors); everywhere else the pure-torch reference
(:class:`FakeQuantRowsReference`), which defines it.
"""
from __future__ import annotations

import torch

from ..ops import fake_quant_cpu
from ..packing import QMAX, QMIN, code_range


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round half to even forward, identity gradient."""
    return (torch.round(x) - x).detach() + x


class FakeQuantRowsReference(torch.autograd.Function):
    """:func:`fake_quant_rows` as one autograd node, in pure torch (the definition the compiled kernel is checked
    against). The forward is the plain expression; the backward is the gradient autograd derives for it with
    :func:`ste_round` as the rounding, written out operation by operation in the same floating-point order (each
    node's formula from torch's ``derivatives.yaml``: ``abs``, ``amax`` (gradient shared evenly among tied
    maxima), ``mul``, ``div``, ``where``, ``clamp`` (gradient where ``QMIN ≤ r ≤ QMAX``)), so gradients equal the
    generic graph's bit for bit (up to the sign of a zero), while running a third of its kernels, no boolean
    masks and a single graph node."""

    @staticmethod
    def forward(ctx, x, clip, qmin=QMIN, qmax=QMAX):
        a = x.abs()
        m = a.amax(-1, keepdim=True)
        s0 = clip * m / qmax
        zero = s0 == 0
        s = torch.where(zero, 1.0, s0)
        u = x / s
        # ste_round's forward value (round(u) − u) + u is exactly round(u), with -0 turned into +0
        r = torch.round(u) + 0.0
        c = torch.clamp(r, qmin, qmax)
        ctx.qmax = qmax
        ctx.save_for_backward(x, clip, a, m, zero, s, u, r, c)
        return c * s

    @staticmethod
    def backward(ctx, g):
        x, clip, a, m, zero, s, u, r, c = ctx.saved_tensors
        # Masks are built as 0/1 floats (torch.eq into a float tensor): boolean masks and where() run several
        # times slower on CPU. Multiplying by a 0/1 mask equals autograd's where(mask, ·, 0) except that a
        # masked-out zero may be −0 instead of +0 (no later operation divides by a gradient).
        # out = c·s; clamp: gradient where QMIN ≤ r ≤ QMAX (⇔ c == r); STE: r → u
        gu = (g * s) * torch.eq(c, r, out=torch.empty_like(c))
        # s from out = c·s and from u = x/s (autograd: −gu·((x/s)/s), summed; negating the sum is exact)
        gs = (g * c).sum(-1, keepdim=True) + -(gu * (u / s)).sum(-1, keepdim=True)
        gt1 = torch.where(zero, 0.0, gs) / ctx.qmax  # s = where(s0 == 0, 1, s0); s0 = t1 / qmax
        grad_clip = (gt1 * m).sum_to_size(clip.shape) if ctx.needs_input_grad[1] else None  # t1 = clip · m
        grad_x = None
        if ctx.needs_input_grad[0]:
            # m = amax(|x|): shared evenly among the row's maxima, times sgn(x); the products with
            # hit ∈ {0, 1} and sign ∈ {0, ±1} are exact, so fusing them into one addcmul rounds the same
            hit = torch.eq(a, m, out=torch.empty_like(a))
            grad_x = torch.addcmul(gu / s, (gt1 * clip) / hit.sum(-1, keepdim=True), hit * x.sign())
        return grad_x, grad_clip, None, None


class FakeQuantRowsFused(torch.autograd.Function):
    """:func:`fake_quant_rows` on the compiled CPU kernel (:mod:`fair_calib_hf.ops.fake_quant_cpu`): the same
    forward bit for bit; the same gradients up to the order of two per-row sums
    (:func:`~fair_calib_hf.ops.fake_quant_cpu.backward_tolerance`). Saves ``x``, ``clip`` and two floats per
    row."""

    @staticmethod
    def forward(ctx, x, clip, qmin=QMIN, qmax=QMAX):
        out, scale, amax = fake_quant_cpu.forward(x, clip, qmin, qmax)
        ctx.qmin, ctx.qmax = qmin, qmax
        ctx.save_for_backward(x, clip, scale, amax)
        return out

    @staticmethod
    def backward(ctx, g):
        x, clip, scale, amax = ctx.saved_tensors
        grad_x, per_row = fake_quant_cpu.backward(g, x, clip, scale, amax, ctx.qmin, ctx.qmax,
                                                  ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        grad_clip = per_row.sum_to_size(clip.shape) if per_row is not None else None
        return grad_x, grad_clip, None, None


def fake_quant_rows(x: torch.Tensor, clip: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """Symmetric ``bits``-bit quantize-dequantize per row (last dim) with straight-through rounding:
    ``s = clip·max|x|/qmax`` (1 for zero rows), ``clamp(round(x/s), qmin, qmax)·s`` with ``(qmin, qmax)`` from
    :func:`fair_calib_hf.packing.code_range` ((−8, 7) for int4, (−128, 127) for int8). ``x [..., K]`` float;
    ``clip`` a 0-dim tensor or one broadcastable to ``[..., 1]`` (e.g. ``[rows, 1]``); same dtype as ``x``.
    Gradients reach ``x`` (STE: through the rounding, zero where clamped, and through the scale's ``max|x|``)
    and ``clip``. One autograd node: the compiled kernel (:class:`FakeQuantRowsFused`) for fp32 CPU tensors when
    built, else :class:`FakeQuantRowsReference`, bit-identical to the plain expression with :func:`ste_round`
    (gradients up to the sign of a zero)."""
    qmin, qmax = code_range(bits)
    if fake_quant_cpu.usable(x, clip):
        return FakeQuantRowsFused.apply(x, clip, qmin, qmax)
    return FakeQuantRowsReference.apply(x, clip, qmin, qmax)
