"""Transform sites: the quantized linears of a block grouped by the activation they read, the checkpoint
layout of their transforms, and packing a linear with its transform.

A *site* is one activation feeding one or more target linears (q/k/v read the attention-norm output;
gate/up read the MLP-norm output; o_proj and down_proj read their own). Each site gets one input transform
``x ↦ (x ⊙ d)·(L ⊗ R)``; every consumer stores its own copy of ``L`` and ``R`` (safetensors refuses shared
storage). The diagonal ``d`` is folded offline where the family's adapter says how (into the RMSNorm that
feeds the site, or into the up-projection's output rows for the down-projection); otherwise it stays online
as ``input_transform.diag``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..architectures import ModelAdapter
from ..modules import ActQuantLinear, W4A4Linear
from ..targets import block_targets
from .block_loop import BlockInput, group_by_input
from ..packing import dequantize_grouped, quantize_weight_grouped
from .gptq import attach_target
from .transforms import hadamard_factors, kronecker_factors, transform_weight

TRANSFORM_METHODS = ("quarot", "flatquant", "fair_calib")


@dataclass
class Site:
    """Linears (paths relative to the block) reading the same input activation of width ``in_features``."""

    names: list[str]
    in_features: int


def discover_sites(block: nn.Module, block_path: str, skip, sample: BlockInput) -> list[Site]:
    """Group the block's target linears by the identity of the input tensor they receive on ``sample``."""
    modules = {n[len(block_path) + 1:]: m for n, m in block_targets(block, block_path, skip)
               if isinstance(m, nn.Linear)}
    return [Site(names, modules[names[0]].in_features) for names in group_by_input(block, modules, sample)]


def diag_fold_target(adapter: ModelAdapter, rel_name: str, converted: set[str]):
    """Where the site diagonal of the converted linear ``rel_name`` folds offline: ``("norm", path)`` when
    every consumer of that norm is converted (else a float consumer would see scaled inputs),
    ``("rows", up-projection path)`` for the down-projection, or ``None`` (kept online). ``converted``:
    the block's converted linears (paths relative to the block)."""
    for norm, consumers in adapter.norm_feeds.items():
        if rel_name in consumers:
            return ("norm", norm) if set(consumers) <= converted else None
    up, down = adapter.up_feeds_down
    if rel_name == down:
        return "rows", up
    return None


def transform_layout(config, adapter: ModelAdapter, rel_name: str, in_features: int, converted: set[str]):
    """``(kronecker factors or None, online diag?)`` of a converted linear: the layout a checkpoint of
    ``config.method`` stores, so a pre-quantized reload can rebuild it exactly."""
    if config.method not in TRANSFORM_METHODS:
        return None, False
    if config.method == "quarot":
        return hadamard_factors(in_features) or kronecker_factors(in_features), False
    online = bool(config.add_diag) and diag_fold_target(adapter, rel_name, converted) is None
    return kronecker_factors(in_features), online


CLIP_GRID = tuple(1.0 - 0.05 * i for i in range(11))  # 1.00 .. 0.50


@torch.no_grad()
def search_weight_clip(weight: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """Per output channel, the ratio in ``CLIP_GRID`` minimising ``‖W − Q(W; ratio)‖²`` (``[out, 1]``) on the
    per-channel ``bits``-bit grid."""
    w = weight.float()
    best_err = torch.full((w.shape[0], 1), float("inf"))
    best = torch.ones(w.shape[0], 1)
    for ratio in CLIP_GRID:
        stored, scale = quantize_weight_grouped(w, bits, None, ratio)
        err = (dequantize_grouped(stored, scale, bits, None, w.shape[1]) - w).pow(2).sum(1, keepdim=True).cpu()
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, ratio), best)
    return best.to(weight.device)


@torch.no_grad()
def pack_with_transform(linear: nn.Linear, left: torch.Tensor, right: torch.Tensor, diag: torch.Tensor | None,
                        online_diag: bool, weight_clip, input_clip: float, clip_search: bool = False,
                        keep_target: bool = False, module_cls: type[ActQuantLinear] = W4A4Linear) -> ActQuantLinear:
    """Pack ``linear`` as a ``module_cls`` (:class:`~fair_calib_hf.modules.W4A4Linear` by default; the config's
    ``precision.packed_module()``) for inputs transformed by ``x ↦ (x ⊙ diag)·(left ⊗ right)``: the weight
    becomes ``W̃ = (W ⊘ diag)·(left ⊗ right)^{-T}`` (float64, then per-channel on the module's weight grid with
    ``weight_clip``, multiplied by the searched per-channel ratio with ``clip_search``), so that ``x̃ W̃ᵀ = x Wᵀ``
    in float. ``online_diag`` stores ``diag`` in the module; otherwise the caller folds it. ``keep_target`` keeps
    ``W̃`` on the module for GPTQ (:func:`.gptq.attach_target`)."""
    w = transform_weight(linear.weight.double(), left.double(), right.double(),
                         diag.double() if diag is not None else None)
    if clip_search:
        weight_clip = search_weight_clip(w, module_cls.bits) * weight_clip
    packed = module_cls.from_linear(linear, weight_clip=weight_clip, input_clip=input_clip, weight=w,
                                    transform=(left, right, diag if online_diag else None))
    if keep_target:
        attach_target(packed, w)
    return packed
