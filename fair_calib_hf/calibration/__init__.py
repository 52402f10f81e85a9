"""Calibration entry point: turn a loaded float model into a packed W4A4 model, block by block.

Methods: ``rtn`` (data-free), ``gptq`` (no transform, GPTQ weight rounding), ``quarot`` (fixed Hadamard-type
transforms), ``flatquant`` (Stage II with uniform position weights) and ``fair_calib`` (Stage I teacher probing for
the position prior, then Stage II weighted by it). Stage II calibrates on the states ``calibration_states`` chooses
(:mod:`.states`: the observed sequences, masked ones, or the teacher's decoding states), with the prior, uniform
or per-state frontier weights; GPTQ re-rounding always weights its Hessian with the static prior (or uniformly). Stage I always runs on the untouched full-precision model,
before any block is converted. With ``weight_rounding="gptq"`` every method's packed weights are re-rounded by
GPTQ (:mod:`.gptq`) right after the method packs each block, on the same block inputs.
"""
from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.utils import logging as hf_logging

from ..architectures import get_adapter, max_positions
from .. import cpu_threads
from ..config import IMPLEMENTED_METHODS, PRIOR_HASH_PREFIX
from ..modules import PackedLinear
from ..targets import block_targets
from .block_loop import BlockStats, calibrate_blocks, module_device, offload_block, onload_block
from .data import check_stage2_count, load_calibration_samples
from .quarot import make_quarot_block_quantizer
from .gptq import gptq_block
from .rtn import make_rtn_block_quantizer
from .stage1_prior import PositionPrior, probe_position_prior
from .stage2_fit import fit_block
from .states import CalibrationStates, build_states, check_states

logger = logging.getLogger(__name__)

__all__ = ["CalibrationReport", "PositionPrior", "calibrate", "check_method_implemented"]

STAGE2_METHODS = ("flatquant", "fair_calib")
FIXED_LENGTH_METHODS = STAGE2_METHODS + ("gptq",)
"""Methods whose calibration sequences are cut to exactly ``seq_len`` tokens by default (``pack_samples=None``)."""


def fixed_length(config) -> bool:
    """Whether calibration cuts sequences of exactly ``seq_len`` tokens: ``pack_samples``, or by default the
    :data:`FIXED_LENGTH_METHODS`."""
    return config.pack_samples if config.pack_samples is not None else config.method in FIXED_LENGTH_METHODS


@dataclass
class CalibrationReport:
    """What calibration did: method, samples used, per-block statistics (with per-linear output errors), the
    prior (``fair_calib``), wall time (s) of Stage I and of the whole calibration, and peak memory
    (``peak_memory``: ``cpu_rss_bytes``, the process's peak resident set so far, and, when the compute device
    is CUDA, ``cuda_allocated_bytes`` during calibration). ``seq_len``: tokens of the longest calibration sequence
    used (≤ the config's ``seq_len``, which only caps texts used whole); ``None`` without calibration data."""

    method: str
    num_samples: int
    converted_modules: list[str]
    blocks: list[BlockStats] = field(default_factory=list)
    prior: PositionPrior | None = None
    stage1_seconds: float = 0.0
    seconds: float = 0.0
    device: str = "cpu"
    peak_memory: dict = field(default_factory=dict)
    seq_len: int | None = None
    states: CalibrationStates | None = None

    def summary(self) -> str:
        lines = [f"method={self.method} samples={self.num_samples} converted={len(self.converted_modules)} "
                 f"linears in {self.seconds:.2f}s" + (f" (Stage I {self.stage1_seconds:.2f}s)" if self.prior else "")]
        for b in self.blocks:
            lines.append(f"  {b.name}: relative reconstruction MSE {b.rel_mse:.3e}")
        return "\n".join(lines)


def check_method_implemented(method: str) -> None:
    """Raise ``NotImplementedError`` for a method this release cannot calibrate (no silent fallback)."""
    if method not in IMPLEMENTED_METHODS:
        raise NotImplementedError(
            f"FairCalibConfig(method={method!r}) is not implemented yet in this release of fair_calib_hf; "
            f"implemented: {', '.join(IMPLEMENTED_METHODS)}"
        )


def _compute_device(config, model: nn.Module) -> torch.device:
    if config.calibration_device is not None:
        return torch.device(config.calibration_device)
    return torch.device("cuda") if torch.cuda.is_available() else module_device(model.get_input_embeddings())


def peak_cpu_rss_bytes() -> int:
    """The process's peak resident set size in bytes (0 where ``resource`` is unavailable)."""
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except (ImportError, OSError):
        return 0


def _layer_names(config):
    def names(block, block_path):
        return [n[len(block_path) + 1:] for n, m in block_targets(block, block_path, config.modules_to_not_convert)
                if isinstance(m, nn.Linear)]
    return names


def _rescaled_layers(config, adapter):
    """Stage II folds the down-projection's diagonal into the up-projection's output rows."""
    def rescaled(block, block_path, extra):
        if config.method not in STAGE2_METHODS or not config.add_diag:
            return []
        up, down = adapter.up_feeds_down
        try:
            return [up] if isinstance(block.get_submodule(down), PackedLinear) else []
        except AttributeError:
            return []
    return rescaled


def _prior(model, samples, config) -> PositionPrior:
    if config.prior_path:
        if config.prior_path.startswith(PRIOR_HASH_PREFIX):
            raise ValueError(f"prior_path={config.prior_path!r} is the content hash a saved checkpoint records, "
                             "not a file: save the checkpoint's prior with PositionPrior.from_checkpoint(folder)"
                             ".save(path) and pass that path")
        prior = PositionPrior.load(config.prior_path)
        adapter = get_adapter(model)
        prior.check_compatible(adapter.family, adapter.logits_shift, config.seq_len,
                               min(config.prior_window, config.seq_len - 1))
    else:
        prior = probe_position_prior(model, torch.stack(samples), config)
    if prior.weights.numel() != config.seq_len:
        raise ValueError(f"the position prior covers {prior.weights.numel()} positions but the calibration "
                         f"sequences have seq_len={config.seq_len}; probe again or set seq_len to match")
    return prior


def _then_gptq(quantize_block, config, prior):
    """``quantize_block`` followed by GPTQ re-rounding of the block's packed weights (:func:`.gptq.gptq_block`),
    with the prior's position weights in the Hessian when ``gptq_position_weights="prior"``."""
    weights = prior.weights if (prior is not None and config.gptq_position_weights == "prior") else None

    def quantize_then_round(block, path, inputs, targets):
        extra = dict(quantize_block(block, path, inputs, targets) or {})
        extra.update(gptq_block(block, inputs, config, weights, max(1, config.batch_size)))
        return extra
    return quantize_then_round


def _too_long_message(length: int, limit: int) -> str:
    return (f"calibration sequences of {length} tokens exceed the model's {limit} positions "
            f"(config max_sequence_length / max_position_embeddings): pass seq_len={limit} or less")


def check_positions(config, model_or_config, explicit: bool | None = None) -> None:
    """``ValueError`` when ``seq_len`` exceeds the positions the model was built for
    (:func:`~fair_calib_hf.architectures.max_positions`), checkable before any weight or data is loaded: a
    ``seq_len`` the user set is refused for every method and data source (data-free ``rtn`` / ``quarot``
    included), so that config.json never records a length the model cannot take; the default ``seq_len`` is
    refused where it cuts sequences of exactly ``seq_len`` tokens (the Stage II methods, or ``pack_samples=True``),
    and otherwise only caps sequences used whole, which :func:`calibrate` checks once loaded. ``explicit``: whether
    the user set ``seq_len`` (``None``: whenever it differs from the default)."""
    limit = max_positions(model_or_config)
    if limit is None or config.seq_len <= limit:
        return
    if explicit is None:
        explicit = config.seq_len != inspect.signature(type(config).__init__).parameters["seq_len"].default
    if explicit or (fixed_length(config) and config.calibration_dataset is not None):
        raise ValueError(_too_long_message(config.seq_len, limit))


def calibrate(model: nn.Module, config, hub_options: dict | None = None) -> CalibrationReport:
    """Quantize ``model`` in place according to ``config``; returns the report. Deterministic given the
    model, data, config and seed; the caller's global RNG state is left untouched. ``hub_options``: the
    ``revision`` / ``cache_dir`` / ... the model was loaded with (:mod:`fair_calib_hf.hub`), for its tokenizer."""
    check_method_implemented(config.method)
    with torch.random.fork_rng(devices=[]), cpu_threads.adaptive_threads():
        torch.manual_seed(config.seed)
        return _calibrate(model, config, hub_options)


def _calibrate(model: nn.Module, config, hub_options: dict | None = None) -> CalibrationReport:
    start = time.perf_counter()
    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    check_positions(config, model)
    samples = load_calibration_samples(config, model, fixed_length=fixed_length(config), hub_options=hub_options)
    limit, longest = max_positions(model), max((int(s.numel()) for s in samples), default=0)
    if limit is not None and longest > limit:  # the default seq_len capped sequences used whole
        raise ValueError(_too_long_message(longest, limit))
    if config.method in STAGE2_METHODS:
        check_stage2_count(samples, config)
    if config.method in ("rtn", "quarot") and samples and len(samples) < config.num_samples:
        logger.warning("fair_calib: method=%s: the quantized weights do not depend on calibration data; the %d "
                       "sample(s) found (%d tokens, fewer than num_samples=%d) only measure the block errors in "
                       "the report", config.method, len(samples), sum(int(s.numel()) for s in samples),
                       config.num_samples)
    if config.method in STAGE2_METHODS and samples:  # refuse states that cannot be drawn before Stage I runs
        check_states(config, adapter.family, int(samples[0].numel()))
    prior, stage1 = None, 0.0
    if config.uses_prior:
        prior = _prior(model, samples, config)
        stage1 = time.perf_counter() - start
    states = None
    if config.method in ("rtn", "gptq"):
        quantize_block = make_rtn_block_quantizer(config)
    elif config.method == "quarot":
        quantize_block = make_quarot_block_quantizer(config)
        if not samples:  # data-free: one dummy sequence, only to see which linears share an input
            samples = [torch.arange(8) % model.get_input_embeddings().num_embeddings]
    else:  # Stage II methods
        states = build_states(model, samples, config)
        weights = states.weights if states.weights is not None else (prior.weights if prior is not None else None)

        def quantize_block(block, path, inputs, targets):
            return fit_block(block, path, inputs, targets, weights, config, adapter)
    if config.weight_rounding == "gptq":
        quantize_block = _then_gptq(quantize_block, config, prior)
    device = _compute_device(config, model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if samples:
        stats = calibrate_blocks(model, blocks, adapter.blocks_path, states.sequences if states else samples,
                                 quantize_block, device,
                                 chain=config.block_inputs, layer_names=_layer_names(config),
                                 rescaled_layers=_rescaled_layers(config, adapter),
                                 batch_size=max(1, config.batch_size))
    else:  # data-free RTN: nothing to measure, convert directly
        stats = []
        for index, block in enumerate(hf_logging.tqdm(blocks, desc="fair_calib: quantizing blocks")):
            placement = onload_block(block, device)
            quantize_block(block, f"{adapter.blocks_path}.{index}")
            offload_block(block, placement)
    converted = [n for n, m in model.named_modules() if isinstance(m, PackedLinear)]
    peak = {"cpu_rss_bytes": peak_cpu_rss_bytes()}
    if device.type == "cuda":
        peak["cuda_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return CalibrationReport(config.method, len(samples), converted, stats, prior, stage1,
                             time.perf_counter() - start, str(device), peak, longest or None, states)
