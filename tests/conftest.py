import os

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


CPU_ISAS = ["scalar", "avx2", "avx512vnni"]
"""The compiled CPU GEMM's instruction sets (``fair_calib_hf.ops.cpu.set_isa``)."""


def skip_without_cpu_extension():
    """Skip the calling test module when ``fair_calib_hf._C`` is not built; an error instead under
    FAIR_CALIB_REQUIRE_EXT=1 (set by tests/run.sh, so CI fails if the build silently fell back)."""
    from fair_calib_hf.ops import cpu

    if cpu._C is None:
        if os.environ.get("FAIR_CALIB_REQUIRE_EXT") == "1":
            raise RuntimeError("FAIR_CALIB_REQUIRE_EXT=1 but fair_calib_hf._C is not built")
        pytest.skip("native extension not built", allow_module_level=True)


@pytest.fixture(params=CPU_ISAS)
def isa(request):
    """Run the test with the CPU GEMM (and the quantizer, which follows it) forced to one instruction set (skipped
    if this CPU lacks it; only for tests of the compiled kernels, which skip without the extension)."""
    from fair_calib_hf.ops import cpu

    if request.param not in cpu.supported_isas():
        pytest.skip(f"this CPU cannot run the {request.param} kernels (supported: {cpu.supported_isas()})")
    previous = cpu.set_isa(request.param)
    assert cpu.backend_name() == request.param
    yield request.param
    cpu.set_isa(previous)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """A tiny random checkpoint per reference family, written once per session."""
    root = tmp_path_factory.mktemp("tiny")
    return {kind: save_tiny(kind, str(root / kind), seed=0) for kind in ("llada", "dream")}


@pytest.fixture
def input_ids():
    return torch.randint(5, 90, (2, 24), generator=torch.Generator().manual_seed(0))
