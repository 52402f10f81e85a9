"""fair_calib_hf: FAIR-Calib W4A4 post-training quantization for diffusion LMs, as a transformers plugin.

Importing the package registers ``FairCalibConfig`` and ``FairCalibHfQuantizer`` under the quantization
method ``"fair_calib"``; import it before ``from_pretrained`` (also when reloading a quantized checkpoint).
"""
from ._compat import check_transformers_version

check_transformers_version()

from .config import FairCalibConfig  # noqa: E402
from .modules import W4A4Linear  # noqa: E402
from .quantizer import FairCalibHfQuantizer, register  # noqa: E402
from .version import __version__  # noqa: E402

register()

__all__ = ["FairCalibConfig", "FairCalibHfQuantizer", "W4A4Linear", "__version__"]
