"""fair_calib_hf: FAIR-Calib W4A4 post-training quantization for diffusion LMs, as a transformers plugin.

Importing the package registers ``FairCalibConfig`` and ``FairCalibHfQuantizer`` under the quantization
method ``"fair_calib"``; import it before ``from_pretrained`` (also when reloading a quantized checkpoint).
Subpackages load on first attribute access (``fair_calib_hf.zoo.resolve(...)`` works after ``import
fair_calib_hf``) and cost nothing until then.
"""
from ._compat import check_transformers_version

check_transformers_version()

from .config import FairCalibConfig  # noqa: E402
from .modules import W4A4Linear, W4A8Linear, W8A8Linear, WeightOnlyLinear  # noqa: E402
from .quantizer import FairCalibHfQuantizer, register  # noqa: E402
from .version import __version__  # noqa: E402

register()

_LAZY_SUBMODULES = ("architectures", "calibration", "checkpoint", "decoding", "diagnostics", "modules", "ops",
                    "packing", "reference_models", "report", "targets", "zoo")


def __getattr__(name: str):
    """PEP 562: import a subpackage on first access (``fair_calib_hf.zoo``); ``AttributeError`` otherwise."""
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["FairCalibConfig", "FairCalibHfQuantizer", "W4A4Linear", "W4A8Linear", "W8A8Linear", "WeightOnlyLinear",
           "__version__"]
