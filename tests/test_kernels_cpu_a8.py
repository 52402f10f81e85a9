"""Compiled CPU kernels of the 8-bit-activation precisions against the pure-torch reference: the int8 activation
quantizer (bit-identical without a Kronecker transform, within the stated tolerance with the fused one) and the
W4A8 GEMM (int8 activations × packed int4 weights: bit-identical int32 accumulators and outputs), on every
instruction set this CPU can run, with tails in M, N and K and the extreme codes; W8A8 (torch's ``_int_mm``) and
both modules end to end. Skipped when the package was installed without its native extension, unless
FAIR_CALIB_REQUIRE_EXT=1 (tests/run.sh)."""
import copy

import pytest
import torch
from conftest import skip_without_cpu_extension

from fair_calib_hf import ops
from fair_calib_hf.calibration.transforms import kronecker_factors
from fair_calib_hf.modules import W4A8Linear, W8A8Linear, prepare_cpu_layout
from fair_calib_hf.ops import cpu, int8_cpu, reference
from fair_calib_hf.ops.exactness import assert_quantize_act_close
from fair_calib_hf.packing import pack_int4

skip_without_cpu_extension()

# the `isa` fixture (conftest.py) runs a test once per instruction set this CPU supports

# (M, N, K): K odd, below / above the vector widths (16 / 32 / 64 / 128 codes) and the AVX2 widening interval (256
# codes), M around the VNNI kernel switch (12 / 13) and its 6-token tiles, N around the 64-channel blocks.
SHAPES = [(1, 1, 1), (1, 7, 64), (3, 5, 7), (2, 9, 15), (17, 9, 65), (5, 33, 257), (12, 70, 127), (13, 70, 129),
          (4, 8, 4097), (2, 3, 9000), (33, 130, 200), (1, 37, 130), (70, 3, 255), (19, 65, 383)]
needs_prepared = pytest.mark.skipif(not cpu.prepared_layout_available(),
                                    reason="the prepared weight layout needs AVX-512 VNNI and the compiled kernels")


def _operands(m, n, k, seed):
    """Random int8 activations and int4 weight codes with the extreme codes in the first / last rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    w = torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8)
    x[0] = -128
    if m > 1:
        x[-1] = 127
    w[0] = -8
    if n > 1:
        w[-1] = 7
    return x, w


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_w4a8_int32_accumulators_identical(isa, m, n, k):
    x, w = _operands(m, n, k, m * n + k)
    wp = pack_int4(w)
    ref = reference.int_matmul_int32(x, w, 8, 4)
    assert torch.equal(cpu.int8x4_matmul_int32(x, wp), ref)
    if cpu.prepared_layout_available():  # under AVX2 / scalar the prepared GEMM unprepares a copy
        assert torch.equal(cpu.int8x4_matmul_int32_prepared(x, cpu.prepare_weight(wp), n), ref)


@pytest.mark.parametrize("m", [3, 50])
def test_w4a8_extreme_tiles(isa, m):
    """All-extreme operands over a K that crosses every widening boundary of the AVX2 int16 accumulators."""
    k = 9000
    w = torch.full((5, k), -8, dtype=torch.int8)
    w[1::2] = 7
    for value in (-128, 127):
        x = torch.full((m, k), value, dtype=torch.int8)
        acc = cpu.int8x4_matmul_int32(x, pack_int4(w))
        assert torch.equal(acc, reference.int_matmul_int32(x, w, 8, 4))
        assert int(acc[0, 0]) == value * -8 * k


def test_w4a8_register_tile_tails(isa):
    """Every token count 1..14 (VNNI: up to 12 the dot-product kernel, from 13 the 6-token tiles) against 3 full
    64-channel blocks + 8 channels, K odd: int32 accumulators and the fused epilogue with a bias."""
    n, k = 200, 301
    g = torch.Generator().manual_seed(5)
    sw, bias = torch.rand(n, 1, generator=g) + 1e-3, torch.randn(n, generator=g)
    _, w = _operands(1, n, k, 1)
    wp = pack_int4(w)
    for m in range(1, 15):
        x, _ = _operands(m, 1, k, m)
        sx = torch.rand(m, generator=g) + 1e-3
        assert torch.equal(cpu.int8x4_matmul_int32(x, wp), reference.int_matmul_int32(x, w, 8, 4)), m
        got = ops.w4a8_gemm(x, sx, wp, sw, bias, k, torch.float32)
        assert torch.equal(got, reference.w4a8_gemm_reference(x, sx, wp, sw, bias, k, torch.float32)), m


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("m,n,k", [(1, 7, 63), (33, 130, 200), (4, 8, 4226)])
def test_w4a8_gemm_output_identical(isa, dtype, with_bias, m, n, k):
    g = torch.Generator().manual_seed(m + n + k)
    x, w = _operands(m, n, k, 2)
    wp = pack_int4(w)
    sx, sw = torch.rand(m, generator=g) + 1e-3, torch.rand(n, 1, generator=g) + 1e-3
    bias = torch.randn(n, generator=g).to(dtype) if with_bias else None
    ref = reference.w4a8_gemm_reference(x, sx, wp, sw, bias, k, dtype)
    assert torch.equal(ops.w4a8_gemm(x, sx, wp, sw, bias, k, dtype), ref)
    if cpu.prepared_layout_available():
        got = ops.w4a8_gemm_prepared(x, sx, cpu.prepare_weight(wp), sw, bias, n, k, dtype)
        assert torch.equal(got, ref)


def test_w4a8_gemm_rejects_a_wrong_width():
    x, w = _operands(2, 3, 10, 0)
    with pytest.raises(ValueError, match="expected k=12"):
        ops.w4a8_gemm(x, torch.ones(2), pack_int4(w), torch.ones(3, 1), None, 12, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("transform", [False, True])
@pytest.mark.parametrize("m,k", [(1, 1), (5, 13), (3, 31), (64, 96), (7, 4097), (9, 4096), (3, 18944)])
def test_quantize_int8_matches_reference(isa, dtype, transform, m, k):
    """Bit-identical without a Kronecker transform (with and without diagonal and clip); with one, within the
    stated tolerance. Zero rows, outliers (log-spaced magnitudes) and a clip that saturates codes at -128 / 127."""
    g = torch.Generator().manual_seed(m * k)
    x = (torch.randn(m, k, generator=g) * torch.logspace(-2, 2, k)[None]).to(dtype)
    x[0] = 0.0  # zero row: scale 1
    left = right = None
    diag = torch.rand(k, generator=g) + 0.5
    if transform and k % 8 == 0:
        a, b = kronecker_factors(k)
        left, right = torch.randn(a, a, generator=g) / a ** 0.5, torch.randn(b, b, generator=g) / b ** 0.5
    for d, c in ((diag, torch.tensor(0.61)), (None, None)):
        got = ops.quantize_act_int8(x, left, right, d, c)
        assert_quantize_act_close(got, x, left, right, d, c, bits=8)
        if m > 1 and c is not None and left is None:
            assert int(got[0][1:].min()) == -128 or int(got[0][1:].max()) == 127  # the clip saturates


@pytest.mark.parametrize("a,b", [(8, 8), (64, 64), (96, 128), (7, 13), (1, 5)])
def test_fused_transform_int8_within_tolerance(isa, a, b):
    """Factor sizes with register-tile tails in rows and columns, extreme magnitudes, a zero row."""
    k, m = a * b, 11
    g = torch.Generator().manual_seed(k)
    x = torch.randn(m, k, generator=g) * torch.logspace(-3, 3, k)[torch.randperm(k, generator=g)][None]
    x[1] = 0.0
    x[2, :] = 1e30
    left, right = torch.randn(a, a, generator=g) / a ** 0.5, torch.randn(b, b, generator=g) / b ** 0.5
    diag, clip = torch.rand(k, generator=g) + 0.5, torch.tensor(0.9)
    assert_quantize_act_close(ops.quantize_act_int8(x, left, right, diag, clip), x, left, right, diag, clip, bits=8)


def test_exactness_check_int8_rejects_real_errors():
    """The int8 tolerance check is not vacuous: a code moved far from a tie, two steps, or a scale off fails it."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, generator=g)
    left, right = torch.randn(8, 8, generator=g), torch.randn(8, 8, generator=g)
    codes, scale = reference.quantize_act_int8_reference(x, left, right, None, None)
    assert_quantize_act_close((codes, scale), x, left, right, bits=8)
    xt = (x.double() @ torch.kron(left.double(), right.double())) / scale.double()[:, None]
    far = int((((xt.abs() - xt.abs().floor()) - 0.5).abs() > 0.1).flatten().nonzero()[0])
    for delta in (1, 2):
        moved = codes.clone().flatten()
        moved[far] = moved[far] + (delta if moved[far] < 0 else -delta)
        with pytest.raises(AssertionError, match="not at a rounding tie" if delta == 1 else "by 2 steps"):
            assert_quantize_act_close((moved.reshape(codes.shape), scale), x, left, right, bits=8)
    with pytest.raises(AssertionError, match="relative"):
        assert_quantize_act_close((codes, scale * (1 + 1e-4)), x, left, right, bits=8)
    with pytest.raises(AssertionError, match="must be equal"):
        assert_quantize_act_close((codes, scale), x, bits=8)
    with pytest.raises(AssertionError, match="codes: got"):  # int4-packed codes handed to the int8 check
        assert_quantize_act_close(reference.quantize_act_reference(x), x, bits=8)


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 5, 63), (2, 9, 65), (3, 70, 129), (4, 33, 4097), (5, 7, 200),
                                   (8, 130, 301), (1, 3, 18944)])
def test_w8a8_own_kernel_identical(m, n, k):
    """The package's few-token W8A8 kernel (AVX-512 VNNI) against the reference: int32 accumulators with tails in
    M, N and K and the extreme codes -128 / 127 on both sides (all-extreme rows: the unsigned offset's sums wrap
    past 2^31 in the lanes, the result must not)."""
    if "avx512vnni" not in cpu.supported_isas():
        pytest.skip("the W8A8 kernel needs AVX-512 VNNI")
    g = torch.Generator().manual_seed(m * n + k)
    x = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    x[0], w[0] = -128, -128
    if n > 1:
        w[-1] = 127
    previous = cpu.set_isa("avx512vnni")
    try:
        assert torch.equal(int8_cpu.own_matmul_int32(x, w), reference.int_matmul_int32(x, w, 8, 8))
    finally:
        cpu.set_isa(previous)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("m", [1, int8_cpu.OWN_KERNEL_MAX_M, int8_cpu.OWN_KERNEL_MAX_M + 1, 40])
def test_w8a8_gemm_output_identical(isa, dtype, with_bias, m):
    """``w8a8_gemm`` on both CPU paths (the own kernel up to OWN_KERNEL_MAX_M tokens under VNNI, torch._int_mm with
    the C++ epilogue otherwise) is bit-identical to the reference in every output dtype."""
    n, k = 70, 301
    g = torch.Generator().manual_seed(m)
    x = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    sx, sw = torch.rand(m, generator=g) + 1e-3, torch.rand(n, 1, generator=g) + 1e-3
    bias = torch.randn(n, generator=g).to(dtype) if with_bias else None
    got = ops.w8a8_gemm(x, sx, w, sw, bias, dtype)
    assert torch.equal(got, reference.w8a8_gemm_reference(x, sx, w, sw, bias, dtype))


@pytest.mark.parametrize("cls", [W4A8Linear, W8A8Linear])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_modules_match_reference(isa, cls, dtype):
    """The whole forward (transform + int8 quantization + GEMM) against the reference ops, bit for bit (the
    transform is applied by the reference here so that the comparison is exact)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(200, 70, bias=True)
    q = cls.from_linear(lin, input_clip=0.9).to(dtype)
    x = torch.randn(3, 9, 200).to(dtype)
    x2 = x.reshape(-1, 200)
    xq, sx = reference.quantize_act_int8_reference(x2, None, None, None, q.input_clip)
    if cls is W4A8Linear:
        ref = reference.w4a8_gemm_reference(xq, sx, q.weight_packed, q.weight_scale, q.bias, 200, dtype)
    else:
        ref = reference.w8a8_gemm_reference(xq, sx, q.weight_int8, q.weight_scale, q.bias, dtype)
    assert torch.equal(q(x).reshape(-1, 70), ref)


@needs_prepared
def test_w4a8_prepared_module_keeps_results_and_checkpoint_format():
    """W4A8Linear shares the prepared layout of W4A4Linear: bit-identical forward, the same state dict, packed
    again for saving, re-prepared after a state-dict load and a dtype cast."""
    torch.manual_seed(0)
    q = W4A8Linear.from_linear(torch.nn.Linear(300, 130, bias=True), input_clip=0.9)
    x = torch.randn(2, 9, 300)
    y, sd = q(x), q.state_dict()
    assert prepare_cpu_layout(torch.nn.Sequential(q)) == 1 and q.is_prepared and q.weight_packed is None
    assert torch.equal(q(x), y)
    sd2 = q.state_dict()
    assert list(sd2) == list(sd) and all(torch.equal(sd2[key], sd[key]) for key in sd)
    assert torch.equal(copy.deepcopy(q)(x), y)
    other = W4A8Linear.from_linear(torch.nn.Linear(300, 130, bias=True), input_clip=0.9)
    other.prepare_cpu_layout()
    other.load_state_dict(sd)
    assert other.is_prepared and torch.equal(other(x), y)
    q.to(torch.bfloat16)
    assert q.is_prepared and torch.equal(q(x.bfloat16()), other.to(torch.bfloat16)(x.bfloat16()))
    q.unprepare_cpu_layout()
    assert not q.is_prepared and torch.equal(q.weight_packed, sd["weight_packed"])
