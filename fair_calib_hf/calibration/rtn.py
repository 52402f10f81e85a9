"""No transform: round-to-nearest weights at the config's precision (W4A4 / W4A8 / W8A8: per-channel int4 or
int8 weights and dynamic per-token int4 or int8 activations; W4A16 / W8A16: weight-only, per channel or per group). Also the packing step of
``method="gptq"``, whose codes :mod:`.gptq` then re-rounds."""
from __future__ import annotations

from torch import nn

from ..modules import PackedLinear, WeightOnlyLinear
from ..targets import block_targets, set_submodule
from .gptq import attach_target


def make_rtn_block_quantizer(config):
    """A ``quantize_block(block, block_path, inputs, targets)`` that swaps the block's target linears for RTN-packed
    ``W4A4Linear`` / ``W4A8Linear`` / ``W8A8Linear`` or ``WeightOnlyLinear`` (weight-only) modules (the calibration inputs are not needed);
    with ``weight_rounding="gptq"`` each keeps its float weight for :func:`.gptq.gptq_block`."""
    precision = config.precision

    def quantize_block(block: nn.Module, block_path: str, inputs=None, targets=None) -> dict:
        converted = 0
        for name, linear in block_targets(block, block_path, config.modules_to_not_convert):
            if isinstance(linear, PackedLinear):
                continue
            if precision.weight_only:
                packed = WeightOnlyLinear.from_linear(linear, precision.w_bits, config.group_size,
                                                      weight_clip=config.w_clip_ratio)
            else:
                packed = precision.packed_module().from_linear(linear, weight_clip=config.w_clip_ratio,
                                                               input_clip=config.a_clip_ratio)
            if config.weight_rounding == "gptq":
                attach_target(packed, linear.weight)
            set_submodule(block, name[len(block_path) + 1:], packed)
            converted += 1
        return {"converted": converted}

    return quantize_block
