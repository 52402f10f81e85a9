"""The one place where transformers 4.57 and 5.x differ for this plugin.

=============================== ======================================= ===================================
concern                         4.57                                    5.x
=============================== ======================================= ===================================
dtype hook                      ``update_torch_dtype(dtype)``           ``update_dtype(dtype)``
serializable / state-dict hooks take ``safe_serialization``             no extra argument
checkpoint files                not passed to the before-load hook      ``checkpoint_files=`` passed
missing packed buffers          ``update_missing_keys`` hook (raise)    header check after load
=============================== ======================================= ===================================

``VersionCompatHooks`` carries the 4.57-only hooks and signatures that accept both call forms; the quantizer
inherits it and stays version-agnostic.
"""
from __future__ import annotations

import transformers
from packaging import version

TRANSFORMERS_VERSION = version.parse(transformers.__version__)
IS_TRANSFORMERS_V5 = TRANSFORMERS_VERSION.major >= 5
SUPPORTED_RANGE = ">=4.57,<4.58 or >=5.0,<6"


def check_transformers_version() -> None:
    """Raise ``ImportError`` for a transformers release outside the supported lines."""
    v = TRANSFORMERS_VERSION.release
    if not ((4, 57) <= v[:2] < (4, 58) or 5 <= v[0] < 6):
        raise ImportError(f"fair_calib_hf supports transformers {SUPPORTED_RANGE}; found {transformers.__version__}")


class VersionCompatHooks:
    """Hook spellings of both transformers lines, forwarding to the version-agnostic methods."""

    def update_torch_dtype(self, dtype):  # 4.57 name of update_dtype
        return self.update_dtype(dtype)

    def update_missing_keys(self, model, missing_keys, prefix):  # 4.57 only: called while matching keys
        self.on_missing_keys(model, list(missing_keys))
        return missing_keys

    def update_unexpected_keys(self, model, unexpected_keys):  # 4.57 only
        self.on_unexpected_keys(model, list(unexpected_keys))
        return unexpected_keys

    def is_serializable(self, *args, **kwargs):  # 4.57 passes safe_serialization
        return True

    @staticmethod
    def hook_checkpoint_files(hook_kwargs: dict):
        """The checkpoint shard paths given to the before-load hook (5.x), or ``None`` (4.57)."""
        return hook_kwargs.get("checkpoint_files")
