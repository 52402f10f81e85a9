"""QuaRot baseline: a fixed randomised Hadamard-type orthogonal transform on every quantized input (one per
site, :func:`.transforms.orthogonal_hadamard_factors`, non-power-of-two widths via Paley factors), RTN
per-channel int4 weights of ``W·(L ⊗ R)^{-T}``, optionally with a per-channel clip ratio searched on a grid
to minimise the weight quantization MSE, and dynamic per-token int4 activations."""
from __future__ import annotations

import zlib

import torch
from torch import nn

from ..targets import set_submodule
from .block_loop import BlockInput
from .sites import discover_sites, pack_with_transform
from .transforms import orthogonal_hadamard_factors


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
                packed = pack_with_transform(linear, left.to(linear.weight.device), right.to(linear.weight.device),
                                             None, False, config.w_clip_ratio, config.a_clip_ratio,
                                             clip_search=config.w_clip_search,
                                             keep_target=config.weight_rounding == "gptq",
                                             module_cls=config.precision.packed_module())
                set_submodule(block, name, packed)
        return {"sites": len(sites)}

    return quantize_block
