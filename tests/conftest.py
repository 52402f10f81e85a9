import pytest
import torch

import fair_calib_hf  # noqa: F401  (registers the quantizer)
from fair_calib_hf.reference_models import save_tiny

CALIB_TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 2,
    "def add(a, b):\n    return a + b\n",
    "12 + 35 = 47; 47 * 2 = 94; 94 - 9 = 85.",
    "Diffusion language models fill masked tokens over many steps.",
]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """A tiny random checkpoint per reference family, written once per session."""
    root = tmp_path_factory.mktemp("tiny")
    return {kind: save_tiny(kind, str(root / kind), seed=0) for kind in ("llada", "dream")}


@pytest.fixture
def input_ids():
    return torch.randint(5, 90, (2, 24), generator=torch.Generator().manual_seed(0))
