"""Stage II's fake quantizer as one compiled CPU kernel per direction (``kernels/cpu/fake_quant.cpp``), used by
:func:`fair_calib_hf.calibration.fake_quant.fake_quant_rows` on fp32 CPU tensors when the extension is built.

Forward (``out``, the per-row scale ``s`` and ``max|x|``) is bit-identical to the pure-torch definition
(:class:`~fair_calib_hf.calibration.fake_quant.FakeQuantRowsReference`): every step is the same IEEE operation in
the same order. The backward's elementwise steps are too; its two per-row sums (``Σ g·q`` and ``Σ gu·u/s``, the
gradient reaching the scale) are accumulated in another order than ``torch.sum`` (16 lanes, then the lanes in
order), identically on every instruction set and at any thread count (one thread per row). How far that can
move the gradients is :func:`backward_tolerance` (checked in ``tests/test_fake_quant_kernel.py``).

Off with ``FAIR_CALIB_BACKEND=reference`` (like every compiled op) or :func:`set_enabled`.
"""
from __future__ import annotations

import torch

from .cpu import FORCED_REFERENCE, _C

_enabled = _C is not None and not FORCED_REFERENCE and hasattr(_C, "fake_quant_rows_forward")


def available() -> bool:
    """Whether the compiled kernel is built and switched on."""
    return _enabled


def set_enabled(flag: bool) -> bool:
    """Use the compiled kernel (``True``, when built) or the pure-torch reference (``False``); returns the
    previous setting. ``RuntimeError`` when asked for a kernel this installation does not have."""
    global _enabled
    previous = _enabled
    if flag and (_C is None or not hasattr(_C, "fake_quant_rows_forward")):
        raise RuntimeError("fair_calib_hf was installed without its native extension: no compiled fake quantizer")
    _enabled = bool(flag)
    return previous


def usable(x: torch.Tensor, clip: torch.Tensor) -> bool:
    """Whether the kernel takes ``(x, clip)``: fp32 CPU tensors, ``x`` at least 1-D with a non-empty last dim,
    ``clip`` one value or exactly one per row (shape ``x.shape[:-1] + (1,)``)."""
    if not (_enabled and x.device.type == "cpu" and clip.device.type == "cpu" and x.dtype == torch.float32
            and clip.dtype == torch.float32 and x.dim() >= 1 and x.shape[-1] > 0):
        return False
    return clip.numel() == 1 or tuple(clip.shape) == tuple(x.shape[:-1]) + (1,)


def forward(x: torch.Tensor, clip: torch.Tensor, qmin: int, qmax: int):
    """``(out [..., K], scale [rows], amax [rows])`` for ``x [..., K]`` (see the module docstring)."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    out, scale, amax = _C.fake_quant_rows_forward(rows, clip.detach().reshape(-1).contiguous(), qmin, qmax)
    return out.view(x.shape), scale, amax


def backward(g: torch.Tensor, x: torch.Tensor, clip: torch.Tensor, scale: torch.Tensor, amax: torch.Tensor,
             qmin: int, qmax: int, need_x: bool, need_clip: bool):
    """``(grad_x [..., K] or None, per-row clip gradient [..., 1] or None)`` (not yet summed to ``clip``'s
    shape) from the upstream gradient ``g`` and the forward's ``scale`` and ``amax``."""
    k = x.shape[-1]
    gx, gc = _C.fake_quant_rows_backward(g.reshape(-1, k).contiguous(), x.reshape(-1, k).contiguous(),
                                         clip.detach().reshape(-1).contiguous(), scale, amax, qmin, qmax,
                                         need_x, need_clip)
    return (gx.view(x.shape) if need_x else None), (gc.view(tuple(x.shape[:-1]) + (1,)) if need_clip else None)


def backward_tolerance(g: torch.Tensor, x: torch.Tensor, clip: torch.Tensor, qmin: int, qmax: int):
    """Bounds on how far the kernel's gradients may be from the reference's: ``(per-row bound on the scale
    gradient gs [..., 1], its reach into grad_x [..., 1] (added only where |x| = max|x|), into the per-row clip
    gradient [..., 1])``. Two fp32 sums of ``K`` terms in different orders differ by at most
    ``2·(K−1)·u·Σ|terms|`` each (``u = 2⁻²⁴``; Higham, *Accuracy and Stability of Numerical Algorithms*, §4.2,
    both orders' error bounds added; the terms themselves are the same fp32 products in both); ``gs`` is the
    difference of the two sums, and reaches ``grad_x`` through ``clip/(qmax·#maxima)`` and the clip gradient
    through ``max|x|/qmax``. The fp32 operations after the sums round each result once more: a comparison adds a
    few ulps of the reference value on top of these bounds."""
    x, g = x.double(), g.double()
    clip = clip.double().expand(tuple(x.shape[:-1]) + (1,))
    amax = x.abs().amax(-1, keepdim=True)
    s = torch.where(clip * amax == 0, torch.ones_like(amax), clip * amax / qmax)
    u = x / s
    q = torch.clamp(torch.round(u), qmin, qmax)
    gu = g * s * (q == torch.round(u))
    k = x.shape[-1]
    unit = 2.0 ** -24
    magnitude = (g * q).abs().sum(-1, keepdim=True) + (gu * u / s).abs().sum(-1, keepdim=True)
    gs_bound = 2 * max(k - 1, 1) * unit * magnitude * 1.01
    hits = (x.abs() == amax).sum(-1, keepdim=True).clamp_min(1)
    return gs_bound, gs_bound * clip / (qmax * hits) * 1.01, gs_bound * amax / qmax * 1.01
