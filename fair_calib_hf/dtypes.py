"""Float dtype names, parsed in one place (the CLI's ``--dtype``, the lm-eval model's ``dtype=``, the quality
benchmark and ``model.dequantize(dtype)`` all accept the same spellings)."""
from __future__ import annotations

import torch


def float_dtype(value) -> torch.dtype:
    """A floating-point ``torch.dtype`` from ``value``: a ``torch.dtype`` or its name, with or without the
    ``torch.`` prefix (``"bfloat16"``, ``"torch.float16"``; what ``save_pretrained`` leaves in
    ``config.dtype``). Raises ``ValueError`` naming the value for anything else (an unknown name, an integer
    dtype such as ``"int8"``)."""
    resolved = value
    if isinstance(value, str):
        resolved = getattr(torch, value.strip().removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"unknown float dtype {value!r}; use a floating-point torch dtype or its name, such as "
                         "'float32', 'bfloat16' or 'float16'")
    return resolved
