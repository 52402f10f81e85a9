"""``FairCalibHfQuantizer``: the transformers hooks, nothing else (the work lives in calibration/ and
checkpoint.py).

* fresh load with ``quantization_config=FairCalibConfig(...)``: the float model loads normally, then
  ``_process_model_after_weight_loading`` calibrates and packs it block by block;
* pre-quantized load (``config.json`` has ``quant_method: "fair_calib"``): the before-load hook builds the
  packed skeleton, the tensors load into it by name, and the after-load hook refuses missing or
  mis-shaped packed tensors.

Either way the after-load hook ends with :func:`.modules.prepare_loaded_model`: linears whose weights sit on a CPU
with AVX-512 VNNI switch to the GEMM's prepared weight layout (bit-identical, same memory).
"""
from __future__ import annotations

import copy
import logging

import torch
from transformers.quantizers import HfQuantizer
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)

from . import ops
from ._compat import VersionCompatHooks
from .architectures import get_adapter
from .calibration import calibrate, check_method_implemented, check_positions
from .checkpoint import (
    PACKED_SUFFIXES,
    PRIOR_METADATA_KEY,
    CheckpointMismatchError,
    build_packed_skeleton,
    check_safetensors_files,
    foreign_quantization,
    locate_checkpoint_files,
    missing_packed_keys,
    read_header_metadata,
    restore_float32_buffers,
    safetensors_metadata,
    verify_checkpoint_files,
    verify_loaded_model,
)
from .config import QUANT_METHOD, FairCalibConfig
from .dtypes import float_dtype
from .hub import load_options_in_progress
from .modules import PackedLinear, cpu_layout_choice, prepare_loaded_model
from .saving import install_save_compat
from .targets import set_submodule
from .version import __version__

logger = logging.getLogger(__name__)

MODEL_TAGS = ["fair_calib", "w4a4", "4-bit", "dllm"]
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""Load dtypes of the float parts (embeddings, norms, head, biases); packed buffers have their own dtypes."""


class FairCalibHfQuantizer(VersionCompatHooks, HfQuantizer):
    """transformers quantizer for ``FairCalibConfig`` (``quant_method = "fair_calib"``)."""

    requires_calibration = False
    required_packages = ["torch", "safetensors"]

    def __init__(self, quantization_config: FairCalibConfig, **kwargs):
        super().__init__(quantization_config, **kwargs)
        self.dtype = None
        self.checkpoint_files = None
        self.calibration_report = None
        self.prior_json = None  # the Stage I prior, carried into every save
        self.hub_options = {}  # revision / cache_dir / ... of the load, for the files read here (hub.py)

    # -- before loading -------------------------------------------------------------------------------
    def validate_environment(self, *args, **kwargs):
        self.hub_options = load_options_in_progress()
        cpu_layout_choice()  # a bad FAIR_CALIB_CPU_LAYOUT fails here, before anything is read or calibrated
        if not self.pre_quantized:
            check_method_implemented(self.quantization_config.method)
            check_calibration_device(self.quantization_config.calibration_device)
            if self.quantization_config.requires_calibration_data and self.quantization_config.calibration_dataset is None:
                raise ValueError(f"FairCalibConfig(method={self.quantization_config.method!r}) needs calibration_dataset")
            if self.quantization_config.prior_path is not None and not self.quantization_config.uses_prior:
                raise ValueError(f"FairCalibConfig(method={self.quantization_config.method!r}) with prior_path: the "
                                 "Stage I position prior applies to method='fair_calib' (or 'gptq' with "
                                 "gptq_position_weights='prior') only; drop prior_path or use one of those")
        for device_type in ("cpu", "cuda"):
            if device_type == "cpu" or torch.cuda.is_available():
                if ops.active_backend(device_type) == "reference":
                    logger.warning("fair_calib_hf: W4A4 ops on %s run on the pure-torch reference backend "
                                   "(exact, slow): no compiled %s kernels in this build", device_type, device_type)

    def update_dtype(self, dtype):
        if isinstance(dtype, torch.dtype) and dtype not in SUPPORTED_DTYPES:  # ("auto" resolves later)
            raise ValueError(f"fair_calib: unsupported dtype {dtype}; load the model in one of "
                             f"{', '.join(str(d).replace('torch.', '') for d in SUPPORTED_DTYPES)}")
        self.dtype = dtype
        return dtype

    def _process_model_before_weight_loading(self, model, **kwargs):
        get_adapter(model)  # unsupported architecture → clear error before any weight is read
        self.checkpoint_files = self.hook_checkpoint_files(kwargs)
        source = getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None)
        if self.pre_quantized:
            # resolved once (4.57 does not pass them): the checks here and the reads after loading use these files
            self.checkpoint_files = self.checkpoint_files or locate_checkpoint_files(source, self.hub_options)
            check_safetensors_files(self.checkpoint_files)
            build_packed_skeleton(model, self.quantization_config)
            # shapes/dtypes against the config, before transformers loads (the headers do not change after)
            verify_checkpoint_files(model, self.checkpoint_files)
        else:
            foreign = foreign_quantization(source, self.hub_options)
            if foreign is not None:
                raise ValueError(f"fair_calib: {source} is already quantized with quant_method={foreign!r}; "
                                 "fair_calib calibrates full-precision checkpoints only")
            check_positions(self.quantization_config, model.config)  # before any weight is read
        return model

    def update_parallel_plan(self, model, plan):
        """No tensor-/expert-parallel plan entries for packed modules (5.x calls this on every load with
        ``model.tp_plan`` / ``model.ep_plan``). The base class would add entries for its serialized names and
        fails on remote code without a plan (the real LLaDA code: ``model.tp_plan`` is ``None``)."""
        return None

    # -- while loading (4.57 only, via VersionCompatHooks) ---------------------------------------------
    def on_missing_keys(self, model, missing_keys):
        missing = missing_packed_keys(model, missing_keys) if self.pre_quantized else []
        if missing:
            raise CheckpointMismatchError(
                f"fair_calib checkpoint is missing packed tensors: {', '.join(missing[:8])}"
                + (f" ... ({len(missing)} in all)" if len(missing) > 8 else "")
            )

    def on_unexpected_keys(self, model, unexpected_keys):
        stray = [k for k in unexpected_keys if k.rpartition(".")[2] in PACKED_SUFFIXES]
        if self.pre_quantized and stray:
            raise CheckpointMismatchError(
                f"fair_calib checkpoint has packed tensors for modules its config keeps in float: {', '.join(stray[:8])}"
            )

    # -- after loading --------------------------------------------------------------------------------
    def _process_model_after_weight_loading(self, model, **kwargs):
        if self.pre_quantized:
            files = self.checkpoint_files
            self.prior_json = read_header_metadata(files).get(PRIOR_METADATA_KEY)
            restore_float32_buffers(model, files)
            verify_loaded_model(model)
        else:
            # calibrate on this load's own copy of the config (the caller's object is never changed), and save that
            # copy with the seq_len actually used: the longest calibration sequence (the default 1024 only caps
            # the texts rtn / quarot use whole, which may be much shorter, and the model may hold fewer positions)
            config = copy.copy(self.quantization_config)
            self.calibration_report = calibrate(model, config, hub_options=self.hub_options)
            if self.calibration_report.seq_len is not None:
                config.seq_len = self.calibration_report.seq_len
            self.quantization_config = model.config.quantization_config = config
            if self.calibration_report.prior is not None:
                self.prior_json = self.calibration_report.prior.to_json()
            logger.info("fair_calib: %s", self.calibration_report.summary())
        prepared = prepare_loaded_model(model)  # the CPU GEMM's weight layout (bit-identical; FAIR_CALIB_CPU_LAYOUT)
        if prepared:
            logger.info("fair_calib: %d int4-weight linears hold the prepared CPU weight layout", prepared)
        model.add_model_tags(MODEL_TAGS)
        install_save_compat(model)  # Dream's remote generation config breaks save_pretrained otherwise
        return model

    # -- saving ---------------------------------------------------------------------------------------
    def get_state_dict_and_metadata(self, model, *args, **kwargs):
        return None, safetensors_metadata(self.quantization_config, __version__, self.prior_json)

    @property
    def is_trainable(self) -> bool:
        return False

    def _dequantize(self, model, dtype=None):
        """Replace every packed linear by the float ``nn.Linear`` it computes (``to_linear``), in
        ``dtype``: a ``torch.dtype`` or its name (``save_pretrained`` leaves ``model.config.dtype`` as the
        string ``"bfloat16"``, and transformers' ``dequantize()`` passes that on); ``None`` or ``"auto"``: the
        dtype of the model's float parameters."""
        dtype = _as_torch_dtype(dtype, model)
        for name, module in list(model.named_modules()):
            if isinstance(module, PackedLinear):
                set_submodule(model, name, module.to_linear(dtype))
        return model


def check_calibration_device(device: str | None) -> None:
    """``ValueError`` for a ``calibration_device`` that is not a torch device, or a CUDA device this process
    cannot use (no CUDA build or no GPU visible, or an index beyond the visible GPUs), with the fix."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"FairCalibConfig: calibration_device={device!r} is not a torch device ({err}); use e.g. "
                         "'cpu', 'cuda' or 'cuda:0', or leave it None (CUDA if available, else CPU)") from None
    if parsed.type == "cuda":
        fix = "set calibration_device='cpu' or leave it None (CUDA if available, else CPU)"
        if not torch.cuda.is_available():
            raise ValueError(f"FairCalibConfig: calibration_device={device!r} but CUDA is not available (torch "
                             f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); {fix}")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"FairCalibConfig: calibration_device={device!r} but only {torch.cuda.device_count()} "
                             f"CUDA device(s) are visible; {fix}")


def _as_torch_dtype(dtype, model) -> torch.dtype:
    """``dtype`` (a ``torch.dtype``, a name such as ``"bfloat16"`` / ``"torch.float16"``, ``"auto"`` or
    ``None``) as a ``torch.dtype``; ``"auto"``/``None`` mean the dtype of the model's first float parameter.
    Raises ``ValueError`` for anything else."""
    if dtype is None or dtype == "auto":
        return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    try:
        return float_dtype(dtype)
    except ValueError as error:
        raise ValueError(f"dequantize: {error}") from None


def register() -> None:
    """Register the config and the quantizer with transformers' ``register_quantization_config`` /
    ``register_quantizer``. Idempotent: a re-import or ``importlib.reload`` replaces our own earlier entry;
    an entry from another package under the same name is an error."""
    for mapping, decorator, cls in ((AUTO_QUANTIZATION_CONFIG_MAPPING, register_quantization_config, FairCalibConfig),
                                    (AUTO_QUANTIZER_MAPPING, register_quantizer, FairCalibHfQuantizer)):
        existing = mapping.get(QUANT_METHOD)
        if existing is None:
            decorator(QUANT_METHOD)(cls)
        elif existing.__module__ == cls.__module__ and existing.__qualname__ == cls.__qualname__:
            mapping[QUANT_METHOD] = cls
        else:
            raise RuntimeError(f"quant_method {QUANT_METHOD!r} is already registered by {existing.__module__}")
