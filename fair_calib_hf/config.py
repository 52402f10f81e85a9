"""``FairCalibConfig``: the quantization config (``quant_method = "fair_calib"``).

What ``to_dict()`` returns is what lands in ``config.json["quantization_config"]``: JSON-clean and versioned.
Runtime inputs (a list of texts, a ``datasets.Dataset``, a tokenizer) are used during calibration and never
serialized; a string ``calibration_dataset`` (a hub id or a file path) is kept as a record.

On reload transformers calls ``FairCalibConfig.from_dict(saved_dict)`` (= ``FairCalibConfig(**saved_dict)``):
``quant_method`` is accepted; any other unknown key is refused with ``ValueError`` naming it and the closest
valid field (a typo such as ``epcohs=3`` must not silently leave ``epochs`` at its default). Every field
ever written by this project is still a field, so older checkpoints reload.
"""
from __future__ import annotations

import copy
import difflib
import inspect
from typing import Any

from transformers.utils.quantization_config import QuantizationConfigMixin

from .packing import PACK_FORMAT
from .precisions import find_precision, valid_combinations


QUANT_METHOD = "fair_calib"
FORMAT_VERSION = 1
"""Version of the checkpoint layout written by this release; a checkpoint with a higher one is refused."""

METHODS = ("rtn", "gptq", "quarot", "flatquant", "fair_calib")
IMPLEMENTED_METHODS = METHODS
"""Methods that can calibrate in this release."""
DATA_FREE_METHODS = ("rtn", "quarot")
"""Methods that can run without calibration data (their weights do not depend on activations) when their
weights are rounded to nearest (``weight_rounding="rtn"``)."""
WEIGHT_ROUNDINGS = ("rtn", "gptq")
GPTQ_POSITION_WEIGHTS = ("uniform", "prior")
PRIOR_SCHEDULES = ("early", "late", "flat")
PRIOR_TERMS = ("both", "frontier", "reliability")
PRIOR_RELIABILITY = ("prob", "neg_entropy", "margin")

BLOCK_INPUTS = ("fp", "quantized")
CALIBRATION_STATES = ("observed", "masked", "trajectory")
STATE_WEIGHTS = ("static", "frontier")
TRAJECTORY_POLICIES = ("low_confidence", "random", "origin", "maskgit_plus", "topk_margin", "entropy")
"""Samplers the teacher may decode the calibration prompts with (``calibration_states="trajectory"``): those of
:mod:`fair_calib_hf.decoding.samplers` with a fixed number of steps (not the adaptive ``threshold``)."""
PRIOR_HASH_PREFIX = "sha256:"
"""``to_dict()`` writes ``prior_path`` as ``"sha256:<hex digest of the file>"``: a local path means nothing on
another machine, the hash identifies the prior (which itself travels in the checkpoint's header)."""

_RUNTIME_FIELDS = ("calibration_dataset", "tokenizer")
_SERIALIZED_FIELDS = (
    "quant_method", "format_version", "pack_format", "method", "w_bits", "a_bits", "w_clip_ratio",
    "a_clip_ratio", "num_samples", "seq_len", "pack_samples", "dataset_text_column", "dataset_config", "dataset_split",
    "apply_chat_template", "block_inputs", "calibration_device",
    "modules_to_not_convert", "seed", "group_size",
    # weight rounding
    "weight_rounding", "gptq_position_weights", "gptq_damp", "gptq_block_size", "gptq_act_order",
    # QuaRot
    "w_clip_search",
    # Stage I (fair_calib)
    "n_probe", "prior_window", "probe_steps", "probe_block_length", "probe_batch_size", "prior_schedule",
    "prior_gamma", "prior_terms", "prior_reliability", "prior_floor", "prior_path",
    # Stage II (flatquant, fair_calib)
    "epochs", "lr", "clip_lr", "batch_size", "add_diag", "diag_alpha", "lwc", "lac",
    # Stage II states (issue 27)
    "calibration_states", "states_per_sequence", "trajectory_policy", "state_weights",
)


STAGE1_FIELDS = ("n_probe", "prior_window", "probe_steps", "probe_block_length", "probe_batch_size", "prior_schedule",
                 "prior_gamma", "prior_terms", "prior_reliability", "prior_floor", "prior_path")
STAGE2_FIELDS = ("epochs", "lr", "clip_lr", "batch_size", "add_diag", "diag_alpha", "lwc", "lac")
GPTQ_FIELDS = ("gptq_position_weights", "gptq_damp", "gptq_block_size", "gptq_act_order")
STATES_FIELDS = ("calibration_states", "states_per_sequence", "trajectory_policy", "state_weights")
STATES_GEOMETRY_FIELDS = ("prior_window", "probe_steps", "probe_block_length")
"""Stage I fields that also set the answer window (and the teacher's decoding) of masked / trajectory states."""
DATA_FIELDS = ("calibration_dataset", "num_samples", "seq_len", "pack_samples", "dataset_text_column",
               "dataset_config", "dataset_split", "apply_chat_template", "block_inputs")


def applicable_fields(method: str, with_data: bool, states: str = "observed") -> set[str]:
    """The serialized fields that affect a calibration with ``method`` (the report lists only these): Stage I
    options for ``fair_calib`` only, Stage II options (the states fields included) for ``flatquant`` /
    ``fair_calib``, ``w_clip_search`` for ``quarot``, the data options only when calibration data was used.
    ``states`` (``calibration_states``): other than ``"observed"``, the window and decoding fields of Stage I
    (:data:`STATES_GEOMETRY_FIELDS`) apply to ``flatquant`` too; ``trajectory_policy`` applies only to
    ``"trajectory"``, ``states_per_sequence`` not to ``"observed"``, ``state_weights`` only to ``fair_calib``."""
    skip = set()
    if method != "fair_calib":
        skip.update(STAGE1_FIELDS)
        skip.add("state_weights")
    if method == "gptq":
        skip.difference_update(STAGE1_FIELDS)  # the Stage I prior can weight GPTQ's Hessian
    if method not in ("flatquant", "fair_calib"):
        skip.update(STAGE2_FIELDS + STATES_FIELDS)
    elif states != "observed":
        skip.difference_update(STATES_GEOMETRY_FIELDS)
    if states != "trajectory":
        skip.add("trajectory_policy")
    if states == "observed":
        skip.add("states_per_sequence")
    if method != "quarot":
        skip.add("w_clip_search")
    if not with_data:
        skip.update(DATA_FIELDS)
    return set(_SERIALIZED_FIELDS) - skip


def _fail(field: str, value: Any, allowed: str) -> None:
    """Raise the ``ValueError`` every invalid field gets: the field, the value, what is allowed."""
    raise ValueError(f"FairCalibConfig: invalid {field}={value!r}; allowed: {allowed}")


def _prior_record(path: str | None) -> str | None:
    """What ``to_dict()`` stores for ``prior_path``: ``None``, an existing hash record unchanged, or
    ``"sha256:<hex>"`` of the file (``None`` if the file is gone: a path is never written)."""
    if path is None or path.startswith(PRIOR_HASH_PREFIX):
        return path
    import hashlib
    import os

    if not os.path.isfile(path):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return PRIOR_HASH_PREFIX + digest.hexdigest()


def field_names() -> tuple[str, ...]:
    """Every keyword ``FairCalibConfig`` accepts (its ``__init__`` parameters and ``quant_method``)."""
    params = inspect.signature(FairCalibConfig.__init__).parameters.values()
    return ("quant_method",) + tuple(p.name for p in params
                                     if p.name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD)


def unknown_fields_message(unknown, where: str, valid=None) -> str:
    """``"<where>: unknown field 'epcohs' (did you mean 'epochs'?)"`` for every key of ``unknown`` (closest
    name in ``valid``, default :func:`field_names`, by :func:`difflib.get_close_matches`; the valid names
    listed when none is close)."""
    valid = tuple(field_names() if valid is None else valid)
    parts = []
    for key in sorted(map(str, unknown)):
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        parts.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    text = f"{where}: unknown field{'s' if len(parts) > 1 else ''} {', '.join(parts)}"
    if not any("did you mean" in p for p in parts):
        text += f"; valid fields: {', '.join(sorted(valid))}"
    return text


class FairCalibConfig(QuantizationConfigMixin):
    """Configuration of FAIR-Calib quantization (W4A4 by default; W4A8, W8A8, W4A16, W8A16).

    Args:
        method: ``"rtn"`` (round-to-nearest weights, dynamic per-token activations), ``"quarot"``,
            ``"flatquant"`` or ``"fair_calib"`` (all four implemented; see the README's Methods table).
        method ``"gptq"``: no transform, weights rounded by GPTQ (``weight_rounding`` is then ``"gptq"``).
        w_bits, a_bits: weight and activation bits: ``(4, 4)`` (W4A4, the default), ``(4, 8)`` / ``(8, 8)``
            (per-token int8 activations, every method) or ``(4, 16)`` / ``(8, 16)`` (weight-only: activations
            stay in the model's dtype; methods ``rtn`` / ``gptq``). Other combinations are refused with the
            valid ones listed (:mod:`fair_calib_hf.precisions`).
        group_size: weight scale groups along the input dimension: ``None`` (one scale per output channel, the
            default) or 32 / 64 / 128 (W4A16 only).
        w_clip_ratio: weight clip ratio in (0, 1]; the per-channel scale is ``ratio · max|W_row| / qmax`` (7 for
            4-bit weights, 127 for 8-bit).
        a_clip_ratio: activation clip ratio in (0, 1]; the per-token scale is ``ratio · max|x_row| / qmax`` (7 for
            4-bit activations, 127 for 8-bit).
        calibration_dataset: calibration data: a list of strings (tokenized with ``tokenizer`` or the model's
            own tokenizer), a list of token-id lists/tensors, a ``datasets.Dataset`` with a text column or
            ``input_ids``, or a string naming a dataset. ``None`` only for data-free ``rtn``.
        num_samples: number of calibration sequences used (> 0).
        seq_len: maximum tokens per calibration sequence (> 0); longer sequences are truncated.
        pack_samples: cut the concatenated calibration texts into ``num_samples`` sequences of exactly
            ``seq_len`` tokens (``True``), or use each sample truncated to ``seq_len`` (``False``). ``None``:
            ``True`` for the Stage II methods (which need full-length sequences), ``False`` otherwise.
        dataset_text_column: the text column of a ``datasets.Dataset`` (or of a named dataset / local file).
        dataset_config: the configuration (subset) name of a hub dataset, e.g. ``"wikitext-2-raw-v1"``.
        dataset_split: the split read from a hub dataset or local file (``"train"``); slicing syntax such as
            ``"train[:1000]"`` is accepted.
        apply_chat_template: wrap every calibration text as one user turn and render it with the tokenizer's
            chat template (for instruct models); a dataset column holding chat messages (lists of
            ``{"role", "content"}`` dicts) is rendered as is. Needs a tokenizer with a chat template.
        block_inputs: ``"fp"``: each block is calibrated on the full-precision outputs of the previous
            block (FlatQuant); ``"quantized"``: on the outputs of the already quantized blocks.
        calibration_device: device the block loop computes on (``None``: CUDA if available, else CPU).
        modules_to_not_convert: extra modules to keep in float, as **full module paths** (exact match) or
            regular expressions prefixed with ``"re:"`` (full match). The LM head, embeddings and norms are
            always kept in float.
        seed: seed of every random choice made during calibration.
        tokenizer: runtime only: the tokenizer for string calibration data.

    Weight rounding (:mod:`fair_calib_hf.calibration.gptq`):
        weight_rounding: ``"rtn"`` (round to nearest) or ``"gptq"`` (GPTQ, Frantar et al. 2022, on the grid RTN
            would use, on the weights after any fitted transform is folded in); ``None``: ``"gptq"`` for
            ``method="gptq"``, else ``"rtn"``. GPTQ needs calibration data.
        gptq_position_weights: ``"uniform"`` (plain GPTQ, ``H = 2 Σ x xᵀ``) or ``"prior"`` (each token's
            contribution to ``H`` weighted by the Stage I position prior; Stage I runs for ``gptq`` too);
            ``None``: ``"prior"`` for ``fair_calib``, else ``"uniform"``.
        gptq_damp: damping as a fraction of the mean Hessian diagonal (0.01). gptq_block_size: columns per lazy
            batch update (128). gptq_act_order: process columns in decreasing Hessian diagonal order (False);
            the scale groups stay fixed in column order (static groups).

    QuaRot:
        w_clip_search: search a per-channel weight clip ratio on a grid (1.0 … 0.5) minimising the weight
            quantization MSE (multiplied by ``w_clip_ratio``).

    Stage I (``fair_calib``; definitions in :mod:`fair_calib_hf.calibration.stage1_prior`):
        n_probe: teacher rollouts (512). prior_window: generation window K (256; capped at ``seq_len − 1``).
        probe_steps: steps per rollout (64; capped at K). probe_block_length: semi-AR block of the rollouts
            (``None``: 32 for LLaDA-style when 32 divides K, else the whole window; the whole window for
            Dream-style); it must divide K and the steps must be a multiple of the number of blocks, else
            Stage I raises ``ValueError``. probe_batch_size: rollouts per
            forward (8). prior_schedule: λ0 shape ``early`` / ``late`` / ``flat``; prior_gamma: its boost γ (1.0).
        prior_terms: ``both`` / ``frontier`` / ``reliability`` (ablations). prior_reliability: ``prob`` /
            ``neg_entropy`` / ``margin``. prior_floor: weight outside the window as a fraction of the window
            mean (0.1). prior_path: a saved prior (``PositionPrior.save``) to reuse instead of probing;
            it must come from a model of the same family and the same seq_len / window (else ``ValueError``);
            ``to_dict()`` records it as ``"sha256:<hex>"`` of the file, never as a local path.

    Stage II (``flatquant``, ``fair_calib``; :mod:`fair_calib_hf.calibration.stage2_fit`):
        epochs (15), lr (5e-3, transforms and diagonal), clip_lr (5e-2, clipping logits), batch_size (4
        sequences per step), add_diag (True), diag_alpha (0.3, SmoothQuant-style init), lwc / lac (learnable
        weight / activation clipping, True; when off, the clip ratio is fixed at ``w_clip_ratio`` /
        ``a_clip_ratio``, 1.0 by default: no clipping). Stage II sequences are ``seq_len`` tokens each, cut from the
        concatenated calibration texts.

    Stage II states (``flatquant``, ``fair_calib``; :mod:`fair_calib_hf.calibration.states`):
        calibration_states: the sequences every block is calibrated on, with full-precision targets on the same
            sequences: ``"observed"`` (the default, the paper's: the calibration text as is, no mask token);
            ``"masked"`` (each sequence's answer window, its last ``prior_window`` positions, with every position
            replaced by the mask token independently with probability ``r``, one ``r = ε + (1 − ε)·u``,
            ``u ~ U[0, 1)``, ``ε = 1e-3``, per state: LLaDA's training corruption); ``"trajectory"`` (the states
            ``S_t`` of the full-precision model decoding each sequence's prompt, the positions before the window,
            with ``trajectory_policy``, ``probe_steps`` and ``probe_block_length``: the same geometry as Stage I).
        states_per_sequence: states drawn per calibration sequence (1): independent maskings, or distinct decoding
            steps ``t`` drawn uniformly; Stage II then fits on ``num_samples × states_per_sequence`` states (and
            takes that many more optimizer steps per epoch).
        trajectory_policy: the teacher's sampler for ``"trajectory"`` states: ``None`` (the family's deployed
            sampler: ``"low_confidence"`` LLaDA-style, ``"maskgit_plus"`` Dream-style), ``"random"`` (Stage I's
            random-commit rollouts) or any of ``low_confidence``, ``origin``, ``maskgit_plus``, ``topk_margin``,
            ``entropy`` (the Dream-style ones need ``probe_block_length`` None or the whole window).
        state_weights: ``fair_calib`` only. ``"static"``: every state weighted by the Stage I prior (the paper);
            ``"frontier"`` (``"trajectory"`` states only): each state ``S_t`` weighted by the bound's terms at
            that step, the positions committed at step ``t`` with ``λ0(t)`` and the still-masked positions with
            the teacher's reliability, combined and floored as the prior is
            (:func:`fair_calib_hf.calibration.states.frontier_weights`).
    """

    def __init__(
        self,
        method: str = "rtn",
        w_bits: int = 4,
        a_bits: int = 4,
        w_clip_ratio: float = 1.0,
        a_clip_ratio: float = 1.0,
        calibration_dataset: Any = None,
        num_samples: int = 128,
        seq_len: int = 1024,
        pack_samples: bool | None = None,
        dataset_text_column: str = "text",
        dataset_config: str | None = None,
        dataset_split: str = "train",
        apply_chat_template: bool = False,
        block_inputs: str = "fp",
        calibration_device: str | None = None,
        modules_to_not_convert: list[str] | None = None,
        seed: int = 0,
        tokenizer: Any = None,
        group_size: int | None = None,
        weight_rounding: str | None = None,
        gptq_position_weights: str | None = None,
        gptq_damp: float = 0.01,
        gptq_block_size: int = 128,
        gptq_act_order: bool = False,
        w_clip_search: bool = False,
        n_probe: int = 512,
        prior_window: int = 256,
        probe_steps: int = 64,
        probe_block_length: int | None = None,
        probe_batch_size: int = 8,
        prior_schedule: str = "early",
        prior_gamma: float = 1.0,
        prior_terms: str = "both",
        prior_reliability: str = "prob",
        prior_floor: float = 0.1,
        prior_path: str | None = None,
        epochs: int = 15,
        lr: float = 5e-3,
        clip_lr: float = 5e-2,
        batch_size: int = 4,
        add_diag: bool = True,
        diag_alpha: float = 0.3,
        lwc: bool = True,
        lac: bool = True,
        calibration_states: str = "observed",
        states_per_sequence: int = 1,
        trajectory_policy: str | None = None,
        state_weights: str = "static",
        format_version: int = FORMAT_VERSION,
        pack_format: str = PACK_FORMAT,
        **kwargs,
    ):
        kwargs.pop("quant_method", None)
        if kwargs:
            raise ValueError(unknown_fields_message(kwargs, "FairCalibConfig"))
        self.quant_method = QUANT_METHOD
        self.format_version = format_version
        self.pack_format = pack_format
        self.method = method
        self.w_bits = w_bits
        self.a_bits = a_bits
        self.w_clip_ratio = w_clip_ratio
        self.a_clip_ratio = a_clip_ratio
        self.calibration_dataset = calibration_dataset
        self.num_samples = num_samples
        self.seq_len = seq_len
        self.pack_samples = pack_samples
        self.dataset_text_column = dataset_text_column
        self.dataset_config = dataset_config
        self.dataset_split = dataset_split
        self.apply_chat_template = apply_chat_template
        self.block_inputs = block_inputs
        self.calibration_device = calibration_device
        self.modules_to_not_convert = list(modules_to_not_convert) if modules_to_not_convert is not None else None
        self.seed = seed
        self.tokenizer = tokenizer
        self.group_size = group_size
        if weight_rounding is None:
            weight_rounding = "gptq" if method == "gptq" else "rtn"
        if gptq_position_weights is None:
            gptq_position_weights = "prior" if method == "fair_calib" else "uniform"
        self.weight_rounding, self.gptq_position_weights = weight_rounding, gptq_position_weights
        self.gptq_damp, self.gptq_block_size, self.gptq_act_order = gptq_damp, gptq_block_size, gptq_act_order
        self.w_clip_search = w_clip_search
        self.n_probe, self.prior_window, self.probe_steps = n_probe, prior_window, probe_steps
        self.probe_block_length, self.probe_batch_size = probe_block_length, probe_batch_size
        self.prior_schedule, self.prior_gamma, self.prior_terms = prior_schedule, prior_gamma, prior_terms
        self.prior_reliability, self.prior_floor, self.prior_path = prior_reliability, prior_floor, prior_path
        self.epochs, self.lr, self.clip_lr, self.batch_size = epochs, lr, clip_lr, batch_size
        self.add_diag, self.diag_alpha, self.lwc, self.lac = add_diag, diag_alpha, lwc, lac
        self.calibration_states, self.states_per_sequence = calibration_states, states_per_sequence
        self.trajectory_policy, self.state_weights = trajectory_policy, state_weights
        self.post_init()

    def post_init(self) -> None:
        """Validate every field; raise ``ValueError`` naming the field and what is allowed."""
        if not isinstance(self.format_version, int) or isinstance(self.format_version, bool) or self.format_version < 1:
            _fail("format_version", self.format_version, "a positive integer")
        if self.format_version > FORMAT_VERSION:
            _fail("format_version", self.format_version,
                  f"<= {FORMAT_VERSION} (this checkpoint needs a newer fair_calib_hf)")
        if self.pack_format != PACK_FORMAT:
            _fail("pack_format", self.pack_format, repr(PACK_FORMAT))
        if self.method not in METHODS:
            _fail("method", self.method, ", ".join(METHODS))
        self._validate_precision()
        for name in ("w_clip_ratio", "a_clip_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                _fail(name, v, "a number in (0, 1]")
        for name in ("num_samples", "seq_len", "seed", "n_probe", "prior_window", "probe_steps", "probe_batch_size",
                     "epochs", "batch_size", "probe_block_length", "states_per_sequence"):
            v = getattr(self, name)
            if name == "probe_block_length" and v is None:
                continue
            low = 0 if name in ("seed", "epochs") else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                _fail(name, v, "an integer >= 0" if low == 0 else "a positive integer")
        for name in ("lr", "clip_lr", "prior_gamma", "prior_floor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (name in ("lr", "clip_lr") and v == 0):
                _fail(name, v, "a positive number" if name in ("lr", "clip_lr") else "a number >= 0")
        if isinstance(self.diag_alpha, bool) or not isinstance(self.diag_alpha, (int, float)) or not 0 <= self.diag_alpha <= 1:
            _fail("diag_alpha", self.diag_alpha, "a number in [0, 1]")
        if self.pack_samples is not None and not isinstance(self.pack_samples, bool):
            _fail("pack_samples", self.pack_samples, "None, True or False")
        if self.pack_samples is False and self.method in ("flatquant", "fair_calib"):
            _fail("pack_samples", self.pack_samples, f"None or True for method={self.method!r} (Stage II needs "
                  "sequences of exactly seq_len tokens)")
        for name in ("w_clip_search", "add_diag", "lwc", "lac", "gptq_act_order"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, getattr(self, name), "True or False")
        for name, allowed in (("prior_schedule", PRIOR_SCHEDULES), ("prior_terms", PRIOR_TERMS),
                              ("prior_reliability", PRIOR_RELIABILITY)):
            if getattr(self, name) not in allowed:
                _fail(name, getattr(self, name), ", ".join(allowed))
        if self.prior_path is not None and (not isinstance(self.prior_path, str) or not self.prior_path):
            _fail("prior_path", self.prior_path, "None or the path of a saved PositionPrior")
        if not isinstance(self.dataset_text_column, str) or not self.dataset_text_column:
            _fail("dataset_text_column", self.dataset_text_column, "a non-empty column name")
        if self.dataset_config is not None and (not isinstance(self.dataset_config, str) or not self.dataset_config):
            _fail("dataset_config", self.dataset_config, "None or a non-empty dataset configuration name")
        if not isinstance(self.dataset_split, str) or not self.dataset_split:
            _fail("dataset_split", self.dataset_split, "a non-empty split name such as 'train' or 'train[:512]'")
        if not isinstance(self.apply_chat_template, bool):
            _fail("apply_chat_template", self.apply_chat_template, "True or False")
        if self.block_inputs not in BLOCK_INPUTS:
            _fail("block_inputs", self.block_inputs, ", ".join(BLOCK_INPUTS))
        if self.calibration_device is not None and not isinstance(self.calibration_device, str):
            _fail("calibration_device", self.calibration_device, "None or a device string such as 'cuda:0'")
        if self.modules_to_not_convert is not None and not all(
            isinstance(m, str) and m for m in self.modules_to_not_convert
        ):
            _fail("modules_to_not_convert", self.modules_to_not_convert, "a list of module paths or 're:' patterns")
        self._validate_states()
        self._validate_calibration_dataset()

    def _validate_states(self) -> None:
        """The Stage II states fields (see the class docstring)."""
        if self.calibration_states not in CALIBRATION_STATES:
            _fail("calibration_states", self.calibration_states, ", ".join(CALIBRATION_STATES))
        if self.trajectory_policy is not None and self.trajectory_policy not in TRAJECTORY_POLICIES:
            _fail("trajectory_policy", self.trajectory_policy, "None or " + ", ".join(TRAJECTORY_POLICIES))
        if self.state_weights not in STATE_WEIGHTS:
            _fail("state_weights", self.state_weights, ", ".join(STATE_WEIGHTS))
        if self.state_weights == "frontier" and (self.method != "fair_calib"
                                                 or self.calibration_states != "trajectory"):
            _fail("state_weights", self.state_weights, "'static', or 'frontier' with method='fair_calib' and "
                  f"calibration_states='trajectory' (got method={self.method!r}, calibration_states="
                  f"{self.calibration_states!r}): the frontier of a step exists only on a decoding trajectory")
        if self.calibration_states != "observed" and self.method not in ("flatquant", "fair_calib"):
            _fail("calibration_states", self.calibration_states, f"'observed' for method={self.method!r} (masked "
                  "and trajectory states are Stage II's: method 'flatquant' or 'fair_calib')")

    def _validate_precision(self) -> None:
        """Bits, group size and weight rounding: only the combinations :mod:`fair_calib_hf.precisions` lists."""
        precision = find_precision(self.w_bits, self.a_bits)
        if precision is None:
            _fail("w_bits/a_bits", (self.w_bits, self.a_bits), valid_combinations())
        if self.method not in precision.methods:
            _fail("method", self.method, f"{', '.join(precision.methods)} at W{self.w_bits}A{self.a_bits} (the "
                  "transforms of quarot/flatquant/fair_calib exist to quantize activations); valid: "
                  + valid_combinations())
        if self.group_size not in precision.group_sizes or isinstance(self.group_size, bool):
            allowed = ", ".join("None (per-channel)" if g is None else str(g) for g in precision.group_sizes)
            _fail("group_size", self.group_size, f"{allowed} at W{self.w_bits}A{self.a_bits}; valid: "
                  + valid_combinations())
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            _fail("weight_rounding", self.weight_rounding, ", ".join(WEIGHT_ROUNDINGS))
        if self.method == "gptq" and self.weight_rounding != "gptq":
            _fail("weight_rounding", self.weight_rounding, "'gptq' (or None) for method='gptq'; plain "
                  "round-to-nearest is method='rtn'")
        if self.gptq_position_weights not in GPTQ_POSITION_WEIGHTS:
            _fail("gptq_position_weights", self.gptq_position_weights, ", ".join(GPTQ_POSITION_WEIGHTS))
        if self.gptq_position_weights == "prior" and self.method not in ("gptq", "fair_calib"):
            _fail("gptq_position_weights", self.gptq_position_weights, "'uniform' for method="
                  f"{self.method!r} ('prior' needs the Stage I prior: method 'gptq' or 'fair_calib')")
        if isinstance(self.gptq_damp, bool) or not isinstance(self.gptq_damp, (int, float)) or not self.gptq_damp > 0:
            _fail("gptq_damp", self.gptq_damp, "a positive number (0.01: 1 % of the mean Hessian diagonal)")
        v = self.gptq_block_size
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            _fail("gptq_block_size", v, "a positive integer")

    @property
    def precision(self):
        """The :class:`~fair_calib_hf.precisions.Precision` of ``w_bits`` / ``a_bits``."""
        return find_precision(self.w_bits, self.a_bits)

    @property
    def uses_prior(self) -> bool:
        """Whether calibration runs Stage I: ``fair_calib``, or ``gptq`` with the prior in its Hessian."""
        return self.method == "fair_calib" or (self.method == "gptq" and self.gptq_position_weights == "prior")

    def _validate_calibration_dataset(self) -> None:
        data = self.calibration_dataset
        if data is None:
            return
        if isinstance(data, str):
            if not data.strip():
                _fail("calibration_dataset", data, "a non-empty dataset name or path")
            return
        try:
            n = len(data)
        except TypeError:
            _fail("calibration_dataset", type(data).__name__,
                  "None, a list of strings, a list of token-id sequences, a datasets.Dataset or a dataset name")
        if n == 0:
            _fail("calibration_dataset", "<empty>", "at least one sample")

    @property
    def requires_calibration_data(self) -> bool:
        """Whether the method needs calibration data (all but ``rtn`` and ``quarot`` with round-to-nearest
        weights)."""
        return self.method not in DATA_FREE_METHODS or self.weight_rounding == "gptq"

    @classmethod
    def from_dict(cls, config_dict: dict, return_unused_kwargs: bool = False, **kwargs):
        """The config of a saved ``quantization_config`` dict (transformers calls this on reload). A key this
        release does not know raises ``ValueError`` saying so (a newer fair_calib_hf wrote it, or it was
        edited by hand) before anything is loaded."""
        unknown = {k: v for k, v in config_dict.items() if k not in field_names()}
        if unknown:
            from .version import __version__

            raise ValueError(unknown_fields_message(unknown, "quantization_config")
                             + f". fair_calib_hf {__version__} does not know it: a newer fair_calib_hf wrote this "
                               "checkpoint (upgrade), or config.json was edited by hand (fix the name)")
        return super().from_dict(config_dict, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-clean dict of the serialized fields (runtime objects left out); only known fields."""
        out = {}
        for name in _SERIALIZED_FIELDS:
            out[name] = copy.deepcopy(getattr(self, name))
        if isinstance(self.calibration_dataset, str):
            out["calibration_dataset"] = self.calibration_dataset
        out["prior_path"] = _prior_record(self.prior_path)
        return out

    def __iter__(self):
        yield from self.to_dict().items()

    def to_diff_dict(self) -> dict[str, Any]:
        """Same as :meth:`to_dict` (transformers 4.57's ``repr`` and JSON helpers call this name)."""
        return self.to_dict()

    def __deepcopy__(self, memo):
        """Deep-copy the serializable state; runtime objects (data, tokenizer) are shared, not copied."""
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = value if key in _RUNTIME_FIELDS else copy.deepcopy(value, memo)
        return new
