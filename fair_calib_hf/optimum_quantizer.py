"""``FairCalibQuantizer``: optimum's ``OptimumQuantizer`` interface over calibrate-on-load.

::

    from fair_calib_hf import FairCalibConfig
    from fair_calib_hf.optimum_quantizer import FairCalibQuantizer

    quantizer = FairCalibQuantizer.from_pretrained("GSAI-ML/LLaDA-8B-Instruct")       # or a folder, zoo:NAME
    quantizer.quantize("llada-w4a4/", quantization_config=FairCalibConfig(method="fair_calib",
                                                                            calibration_dataset="data.jsonl"))

``from_pretrained`` checks the model (supported family, not already quantized, readable files) without
loading weights; ``quantize`` loads it with the config (calibration happens on load), and saves the packed
checkpoint, tokenizer, Stage I prior and report atomically into ``save_dir``. An in-memory float model is
accepted too: it is written to a temporary folder first (``save_pretrained`` keeps its remote code), which lives
as long as the quantizer does, so one quantizer quantizes as often as asked. The caller's config is not changed
(each quantization works on a copy that carries the model's own tokenizer).
optimum is optional: without it the class has the same methods and no optimum base class.
"""
from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

try:
    from optimum.quantization_base import OptimumQuantizer as _Base
except ImportError:  # optimum not installed: same interface, no base class
    _Base = object


class FairCalibQuantizer(_Base):
    """Quantize a LLaDA-/Dream-style model to W4A4 with FAIR-Calib (see the module docstring)."""

    def __init__(self, model_path: str, load_options: dict | None = None, _tmp: str | None = None):
        self.model_path = model_path
        self.load_options = dict(load_options or {})
        self._tmp = _tmp
        if _tmp is not None:  # the in-memory model's folder: removed with the quantizer (or at exit), not before
            weakref.finalize(self, shutil.rmtree, _tmp, ignore_errors=True)

    @classmethod
    def from_pretrained(cls, model_or_path, file_name: str | None = None, **load_options) -> "FairCalibQuantizer":
        """``model_or_path``: a folder, hub id, ``zoo:NAME``, or a float ``PreTrainedModel``. ``load_options``
        go to ``AutoModel.from_pretrained`` at quantization time (``dtype``, ``device_map``,
        ``offload_folder``, ``trust_remote_code``; the hub options ``revision``, ``subfolder``, ``cache_dir``,
        ``local_files_only``, ``token`` reach every file read, the checks here included). ``file_name`` is part of optimum's interface and must be
        ``None`` (the checkpoint's own safetensors files are used)."""
        from .cli.commands import preflight, resolve_model
        from .hub import options_of
        from .saving import tolerant_generation_config

        if file_name is not None:
            raise ValueError("FairCalibQuantizer.from_pretrained: file_name is not supported (the checkpoint's "
                             "safetensors files are read through transformers)")
        tmp = None
        if not isinstance(model_or_path, (str, Path)):
            tmp = tempfile.mkdtemp(prefix="fair_calib_src_")
            with tolerant_generation_config(model_or_path):  # Dream's remote generation config (saving.py)
                model_or_path.save_pretrained(tmp)
            tokenizer = load_options.pop("tokenizer", None)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            model_or_path = tmp
        hub = options_of(load_options)  # revision / cache_dir / ...: for the checks here as for the load
        path, is_local, _ = resolve_model(str(model_or_path), hub)
        preflight(path, trust_remote_code=bool(is_local or load_options.get("trust_remote_code")), hub_options=hub)
        if is_local:
            load_options.setdefault("trust_remote_code", True)
        return cls(str(model_or_path), load_options, tmp)

    def quantize(self, save_dir, file_prefix: str | None = None, quantization_config=None, overwrite: bool = False,
                 report: bool = True, **kwargs) -> str:
        """Calibrate, pack and save into ``save_dir`` (refused if it exists, unless ``overwrite``); returns the
        folder. ``quantization_config`` is a ``FairCalibConfig`` (default: data-free RTN). With ``report``, a
        zoo model's report also measures the frontier diagnostics and task accuracy against the full-precision
        model on 16 test-split examples of its task, as ``fair-calib quantize`` does."""
        from .cli.commands import quantize_to_folder
        from .config import FairCalibConfig

        if file_prefix is not None:
            raise ValueError("FairCalibQuantizer.quantize: file_prefix is not supported (transformers names the files)")
        config = quantization_config if quantization_config is not None else FairCalibConfig(method="rtn")
        if not isinstance(config, FairCalibConfig):
            raise TypeError(f"quantization_config must be a FairCalibConfig, got {type(config).__name__}")
        result = quantize_to_folder(self.model_path, str(save_dir), config, overwrite=overwrite, report=report,
                                    load_options={**self.load_options, **kwargs})
        return result["out"]
