"""QuaRot baseline: a fixed randomised Hadamard-type orthogonal transform on every quantized input (one per
site, :func:`.transforms.orthogonal_hadamard_factors`, non-power-of-two widths via Paley factors), RTN
per-channel int4 weights of ``W·(L ⊗ R)^{-T}``, optionally with a per-channel clip ratio searched on a grid
to minimise the weight quantization MSE, and dynamic per-token int4 activations."""
from __future__ import annotations

import zlib

import torch
from torch import nn

from ..packing import dequantize_weight, quantize_weight_per_channel
from ..targets import set_submodule
from .block_loop import BlockInput
from .sites import discover_sites, pack_with_transform
from .transforms import kron_apply, orthogonal_hadamard_factors

CLIP_GRID = tuple(1.0 - 0.05 * i for i in range(11))  # 1.00 .. 0.50


@torch.no_grad()
def search_weight_clip(weight: torch.Tensor) -> torch.Tensor:
    """Per output channel, the ratio in ``CLIP_GRID`` minimising ``‖W − Q(W; ratio)‖²`` (``[out, 1]``)."""
    w = weight.float()
    best_err = torch.full((w.shape[0], 1), float("inf"))
    best = torch.ones(w.shape[0], 1)
    for ratio in CLIP_GRID:
        packed, scale = quantize_weight_per_channel(w, ratio)
        err = (dequantize_weight(packed, scale, w.shape[1]) - w).pow(2).sum(1, keepdim=True).cpu()
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, ratio), best)
    return best.to(weight.device)


def make_quarot_block_quantizer(config):
    """A ``quantize_block(block, block_path, inputs, targets)`` applying QuaRot to the block's sites."""

    def quantize_block(block: nn.Module, block_path: str, inputs: list[BlockInput], targets=None) -> dict:
        if not inputs:
            raise ValueError("quarot needs one forward of the block to find its sites: pass calibration data "
                             "(a single short text is enough)")
        generator = torch.Generator().manual_seed(config.seed * 7919 + zlib.crc32(block_path.encode()))
        sites = discover_sites(block, block_path, config.modules_to_not_convert, inputs[0])
        for site in sites:
            left, right = orthogonal_hadamard_factors(site.in_features, generator)
            for name in site.names:
                linear = block.get_submodule(name)
                clip = config.w_clip_ratio
                if config.w_clip_search:
                    w = kron_apply(linear.weight.double(), torch.linalg.inv(left.double()).t(),
                                   torch.linalg.inv(right.double()).t())
                    clip = search_weight_clip(w) * config.w_clip_ratio
                packed = pack_with_transform(linear, left.to(linear.weight.device), right.to(linear.weight.device),
                                             None, False, clip, config.a_clip_ratio)
                set_submodule(block, name, packed)
        return {"sites": len(sites)}

    return quantize_block
