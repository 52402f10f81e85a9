"""Kronecker-factored input transforms: factor sizes, Hadamard-type factors, and applying ``x·(L ⊗ R)``.

``x · (L ⊗ R) = vec(Lᵀ · X · R)`` with ``X`` the row ``x`` reshaped row-major to ``[a, b]`` (``a·b = n``), so a
transform of an ``n``-wide activation costs ``2(a + b)·n`` FLOP per token instead of ``2n²``.
"""
from __future__ import annotations

import contextlib
import math

import torch

from ..cpu_threads import single_threaded
from ..ops.reference import kron_apply  # noqa: F401  (re-exported: one definition, with the op)


def kronecker_factors(n: int) -> tuple[int, int]:
    """The factor pair ``a ≤ b`` of ``n`` closest to ``√n`` (FlatQuant's rule): 4096 → 64×64, 3584 → 56×64,
    18944 → 128×148, 12288 → 96×128."""
    if n < 1:
        raise ValueError(f"kronecker_factors: n must be positive, got {n}")
    a = math.isqrt(n)
    while n % a:
        a -= 1
    return a, n // a


def transform_weight(weight: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                     diag: torch.Tensor | None = None,
                     inverses_t: tuple[torch.Tensor, torch.Tensor] | None = None,
                     apply=None) -> torch.Tensor:
    """The weight that consumes transformed inputs: ``W̃ = (W ⊘ diag)·(left ⊗ right)^{-T}``, so that
    ``((x ⊙ diag)·(left ⊗ right)) · W̃ᵀ = x Wᵀ`` in exact arithmetic. Computed in the dtype of the arguments
    (float64 when packing, fp32 with autograd while fitting). ``inverses_t``: ``(left⁻ᵀ, right⁻ᵀ)`` already
    computed (Stage II computes them once per optimizer step); default: inverted here. ``apply``: how the
    Kronecker product is applied (default :func:`kron_apply`; Stage II passes :func:`kron_apply_gemms`)."""
    w = weight / diag[None, :] if diag is not None else weight
    if inverses_t is None:
        inverses_t = (torch.linalg.inv(left).t(), torch.linalg.inv(right).t())
    return (apply or kron_apply)(w, *inverses_t)


class _KronApplyGemms(torch.autograd.Function):
    """:func:`kron_apply_gemms` with a hand-written backward whose factor gradients do not depend on the CPU
    thread count: ``∂right = Xᵀ·∂Z`` and ``∂left = Z·∂Yᵀ`` are GEMMs with a tiny output (``[b, b]``, ``[a, a]``)
    and a long inner dimension (rows × a or b), which MKL splits across threads, summing the parts in an order
    that changes with the thread count. They run on one thread (:func:`..cpu_threads.single_threaded`; they are
    a small share of a step's work), the input gradient (large output, never split) on all."""

    @staticmethod
    def forward(ctx, x, left, right):
        a, b = left.shape[0], right.shape[0]
        xm = x.reshape(-1, b)
        zt = (xm @ right).view(-1, a, b).transpose(0, 1).reshape(a, -1)  # Z = X·right, as [a, rows·b]
        ctx.save_for_backward(xm if ctx.needs_input_grad[2] else None,
                              zt if ctx.needs_input_grad[1] else None, left, right)
        ctx.shape = x.shape
        return (left.t() @ zt).view(a, -1, b).transpose(0, 1).reshape(x.shape)

    @staticmethod
    def backward(ctx, g):
        xm, zt, left, right = ctx.saved_tensors
        a, b = left.shape[0], right.shape[0]
        gy = g.reshape(-1, a, b).transpose(0, 1).reshape(a, -1)  # ∂Y as [a, rows·b]
        grad_x = grad_left = grad_right = None
        gz = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[2]:
            gz = (left @ gy).view(a, -1, b).transpose(0, 1).reshape(-1, b)  # ∂Z [rows·a, b]
        if ctx.needs_input_grad[0]:
            grad_x = (gz @ right.t()).view(ctx.shape)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            with single_threaded() if g.device.type == "cpu" else contextlib.nullcontext():
                if ctx.needs_input_grad[1]:
                    grad_left = zt @ gy.t()
                if ctx.needs_input_grad[2]:
                    grad_right = xm.t() @ gz
        return grad_x, grad_left, grad_right


def kron_apply_gemms(x: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``x [..., a·b] · (left ⊗ right)`` as two GEMMs over all rows at once: ``Z = X·right`` with every row's
    ``[a, b]`` block stacked (``[rows·a, b] @ [b, b]``), then ``leftᵀ`` applied to all of them together
    (``[a, a] @ [a, rows·b]``, two transposing copies). The same product as :func:`kron_apply` (which runs
    ``leftᵀ·X`` as many small matmuls first); only the fp32 summation order differs (agreement to about
    1e-6 relative). Used while fitting (Stage II), where it is about a third cheaper on CPU with autograd;
    packing and the kernels' reference keep :func:`kron_apply`. Differentiable in all three arguments; its
    gradients are the same bits at any CPU thread count (:class:`_KronApplyGemms`)."""
    return _KronApplyGemms.apply(x, left, right)


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, math.isqrt(q) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    """Jacobsthal matrix ``Q[i, j] = χ(j − i)`` (quadratic character mod prime ``q``)."""
    squares = {(k * k) % q for k in range(1, q)}
    chi = torch.tensor([0] + [1 if k in squares else -1 for k in range(1, q)], dtype=torch.float64)
    idx = (torch.arange(q)[None, :] - torch.arange(q)[:, None]) % q
    return chi[idx]


def _paley(m: int) -> torch.Tensor | None:
    """A Hadamard matrix of order ``m`` by Paley's constructions (I: q = m − 1 ≡ 3 mod 4; II: q = m/2 − 1 ≡ 1
    mod 4, q prime), or ``None``."""
    q = m - 1
    if _is_prime(q) and q % 4 == 3:
        s = torch.zeros(m, m, dtype=torch.float64)
        s[0, 1:], s[1:, 0] = 1, -1
        s[1:, 1:] = _jacobsthal(q)
        return s + torch.eye(m, dtype=torch.float64)
    if m % 2 == 0:
        q = m // 2 - 1
        if _is_prime(q) and q % 4 == 1:
            c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
            c[0, 1:], c[1:, 0] = 1, 1
            c[1:, 1:] = _jacobsthal(q)
            at_zero = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
            at_sign = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
            blocks = torch.where(c[:, :, None, None] == 0, at_zero, c[:, :, None, None] * at_sign)
            return blocks.permute(0, 2, 1, 3).reshape(m, m)
    return None


def hadamard(n: int) -> torch.Tensor | None:
    """A Hadamard matrix of order ``n`` (entries ±1, ``H Hᵀ = n I``) built as ``H_2^{⊗p} ⊗ H_m`` with ``n = 2^p·m``
    and ``H_m`` from Paley's constructions (or ``m = 1``), float64; ``None`` when no construction here covers
    ``n`` (e.g. n = 14: no Hadamard matrix exists)."""
    m, p = n, 0
    while m > 1 and _paley(m) is None:
        if m % 2:
            return None
        m, p = m // 2, p + 1
    core = torch.ones(1, 1, dtype=torch.float64) if m == 1 else _paley(m)
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    for _ in range(p):
        core = torch.kron(h2, core)
    return core


def hadamard_factors(n: int) -> tuple[int, int] | None:
    """The factor pair ``a ≤ b`` of ``n`` closest to ``√n`` for which both Hadamard orders are constructible."""
    for a in range(math.isqrt(n), 0, -1):
        if n % a == 0 and hadamard(a) is not None and hadamard(n // a) is not None:
            return a, n // a
    return None


def random_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random orthogonal ``n×n`` matrix (QR of a Gaussian with the signs of R's diagonal fixed), float64."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


def orthogonal_hadamard_factors(n: int, generator: torch.Generator, factors: tuple[int, int] | None = None):
    """QuaRot-style fixed orthogonal factors ``(L, R)`` for width ``n``: normalised Hadamard factors with random
    ±1 signs on ``L``'s rows (a randomised Hadamard transform, ``L ⊗ R`` orthogonal). ``factors`` fixes the
    sizes (default: :func:`hadamard_factors`, else :func:`kronecker_factors`); a factor with no Hadamard
    construction is a seeded random orthogonal matrix."""
    a, b = factors or hadamard_factors(n) or kronecker_factors(n)
    mats = []
    for k in (a, b):
        h = hadamard(k)
        mats.append(h / math.sqrt(k) if h is not None else random_orthogonal(k, generator))
    signs = torch.randint(0, 2, (a,), generator=generator).double() * 2 - 1
    return (signs[:, None] * mats[0]).float(), mats[1].float()
