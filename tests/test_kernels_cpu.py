"""Compiled CPU kernels against the pure-torch reference, bit for bit, on random inputs with tails and
extreme tiles, for every GEMM instruction set this CPU can run (AVX-512 VNNI, AVX2, scalar; the ones it
lacks are skipped with the reason). Skipped when the package was installed without its native extension,
unless FAIR_CALIB_REQUIRE_EXT=1 (set by tests/run.sh, so CI fails if the build silently fell back)."""
import os
import subprocess
import sys

import pytest
import torch
from conftest import CPU_ISAS as ISAS, skip_without_cpu_extension

from fair_calib_hf import W4A4Linear, ops
from fair_calib_hf.calibration.transforms import kronecker_factors
from fair_calib_hf.ops import cpu, reference
from fair_calib_hf.ops.exactness import assert_quantize_act_close
from fair_calib_hf.packing import pack_int4, unpack_int4

skip_without_cpu_extension()

SHAPES = [(1, 1, 1), (1, 7, 64), (3, 5, 7), (17, 9, 64), (5, 33, 257), (4, 8, 4096), (4, 8, 4226), (2, 3, 9000),
          (33, 130, 200), (7, 6, 127), (9, 5, 129), (70, 3, 255), (1, 37, 130), (150, 37, 333)]

# the `isa` fixture (conftest.py) runs a test once per instruction set this CPU supports


def _codes(shape, seed):
    return torch.randint(-8, 8, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.int8)


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_int32_accumulators_identical(isa, m, n, k):
    xp, wp = pack_int4(_codes((m, k), k)), pack_int4(_codes((n, k), k + 1))
    assert torch.equal(cpu.int4_matmul_int32(xp, wp), reference.int4_matmul_int32(xp, wp, k))


def test_random_shapes_every_isa():
    """Random M, N (small, not multiples of the register blocks) and K (not multiples of the vector widths)."""
    g = torch.Generator().manual_seed(1234)
    shapes = [(int(torch.randint(1, 40, (1,), generator=g)), int(torch.randint(1, 40, (1,), generator=g)),
               int(torch.randint(1, 700, (1,), generator=g))) for _ in range(12)]
    previous = cpu.backend_name()
    try:
        for name in cpu.supported_isas():
            cpu.set_isa(name)
            for m, n, k in shapes:
                xp, wp = pack_int4(_codes((m, k), m * k)), pack_int4(_codes((n, k), n * k + 7))
                ref = reference.int4_matmul_int32(xp, wp, k)
                assert torch.equal(cpu.int4_matmul_int32(xp, wp), ref), (name, m, n, k)
    finally:
        cpu.set_isa(previous)


def test_isa_selection():
    supported = cpu.supported_isas()
    assert supported[0] == "scalar" and set(supported) <= set(ISAS)
    assert cpu.set_isa("auto") in supported
    assert cpu.backend_name() == supported[-1]  # auto = the best supported
    with pytest.raises(ValueError, match="unknown CPU ISA"):
        cpu.set_isa("sse9")
    for name in set(ISAS) - set(supported):
        with pytest.raises(ValueError, match="cannot run"):
            cpu.set_isa(name)
    assert cpu.backend_name() == supported[-1]  # a refused choice leaves the selection alone


@pytest.mark.parametrize("value", ["scalar", "avx2", "no-such-isa"])
def test_isa_environment_variable(value):
    code = "import fair_calib_hf.ops as o; print(o.active_backend('cpu'))"
    env = dict(os.environ, FAIR_CALIB_CPU_ISA=value)
    env.pop("FAIR_CALIB_BACKEND", None)
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    if value in cpu.supported_isas():
        assert out.stdout.strip() == value
    else:
        assert out.stdout.strip() == cpu.supported_isas()[-1]
        assert "FAIR_CALIB_CPU_ISA" in out.stderr


@pytest.mark.parametrize("m", [3, 50])  # 50 tokens: full and partial register tiles of 16-token vectors
@pytest.mark.parametrize("value", [-8, 7])
def test_extreme_tiles(isa, value, m):
    k = 9000  # crosses the int16 widening boundary (4096 codes) twice, plus a tail
    x = torch.full((m, k), value, dtype=torch.int8)
    w = torch.full((5, k), -8, dtype=torch.int8)
    w[1::2] = 7
    acc = cpu.int4_matmul_int32(pack_int4(x), pack_int4(w))
    assert torch.equal(acc, reference.int4_matmul_int32(pack_int4(x), pack_int4(w), k))
    assert int(acc[0, 0]) == value * -8 * k


def test_register_tile_tails_and_extreme_codes(isa):
    """Every token count 1..13 (VNNI: up to 12 tokens take the dot-product kernel, 4 tokens × 4 channels per
    tile; from 13 the regrouped kernel, 6 tokens × 64 channels per tile: all remainders of both) against N with
    full and partial 64-channel blocks and a K whose packed width is not a multiple of 4 or 64 bytes, with
    random codes and the extreme codes -8 / 7 on both sides; int32 accumulators and the fused fp32 epilogue
    (with a bias) must both be bit-identical."""
    g = torch.Generator().manual_seed(77)
    n, k = 200, 301  # 3 blocks of 64 channels + 8; 151 packed bytes
    w = _codes((n, k), 5)
    w[:3] = -8
    w[3:6] = 7
    wp = pack_int4(w)
    sw, bias = torch.rand(n, 1, generator=g) + 1e-3, torch.randn(n, generator=g)
    for m in range(1, 14):
        x = _codes((m, k), m)
        x[0] = -8
        if m > 1:
            x[-1] = 7
        xp, sx = pack_int4(x), torch.rand(m, generator=g) + 1e-3
        assert torch.equal(cpu.int4_matmul_int32(xp, wp), reference.int4_matmul_int32(xp, wp, k)), m
        got = ops.w4a4_gemm(xp, sx, wp, sw, bias, k, torch.float32)
        assert torch.equal(got, reference.w4a4_gemm_reference(xp, sx, wp, sw, bias, k, torch.float32)), m


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("m,n,k", [(1, 7, 64), (33, 130, 200), (4, 8, 4226)])
def test_gemm_output_identical(isa, dtype, with_bias, m, n, k):
    g = torch.Generator().manual_seed(m + n + k)
    xp, wp = pack_int4(_codes((m, k), 1)), pack_int4(_codes((n, k), 2))
    sx, sw = torch.rand(m, generator=g) + 1e-3, torch.rand(n, 1, generator=g) + 1e-3
    bias = torch.randn(n, generator=g).to(dtype) if with_bias else None
    got = ops.w4a4_gemm(xp, sx, wp, sw, bias, k, dtype)
    assert torch.equal(got, reference.w4a4_gemm_reference(xp, sx, wp, sw, bias, k, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("transform", [False, True])
@pytest.mark.parametrize("m,k", [(1, 1), (5, 13), (64, 96), (7, 4097), (9, 4096), (3, 18944)])
def test_quantize_matches_reference(isa, dtype, transform, m, k):
    """Bit-identical without a Kronecker transform; with one (the fused kernel), within the stated tolerance."""
    g = torch.Generator().manual_seed(m * k)
    x = (torch.randn(m, k, generator=g) * torch.logspace(-2, 2, k)[None]).to(dtype)
    x[0] = 0.0  # zero row: scale 1
    left = right = None
    diag = torch.rand(k, generator=g) + 0.5
    if transform and k % 8 == 0:
        a, b = kronecker_factors(k)
        left, right = torch.randn(a, a, generator=g) / a ** 0.5, torch.randn(b, b, generator=g) / b ** 0.5
    clip = torch.tensor(0.93)
    for d, c in ((diag, clip), (None, None)):
        assert_quantize_act_close(ops.quantize_act_int4(x, left, right, d, c), x, left, right, d, c)


@pytest.mark.parametrize("a,b", [(8, 8), (64, 64), (96, 128), (128, 148), (112, 128), (2, 300), (7, 13), (1, 5)])
def test_fused_transform_within_tolerance(isa, a, b):
    """Random factor sizes (register-tile tails in rows and columns) and extreme magnitudes."""
    k, m = a * b, 11
    g = torch.Generator().manual_seed(k)
    x = torch.randn(m, k, generator=g) * torch.logspace(-3, 3, k)[torch.randperm(k, generator=g)][None]
    x[1] = 0.0
    x[2, :] = 1e30
    left, right = torch.randn(a, a, generator=g) / a ** 0.5, torch.randn(b, b, generator=g) / b ** 0.5
    diag, clip = torch.rand(k, generator=g) + 0.5, torch.tensor(0.9)
    assert_quantize_act_close(ops.quantize_act_int4(x, left, right, diag, clip), x, left, right, diag, clip)


def test_exactness_check_rejects_real_errors():
    """The tolerance check is not vacuous: a code moved far from a tie, two steps, or a scale off fails it."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, generator=g)
    left, right = torch.randn(8, 8, generator=g), torch.randn(8, 8, generator=g)
    packed, scale = reference.quantize_act_reference(x, left, right, None, None)
    assert_quantize_act_close((packed, scale), x, left, right)
    codes = unpack_int4(packed, 64)
    xt = (x.double() @ torch.kron(left.double(), right.double())) / scale.double()[:, None]
    far = int((((xt.abs() - xt.abs().floor()) - 0.5).abs() > 0.1).flatten().nonzero()[0])
    for delta in (1, 2):
        moved = codes.clone().flatten()
        moved[far] = moved[far] + (delta if moved[far] < 0 else -delta)
        with pytest.raises(AssertionError, match="not at a rounding tie" if delta == 1 else "by 2 steps"):
            assert_quantize_act_close((pack_int4(moved.reshape(codes.shape)), scale), x, left, right)
    with pytest.raises(AssertionError, match="relative"):
        assert_quantize_act_close((packed, scale * (1 + 1e-4)), x, left, right)
    with pytest.raises(AssertionError, match="must be equal"):
        assert_quantize_act_close((packed, scale), x)


def test_packed_linear_uses_the_compiled_backend_and_matches_reference():
    torch.manual_seed(0)
    lin = torch.nn.Linear(200, 48, bias=True)
    q = W4A4Linear.from_linear(lin, input_clip=0.9)
    x = torch.randn(3, 11, 200)
    xp, sx = reference.quantize_act_reference(x.reshape(-1, 200), None, None, None, q.input_clip)
    ref = reference.w4a4_gemm_reference(xp, sx, q.weight_packed, q.weight_scale, q.bias, 200, x.dtype)
    assert torch.equal(q(x).reshape(-1, 48), ref)
    assert ops.active_backend("cpu") in ISAS


needs_prepared = pytest.mark.skipif(not cpu.prepared_layout_available(),
                                    reason="the prepared weight layout needs AVX-512 VNNI and the compiled kernels")


@needs_prepared
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (3, 5, 7), (13, 130, 257), (20, 64, 4096), (7, 200, 301),
                                   (2, 37, 9000)])
def test_prepared_weights_roundtrip_and_gemm_identical(isa, m, n, k):
    """The prepared layout holds the same codes (unprepare restores them byte for byte) in 0.5 byte per weight
    plus the padding of N to 64 rows and of the packed width to 64 bytes, and the GEMM on it is bit-identical to
    the reference on every instruction set (VNNI reads it directly; the others unprepare a copy), with tails in
    M, N and K and the extreme codes -8 / 7."""
    w = _codes((n, k), n + k)
    w[0] = -8
    w[-1] = 7
    x = _codes((m, k), m)
    x[0] = -8
    xp, wp = pack_int4(x), pack_int4(w)
    prepared = cpu.prepare_weight(wp)
    kb = wp.shape[1]
    assert prepared.dtype == torch.uint8 and prepared.numel() == -(-n // 64) * 64 * (-(-kb // 64) * 64)
    assert torch.equal(cpu.unprepare_weight(prepared, n, kb), wp)
    assert torch.equal(cpu.int4_matmul_int32_prepared(xp, prepared, n), reference.int4_matmul_int32(xp, wp, k))
    g = torch.Generator().manual_seed(m * n)
    sx, sw, bias = torch.rand(m, generator=g) + 1e-3, torch.rand(n, 1, generator=g) + 1e-3, torch.randn(n, generator=g)
    for dtype in (torch.float32, torch.bfloat16):
        got = ops.w4a4_gemm_prepared(xp, sx, prepared, sw, bias.to(dtype), n, k, dtype)
        assert torch.equal(got, reference.w4a4_gemm_reference(xp, sx, wp, sw, bias.to(dtype), k, dtype))


@needs_prepared
def test_prepared_module_keeps_results_and_checkpoint_format():
    """A W4A4Linear holding the prepared layout: bit-identical forward, the same state dict (keys, order, packed
    bytes), re-prepared after loading a state dict and after a dtype cast, packed again when it leaves the CPU
    path (to_linear, and `prepare_cpu_layout` on the model counts it)."""
    import copy

    from fair_calib_hf.modules import prepare_cpu_layout

    torch.manual_seed(0)
    q = W4A4Linear.from_linear(torch.nn.Linear(300, 130, bias=True), input_clip=0.9)
    x = torch.randn(2, 9, 300)
    y, sd, lin = q(x), q.state_dict(), q.to_linear()
    model = torch.nn.Sequential(q)
    assert prepare_cpu_layout(model) == 1 and q.weight_packed is None
    assert torch.equal(q(x), y)
    sd2 = q.state_dict()
    assert list(sd2) == list(sd) and all(torch.equal(sd2[key], sd[key]) for key in sd)
    assert torch.equal(q.to_linear().weight, lin.weight) and torch.equal(q.packed_weight(), sd["weight_packed"])
    assert torch.equal(copy.deepcopy(q)(x), y)
    other = W4A4Linear.from_linear(torch.nn.Linear(300, 130, bias=True), input_clip=0.9)
    other.prepare_cpu_layout()
    other.load_state_dict(sd)
    assert other.weight_packed is None and torch.equal(other(x), y)
    q.to(torch.bfloat16)
    assert q.weight_packed is None and torch.equal(q(x.bfloat16()), other.to(torch.bfloat16)(x.bfloat16()))
