"""GPTQ weight rounding (Frantar et al., 2022, arXiv 2210.17323), optionally with position-weighted Hessians.

For one linear with float weight ``W [N, K]`` (after any fitted transform is folded in) and calibration inputs
``x_t ∈ R^K`` (the inputs the packed weight multiplies: after the module's online transform, before activation
quantization), GPTQ chooses integer codes on a **fixed grid** (the scales round-to-nearest would use, clip
included: the packed format is unchanged) that minimise ``Σ_t w_t ‖(W − Q) x_t‖²``:

* ``H = 2 Σ_t w_t x_t x_tᵀ / Σ_t w_t`` (``w_t ≡ 1``: plain GPTQ). With ``gptq_position_weights="prior"`` the
  weight of a token is the Stage I position prior at its position (the prior in the Hessian; DLLMQuant's
  certainty-guided GPTQ is prior art for weighting ``H``, not for this prior);
* dead inputs (``H_jj = 0``): ``H_jj = 1`` and column ``j`` of ``W`` zeroed; damping ``H += λ I``,
  ``λ = gptq_damp · mean(diag H)`` (0.01 in every reference implementation);
* ``U = chol(H⁻¹)`` upper-triangular; columns in blocks of ``gptq_block_size`` (lazy batch updates): quantize
  column ``j``, ``err = (w_j − q_j) / U_jj``, update the block's later columns by ``err · U_{j, j+1:}``, then all
  later columns at once with the block's errors;
* act-order (``gptq_act_order``): columns in decreasing ``diag H``; the scale groups stay those of the original
  column order (static groups), so the stored layout is the same.

Within a block the linears are rounded **sequentially** by the site they read (q/k/v, then o, then gate/up,
then down, in forward order): each site's Hessian comes from a forward of the block in which the earlier sites
already hold their GPTQ codes (as GPTQ and FlatQuant's ``--gptq`` do), on the block's calibration inputs (the
``block_inputs`` chain).
"""
from __future__ import annotations

import torch
from torch import nn

from ..modules import PackedLinear
from ..packing import code_range, expand_groups, quantize_to_grid
from ..ops.reference import apply_input_transform
from .block_loop import BlockInput, block_batches, group_by_input, run_block

TARGET_ATTR = "_gptq_target"
"""Attribute a packed linear carries between packing and GPTQ: its float target weight ``[out, in]``."""


def attach_target(module: nn.Module, weight: torch.Tensor) -> None:
    """Keep ``weight`` (the float weight the packed ``module`` was rounded from, in its transformed basis) for
    :func:`gptq_block`; removed there. Not a buffer: never saved."""
    object.__setattr__(module, TARGET_ATTR, weight.detach().float().clone())


def scale_target_rows(module: nn.Module, factors: torch.Tensor) -> None:
    """Multiply the kept target's output rows by ``factors [out]`` (a row scale folded into the packed scales)."""
    target = getattr(module, TARGET_ATTR, None)
    if target is not None:
        target.mul_(factors.float().reshape(-1, 1).to(target.device))


class HessianAccumulator:
    """Accumulates ``H = 2 Σ_t w_t x_t x_tᵀ / Σ_t w_t`` (fp32) over batches of inputs ``x [..., T, K]`` with
    position weights ``w [P]`` applied to the last ``T`` positions (``None``: every token weight 1)."""

    def __init__(self, k: int, device):
        self.sum = torch.zeros(k, k, dtype=torch.float32, device=device)
        self.total = 0.0

    def add(self, x: torch.Tensor, position_weights: torch.Tensor | None) -> None:
        xs = x.float().reshape(-1, x.shape[-2], x.shape[-1])  # [B, T, K]
        t = xs.shape[1]
        w = torch.ones(t, device=xs.device) if position_weights is None else \
            position_weights.float().to(xs.device)[-t:]
        w = w.expand(xs.shape[0], t).reshape(-1)
        flat = xs.reshape(-1, xs.shape[-1])
        self.sum += (flat * w[:, None]).t() @ flat
        self.total += float(w.sum())

    def hessian(self) -> torch.Tensor:
        """``2 · Σ w x xᵀ / Σ w`` (fp32 ``[K, K]``); ``ValueError`` when nothing (or zero weight) was added."""
        if self.total <= 0:
            raise ValueError("GPTQ: no calibration tokens (or all of zero weight) reached this linear")
        return self.sum * (2.0 / self.total)


@torch.no_grad()
def gptq_round(weight: torch.Tensor, hessian: torch.Tensor, scale: torch.Tensor, bits: int,
               group_size: int | None, block_size: int = 128, damp: float = 0.01,
               act_order: bool = False) -> torch.Tensor:
    """GPTQ codes of ``weight [N, K]`` on the fixed grid ``scale [N, G]`` (fp32; per channel or per group of
    ``group_size`` columns) for the Hessian ``hessian [K, K]``: int8 ``[N, K]`` in ``[-2^(bits-1), 2^(bits-1)-1]``
    (see the module docstring for the algorithm). Raises ``torch.linalg.LinAlgError`` if the damped Hessian is not
    positive definite (raise ``gptq_damp``)."""
    qmin, qmax = code_range(bits)
    n, k = weight.shape
    w = weight.detach().float().clone()
    h = hessian.detach().double().clone()
    s = expand_groups(scale.float().to(w.device), k, group_size).contiguous()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(h), descending=True)
        w, h, s = w[:, perm], h[perm][:, perm], s[:, perm]
    h += damp * torch.mean(torch.diag(h)) * torch.eye(k, dtype=h.dtype, device=h.device)
    h_inv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    u = torch.linalg.cholesky(h_inv, upper=True).float()
    q = torch.zeros(n, k, dtype=torch.int8, device=w.device)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col, sc = w1[:, i], s[:, i1 + i]
            code = torch.clamp(torch.round(col / sc), qmin, qmax)
            q[:, i1 + i] = code.to(torch.int8)
            err = (col - code * sc) / u1[i, i]
            w1[:, i:] -= err[:, None] * u1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    if perm is not None:
        q = q[:, torch.argsort(perm)]
    return q


def _transform_of(module: PackedLinear):
    t = getattr(module, "input_transform", None)
    return (t.left, t.right, t.diag) if t is not None else (None, None, None)


def _same_transform(a: PackedLinear, b: PackedLinear) -> bool:
    ta, tb = _transform_of(a), _transform_of(b)
    return all((x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
               for x, y in zip(ta, tb))


def _site_order(block: nn.Module, modules: dict, sample: BlockInput) -> list[list[str]]:
    """The block's GPTQ targets grouped by the input they read (:func:`.block_loop.group_by_input`) and, within
    that, by their online transform (one Hessian per group), in forward order."""
    out = []
    for group in group_by_input(block, modules, sample):
        split: list[list[str]] = []
        for name in group:
            same = next((s for s in split if _same_transform(modules[s[0]], modules[name])), None)
            if same is None:
                split.append([name])
            else:
                same.append(name)
        out += split
    return out


@torch.no_grad()
def gptq_block(block: nn.Module, inputs: list[BlockInput], config, position_weights: torch.Tensor | None,
               batch: int = 1) -> dict:
    """Re-round, with GPTQ, every packed linear of ``block`` that carries a target (:func:`attach_target`), site
    by site in forward order (module docstring). ``position_weights [seq_len]`` weights each token's
    contribution to ``H`` (``None``: plain GPTQ). Returns ``{"gptq_linears": count, "gptq_weighted_error":
    {name: (GPTQ error, RTN error)}}``: ``Σ_t w_t ‖(W − Q) x_t‖²`` on the calibration inputs (``tr(ΔW H ΔWᵀ)/2``
    before damping) for both roundings, the first never larger in exact arithmetic up to GPTQ's damping."""
    modules = {name: m for name, m in block.named_modules()
               if isinstance(m, PackedLinear) and getattr(m, TARGET_ATTR, None) is not None}
    if not modules:
        return {"gptq_linears": 0}
    errors = {}
    for names in _site_order(block, modules, inputs[0]):
        first = modules[names[0]]
        acc = HessianAccumulator(first.in_features, first.weight_scale.device)

        def hook(mod, args):
            x = args[0]
            acc.add(apply_input_transform(x.reshape(-1, x.shape[-1]), *_transform_of(mod)).reshape(x.shape),
                    position_weights)

        handle = first.register_forward_pre_hook(hook)
        try:
            for inp in block_batches(inputs, batch):
                run_block(block, inp)
        finally:
            handle.remove()
        hessian = acc.hessian()
        for name in names:
            module = modules[name]
            target = getattr(module, TARGET_ATTR)
            codes = gptq_round(target, hessian, module.weight_scale, module.bits, module.group_size,
                               config.gptq_block_size, config.gptq_damp, config.gptq_act_order)
            rtn = quantize_to_grid(target, module.weight_scale, module.bits, module.group_size)
            errors[name] = (weighted_error(target, codes, module, hessian),
                            weighted_error(target, rtn, module, hessian))
            module.set_weight_codes(codes)
    for module in modules.values():
        delattr(module, TARGET_ATTR)
    return {"gptq_linears": len(modules), "gptq_weighted_error": errors}


def weighted_error(weight: torch.Tensor, codes: torch.Tensor, module: PackedLinear, hessian: torch.Tensor) -> float:
    """``tr(ΔW H ΔWᵀ) / 2 = Σ_t w_t ‖ΔW x_t‖² / Σ_t w_t`` for ``ΔW = W − codes ⊙ s`` (the weighted output
    reconstruction error of the rounding on the calibration inputs)."""
    dq = codes.float() * expand_groups(module.weight_scale.float(), weight.shape[1], module.group_size)
    delta = weight.float() - dq
    return float(((delta @ hessian) * delta).sum() / 2)

