"""RTN baseline: round-to-nearest per-channel int4 weights, dynamic per-token int4 activations, no transform."""
from __future__ import annotations

from torch import nn

from ..modules import W4A4Linear
from ..targets import block_targets, set_submodule


def make_rtn_block_quantizer(config):
    """A ``quantize_block(block, block_path, inputs, targets)`` that swaps the block's target linears for RTN-packed
    ``W4A4Linear`` modules (the calibration inputs are not needed)."""

    def quantize_block(block: nn.Module, block_path: str, inputs=None, targets=None) -> dict:
        converted = 0
        for name, linear in block_targets(block, block_path, config.modules_to_not_convert):
            if isinstance(linear, W4A4Linear):
                continue
            packed = W4A4Linear.from_linear(linear, weight_clip=config.w_clip_ratio, input_clip=config.a_clip_ratio)
            set_submodule(block, name[len(block_path) + 1:], packed)
            converted += 1
        return {"converted": converted}

    return quantize_block
