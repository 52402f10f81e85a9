"""Block-by-block calibration driver.

1. Capture the inputs of block 0 (positional args and kwargs, one entry per calibration sample) with a
   forward pre-hook that stops the forward there.
2. For each block in order: move it to the compute device, compute its full-precision outputs, let the
   method quantize it in place (``quantize_block``), measure the relative reconstruction error of the
   quantized block on the same inputs, choose the next block's inputs (FP or quantized chain), move the
   block back.

Peak memory: one block on the compute device, plus this block's inputs and outputs for all samples.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from transformers.utils import logging as hf_logging


class _StopForward(Exception):
    """Raised by the capture hook to end the forward at block 0."""


def move_to(obj: Any, device) -> Any:
    """Recursively move tensors inside tuples, lists and dicts to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(move_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [move_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    return obj


@dataclass
class BlockInput:
    """One sample's call of a block: ``block(*args, **kwargs)``; ``args[0]`` or ``kwargs["hidden_states"]``
    is the hidden state."""

    args: tuple
    kwargs: dict

    @property
    def hidden(self) -> torch.Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def with_hidden(self, hidden: torch.Tensor) -> "BlockInput":
        if self.args:
            return BlockInput((hidden,) + tuple(self.args[1:]), self.kwargs)
        return BlockInput(self.args, {**self.kwargs, "hidden_states": hidden})


def run_block(block: nn.Module, inp: BlockInput) -> torch.Tensor:
    """The block's output hidden state for one captured input."""
    out = block(*inp.args, **inp.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def capture_block_inputs(model: nn.Module, first_block: nn.Module, samples: list[torch.Tensor]) -> list[BlockInput]:
    """Run every sample (batch 1) through ``model`` up to ``first_block`` and return its captured inputs."""
    captured: list[BlockInput] = []

    def hook(module, args, kwargs):
        captured.append(BlockInput(tuple(args), dict(kwargs)))
        raise _StopForward

    device = model.get_input_embeddings().weight.device
    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for ids in samples:
            try:
                model(input_ids=ids[None].to(device))
            except _StopForward:
                pass
    finally:
        handle.remove()
    if len(captured) != len(samples):
        raise RuntimeError(f"captured {len(captured)} block inputs for {len(samples)} samples: the model did not "
                           "call its first block exactly once per forward")
    return captured


@dataclass
class BlockStats:
    """Per-block result: relative reconstruction error ``Σ‖h_q − h_fp‖² / Σ‖h_fp‖²`` over all tokens."""

    index: int
    name: str
    rel_mse: float
    extra: dict = field(default_factory=dict)


def calibrate_blocks(
    model: nn.Module,
    blocks: nn.ModuleList,
    blocks_path: str,
    samples: list[torch.Tensor],
    quantize_block: Callable[[nn.Module, str, list[BlockInput], list[torch.Tensor]], dict],
    device: torch.device,
    chain: str = "fp",
) -> list[BlockStats]:
    """Quantize ``blocks`` one at a time (see the module docstring). ``quantize_block(block, path, inputs,
    fp_outputs)`` converts the block in place and may return extra statistics."""
    inputs = [BlockInput(move_to(i.args, device), move_to(i.kwargs, device))
              for i in capture_block_inputs(model, blocks[0], samples)]
    stats = []
    for index, block in enumerate(hf_logging.tqdm(blocks, desc="fair_calib: quantizing blocks")):
        home = next(block.parameters(), None)
        home = home.device if home is not None else device
        block.to(device)
        name = f"{blocks_path}.{index}"
        with torch.no_grad():
            fp_out = [run_block(block, inp) for inp in inputs]
        extra = quantize_block(block, name, inputs, fp_out) or {}
        err = ref = 0.0
        next_hidden = []
        with torch.no_grad():
            for inp, h_fp in zip(inputs, fp_out):
                h_q = run_block(block, inp)
                err += (h_q.float() - h_fp.float()).pow(2).sum().item()
                ref += h_fp.float().pow(2).sum().item()
                next_hidden.append(h_fp if chain == "fp" else h_q)
        stats.append(BlockStats(index, name, err / max(ref, 1e-30), extra))
        inputs = [inp.with_hidden(h) for inp, h in zip(inputs, next_hidden)]
        del fp_out
        block.to(home)
    return stats
