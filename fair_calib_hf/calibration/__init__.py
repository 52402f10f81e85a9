"""Calibration entry point: turn a loaded float model into a packed W4A4 model, block by block."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..architectures import get_adapter
from ..config import IMPLEMENTED_METHODS
from ..modules import W4A4Linear
from .block_loop import BlockStats, calibrate_blocks
from .data import load_calibration_samples
from .rtn import make_rtn_block_quantizer

__all__ = ["CalibrationReport", "calibrate", "check_method_implemented"]


@dataclass
class CalibrationReport:
    """What calibration did: method, samples used, per-block statistics, wall time (s)."""

    method: str
    num_samples: int
    converted_modules: list[str]
    blocks: list[BlockStats] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"method={self.method} samples={self.num_samples} converted={len(self.converted_modules)} "
                 f"linears in {self.seconds:.2f}s"]
        for b in self.blocks:
            lines.append(f"  {b.name}: relative reconstruction MSE {b.rel_mse:.3e}")
        return "\n".join(lines)


def check_method_implemented(method: str) -> None:
    """Raise ``NotImplementedError`` for planned methods that cannot calibrate yet (no silent fallback)."""
    if method not in IMPLEMENTED_METHODS:
        raise NotImplementedError(
            f"FairCalibConfig(method={method!r}) is not implemented yet in this release of fair_calib_hf; "
            f"implemented: {', '.join(IMPLEMENTED_METHODS)}"
        )


def _compute_device(config, model: nn.Module) -> torch.device:
    if config.calibration_device is not None:
        return torch.device(config.calibration_device)
    return torch.device("cuda") if torch.cuda.is_available() else model.get_input_embeddings().weight.device


def calibrate(model: nn.Module, config) -> CalibrationReport:
    """Quantize ``model`` in place according to ``config``; returns the report."""
    check_method_implemented(config.method)
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    quantize_block = make_rtn_block_quantizer(config)
    samples = load_calibration_samples(config, model)
    if samples:
        stats = calibrate_blocks(model, blocks, adapter.blocks_path, samples, quantize_block,
                                 _compute_device(config, model), chain=config.block_inputs)
    else:  # data-free RTN: nothing to measure, convert directly
        stats = []
        for index, block in enumerate(blocks):
            quantize_block(block, f"{adapter.blocks_path}.{index}", [])
    converted = [n for n, m in model.named_modules() if isinstance(m, W4A4Linear)]
    return CalibrationReport(config.method, len(samples), converted, stats, time.perf_counter() - start)
