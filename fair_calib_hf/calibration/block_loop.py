"""Block-by-block calibration driver.

1. Capture the inputs of block 0 (positional args and kwargs, one entry per calibration sample) with a
   forward pre-hook that stops the forward there.
2. For each block in order: move it to the compute device, compute its full-precision outputs, let the
   method quantize it in place (``quantize_block``), measure the relative reconstruction error of the
   quantized block on the same inputs, choose the next block's inputs (FP or quantized chain), move the
   block back.

Peak memory: one block on the compute device, plus this block's inputs and outputs for all samples.

Models dispatched by accelerate (``device_map`` with ``"cpu"`` or ``"disk"`` entries, ``offload_folder``): the
accelerate hooks of the block being calibrated are removed, its weights are read from the offload map (RAM
or disk) straight onto the compute device, and after quantization the (4-bit, much smaller) block goes back:
on a CPU execution device it stays materialised in RAM; on an accelerator it returns to the accelerator if it
lived there, else it is CPU-offloaded again (``accelerate.cpu_offload``, buffers included) so it still runs on
its execution device. Every other module stays where the ``device_map`` put it.

Per linear, the relative output error ``Σ‖y_q − y_fp‖² / Σ‖y_fp‖²`` of the quantized block against a float
copy of the block on the same block inputs is recorded too (``BlockStats.layers``; errors of earlier linears
of the same block propagate into later ones). A linear whose output rows were rescaled by folding (the
up-projection under Stage II's down-projection diagonal) is compared after undoing that scale per channel
by least squares, and marked in ``BlockStats.rescaled``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from transformers.utils import logging as hf_logging

from .. import cpu_threads


class _StopForward(Exception):
    """Raised by the capture hook to end the forward at block 0."""


def module_device(module: nn.Module, default="cpu") -> torch.device:
    """Where ``module`` computes: its accelerate hook's execution device when it has one, else the device of
    its first parameter or buffer that is not on meta, else ``default``."""
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
        if getattr(h, "execution_device", None) is not None:
            return torch.device(h.execution_device if not isinstance(h.execution_device, int)
                                else f"cuda:{h.execution_device}")
    for t in list(module.parameters()) + list(module.buffers()):
        if t.device.type != "meta":
            return t.device
    return torch.device(default)


def _accelerate_hooks(module: nn.Module):
    """``[(submodule, AlignDevicesHook)]`` of every accelerate device hook inside ``module``."""
    out = []
    for sub in module.modules():
        hook = getattr(sub, "_hf_hook", None)
        if hook is None:
            continue
        for h in getattr(hook, "hooks", None) or [hook]:
            if hasattr(h, "execution_device"):
                out.append((sub, h))
    return out


@dataclass
class _Placement:
    """Where a block lived before calibration moved it to the compute device."""

    home: torch.device | None  # device of its parameters (meta for offloaded weights)
    execution_device: torch.device | None  # accelerate's execution device, None without hooks
    offloaded: bool


def onload_block(block: nn.Module, device) -> _Placement:
    """Move ``block`` to ``device`` for calibration: without accelerate hooks a plain ``.to``; with hooks,
    remove them and read every offloaded tensor from its weights map (RAM or disk) onto ``device``."""
    hooks = _accelerate_hooks(block)
    first = next(iter(block.parameters()), None)
    home = first.device if first is not None else None
    if not hooks:
        block.to(device)
        return _Placement(home, None, False)
    from accelerate.hooks import remove_hook_from_module
    from accelerate.utils import named_module_tensors, set_module_tensor_to_device

    execution = module_device(block)
    offloaded = [(sub, h) for sub, h in hooks if getattr(h, "offload", False) and h.weights_map is not None]
    plan = []
    for sub, h in offloaded:
        for name, _ in named_module_tensors(sub, include_buffers=h.offload_buffers, recurse=h.place_submodules):
            plan.append((sub, name, h.weights_map, h))
    remove_hook_from_module(block, recurse=True)
    for sub, name, weights_map, _ in plan:
        set_module_tensor_to_device(sub, name, device, value=weights_map[name])
    block.to(device)
    return _Placement(home, execution, bool(offloaded))


def offload_block(block: nn.Module, placement: _Placement) -> None:
    """Put a calibrated block back (see the module docstring)."""
    if placement.execution_device is None:
        if placement.home is not None and placement.home.type != "meta":
            block.to(placement.home)
        return
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    execution = placement.execution_device
    if execution.type == "cpu" or not placement.offloaded:
        block.to(execution)
        add_hook_to_module(block, AlignDevicesHook(execution_device=execution))
    else:
        from accelerate import cpu_offload

        block.to("cpu")
        cpu_offload(block, execution_device=execution, offload_buffers=True)


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


class _NotBatchable(Exception):
    """Raised by :func:`stack_block_inputs` for captured calls that cannot run as one batch."""


def _merge(values: list):
    first = values[0]
    if torch.is_tensor(first):
        if not all(torch.is_tensor(v) for v in values):
            raise _NotBatchable
        if all(v is first for v in values):
            return first
        if first.dim() >= 1 and first.shape[0] == 1 and all(v.shape == first.shape for v in values):
            return torch.cat(values, 0)  # a per-sample tensor: batch dimension first
        if all(v.shape == first.shape and torch.equal(v, first) for v in values):
            return first  # the same value for every sample, without a batch dimension
        raise _NotBatchable
    if isinstance(first, (tuple, list)):
        if not all(type(v) is type(first) and len(v) == len(first) for v in values):
            raise _NotBatchable
        return type(first)(_merge([v[i] for v in values]) for i in range(len(first)))
    if isinstance(first, dict):
        if not all(isinstance(v, dict) and v.keys() == first.keys() for v in values):
            raise _NotBatchable
        return {key: _merge([v[key] for v in values]) for key in first}
    if all(v is first or (isinstance(v, (bool, int, float, str)) and type(v) is type(first) and v == first)
           for v in values):
        return first
    raise _NotBatchable


def stack_block_inputs(inputs: list[BlockInput]) -> BlockInput | None:
    """The captured calls ``inputs`` (batch 1 each) as one call over a batch of ``len(inputs)`` samples, so a
    block runs them in one forward: tensors whose first dimension is 1 are concatenated along it (hidden
    states, position ids, per-sample masks), tensors equal in every sample are passed once, other values must
    be the same object or an equal plain value. ``None`` when the calls cannot be batched that way (e.g.
    samples of different lengths); the caller then runs them one at a time."""
    if len(inputs) == 1:
        return inputs[0]
    try:
        return BlockInput(_merge([i.args for i in inputs]), _merge([i.kwargs for i in inputs]))
    except _NotBatchable:
        return None


def run_block(block: nn.Module, inp: BlockInput) -> torch.Tensor:
    """The block's output hidden state for one captured input."""
    out = block(*inp.args, **inp.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def block_batches(inputs: list[BlockInput], batch: int):
    """The calls to run for ``inputs`` in order, ``batch`` samples per call where they stack
    (:func:`stack_block_inputs`; a chunk that does not stack is yielded one input at a time). Splitting each
    call's output along dimension 0 gives the per-sample outputs in the order of ``inputs``. Each call is a step
    boundary of the thread policy (:func:`..cpu_threads.rebalance`)."""
    step = max(1, batch)
    for start in range(0, len(inputs), step):
        cpu_threads.rebalance()
        chunk = inputs[start:start + step]
        stacked = stack_block_inputs(chunk)
        yield from [stacked] if stacked is not None else chunk


def run_block_batched(block: nn.Module, inputs: list[BlockInput], batch: int) -> list[torch.Tensor]:
    """``[run_block(block, i) for i in inputs]``, computed ``batch`` samples per forward where the calls stack
    (:func:`block_batches`); each output keeps its batch dimension of 1."""
    return [h for inp in block_batches(inputs, batch) for h in run_block(block, inp).split(1, dim=0)]


@torch.no_grad()
def group_by_input(block: nn.Module, modules: dict[str, nn.Module], sample: BlockInput) -> list[list[str]]:
    """The names of ``modules`` (submodules of ``block``) grouped by the identity of the input tensor each receives
    when ``block`` runs on ``sample``, groups in the order their input is first used (forward order)."""
    seen: dict[int, list[str]] = {}
    keep = []  # hold the inputs so their ids stay unique during the forward
    handles = []
    for name, module in modules.items():
        def hook(mod, args, name=name):
            keep.append(args[0])
            seen.setdefault(id(args[0]), []).append(name)
        handles.append(module.register_forward_pre_hook(hook))
    try:
        run_block(block, sample)
    finally:
        for h in handles:
            h.remove()
    return list(seen.values())


@torch.no_grad()
def capture_block_inputs(model: nn.Module, first_block: nn.Module, samples: list[torch.Tensor]) -> list[BlockInput]:
    """Run every sample (batch 1) through ``model`` up to ``first_block`` and return its captured inputs."""
    captured: list[BlockInput] = []

    def hook(module, args, kwargs):
        captured.append(BlockInput(tuple(args), dict(kwargs)))
        raise _StopForward

    device = module_device(model.get_input_embeddings())
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
    layers: dict = field(default_factory=dict)  # {linear path: relative output error}
    rescaled: list = field(default_factory=list)  # linears compared after undoing a folded row scale


class _LayerErrors:
    """Accumulates per-linear relative output errors between a float copy and the quantized block."""

    def __init__(self, names: list[str]):
        self.names = names
        self.err = dict.fromkeys(names, 0.0)
        self.ref = dict.fromkeys(names, 0.0)
        self.cross = {n: None for n in names}  # per channel Σ y_q·y_fp and Σ y_fp², for the rescale check
        self.outputs: dict = {}

    def hooks(self, block: nn.Module, tag: str):
        handles = []
        for name in self.names:
            try:
                module = block.get_submodule(name)
            except AttributeError:
                continue

            def hook(mod, args, out, name=name):
                self.outputs[tag, name] = out.detach().float()
            handles.append(module.register_forward_hook(hook))
        return handles

    def accumulate(self, rescaled: set):
        for name in self.names:
            y_fp, y_q = self.outputs.get(("fp", name)), self.outputs.get(("q", name))
            if y_fp is None or y_q is None or y_fp.shape != y_q.shape:
                continue
            if name in rescaled:  # undo a per-channel output scale: y_q ≈ y_fp ⊙ s, s by least squares
                flat_q, flat_fp = y_q.reshape(-1, y_q.shape[-1]), y_fp.reshape(-1, y_fp.shape[-1])
                s = (flat_q * flat_fp).sum(0) / flat_fp.pow(2).sum(0).clamp_min(1e-30)
                y_q = y_q / torch.where(s.abs() > 1e-12, s, torch.ones_like(s))
            self.err[name] += (y_q - y_fp).pow(2).sum().item()
            self.ref[name] += y_fp.pow(2).sum().item()
        self.outputs.clear()

    def result(self) -> dict:
        return {n: self.err[n] / max(self.ref[n], 1e-30) for n in self.names if self.ref[n] > 0}


def calibrate_blocks(
    model: nn.Module,
    blocks: nn.ModuleList,
    blocks_path: str,
    samples: list[torch.Tensor],
    quantize_block: Callable[[nn.Module, str, list[BlockInput], list[torch.Tensor]], dict],
    device: torch.device,
    chain: str = "fp",
    layer_names: Callable[[nn.Module, str], list[str]] | None = None,
    rescaled_layers: Callable[[nn.Module, str, dict], list[str]] | None = None,
    batch_size: int = 1,
) -> list[BlockStats]:
    """Quantize ``blocks`` one at a time (see the module docstring). ``quantize_block(block, path, inputs,
    fp_outputs)`` converts the block in place and may return extra statistics. ``layer_names(block, path)``
    lists the linears (paths relative to the block) whose output error is recorded (none without it);
    ``rescaled_layers(block, path, extra)`` those whose output rows were rescaled by folding. The float and
    quantized block outputs are computed ``batch_size`` samples per forward where the captured calls stack."""
    inputs = [BlockInput(move_to(i.args, device), move_to(i.kwargs, device))
              for i in capture_block_inputs(model, blocks[0], samples)]
    stats = []
    for index, block in enumerate(hf_logging.tqdm(blocks, desc="fair_calib: quantizing blocks")):
        placement = onload_block(block, device)
        name = f"{blocks_path}.{index}"
        names = layer_names(block, name) if layer_names is not None else []
        reference = copy.deepcopy(block) if names else None
        with torch.no_grad():
            fp_out = run_block_batched(block, inputs, batch_size)
        extra = quantize_block(block, name, inputs, fp_out) or {}
        rescaled = set(rescaled_layers(block, name, extra)) if (names and rescaled_layers is not None) else set()
        layers = _LayerErrors(names)
        handles = layers.hooks(block, "q") + (layers.hooks(reference, "fp") if reference is not None else [])
        err = ref = 0.0
        next_hidden = []
        try:
            with torch.no_grad():
                for inp in block_batches(inputs, batch_size):
                    h_q = run_block(block, inp)
                    if reference is not None:
                        run_block(reference, inp)
                        layers.accumulate(rescaled)
                    for h in h_q.split(1, dim=0):
                        h_fp = fp_out[len(next_hidden)]
                        err += (h.float() - h_fp.float()).pow(2).sum().item()
                        ref += h_fp.float().pow(2).sum().item()
                        next_hidden.append(h_fp if chain == "fp" else h)
        finally:
            for h in handles:
                h.remove()
        del reference
        stats.append(BlockStats(index, name, err / max(ref, 1e-30), extra, layers.result(), sorted(rescaled)))
        inputs = [inp.with_hidden(h) for inp, h in zip(inputs, next_hidden)]
        del fp_out
        offload_block(block, placement)
    return stats
