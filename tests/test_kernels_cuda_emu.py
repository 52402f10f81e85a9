"""The CUDA kernels' own source, run on the CPU through the host emulation (kernels/cuda/emu/), against the
reference ops. No GPU, nvcc or CUDA headers: g++ builds ``w4a4_gemm.cu``, ``a8_gemm.cu`` and ``w4a4_quant.cu``
with ``-DFC_HOST_EMULATION`` once per architecture path (``FC_EMU_ARCH`` 800: W4A4 on int4
``mma.sync.m16n8k64``; 900: nibbles sign-extended to int8 and ``mma.sync.m16n8k32``; W4A8 and W8A8 run
``m16n8k32`` s8 on both), and the tests call the C ABI like the binding does.

(1) exactness of every kernel variant (small-M, tiled 64- and 128-row CTAs, split-K with the epilogue kernel,
    identity quantization with and without a diagonal, fused Kronecker transform), each under forward and
    reverse thread order; the launch log checks that the intended variant ran;
(2) mutation check: patched copies of the kernels (a wrong fragment index, a removed barrier or wait, a
    missing bounds check, a dropped sign extension) fail the same checks that the real kernels pass;
(3) the 8-bit-activation kernels (W4A8, W8A8 GEMMs, int8 quantization) under the same checks as (1).
"""
import importlib.util
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from fair_calib_hf.ops import reference
from fair_calib_hf.ops.exactness import SCALE_RTOL, TIE_ATOL, assert_quantize_act_close
from fair_calib_hf.packing import pack_int4

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("_fair_calib_cuda_emu",
                                               os.path.join(ROOT, "kernels", "cuda", "emu", "driver.py"))
driver = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(driver)

if driver.compiler() is None and os.environ.get("FAIR_CALIB_REQUIRE_EXT") == "1":
    raise RuntimeError("FAIR_CALIB_REQUIRE_EXT=1 but no C++ compiler (g++) for the CUDA kernels' host emulation")
pytestmark = pytest.mark.skipif(driver.compiler() is None, reason="no C++ compiler (g++) on PATH")
ORDERS = ("forward", "reverse")


@pytest.fixture(scope="module")
def emu():
    """{arch: EmulatedKernels} for both mma paths (built in parallel, cached by source hash)."""
    with ThreadPoolExecutor(len(driver.ARCHS)) as pool:
        paths = list(pool.map(driver.build, driver.ARCHS))
    return {arch: driver.EmulatedKernels(p) for arch, p in zip(driver.ARCHS, paths)}


def _codes(shape, seed):
    return torch.randint(-8, 8, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.int8)


def gemm_variant(launches):
    """(kernel, split) of the GEMM launches: kernel 'small', 'tiled64' or 'tiled128'; split when the grid
    splits K (then the epilogue kernel must follow for float outputs)."""
    main = launches[0]
    if main["kernel"].startswith("gemm_small_m"):
        return "small", main["grid"][1] > 1
    return ("tiled64" if main["block"][0] == 128 else "tiled128"), main["grid"][2] > 1


# (M, N, K, num_sms, variant): M = 1, 16, 17, 64, 300; ragged N; K odd, not a multiple of 32 (binding pads)
# or of 128 (partial pipeline stage); num_sms = 132 makes the planner split K when there are few CTAs.
GEMM_CASES = [
    (1, 7, 64, 1, ("small", False)),
    (1, 40, 4096, 132, ("small", True)),
    (3, 5, 7, 1, ("small", False)),
    (16, 130, 200, 1, ("small", False)),
    (16, 33, 4097, 132, ("small", True)),
    (17, 9, 64, 1, ("tiled64", False)),
    (17, 130, 257, 1, ("tiled64", False)),
    (64, 200, 1000, 1, ("tiled64", False)),
    (64, 77, 4096, 132, ("tiled64", True)),
    (65, 129, 200, 1, ("tiled128", False)),
    (300, 257, 512, 1, ("tiled128", False)),
    (300, 70, 2200, 132, ("tiled128", True)),
]


def check_int32(kernels, m, n, k, num_sms, seed=0):
    """(ok, launches): the emulated int32 accumulators equal the reference's."""
    xp, wp = pack_int4(_codes((m, k), seed)), pack_int4(_codes((n, k), seed + 1))
    got = kernels.gemm(xp, None, wp, None, None, torch.int32, num_sms)
    return torch.equal(got, reference.int4_matmul_int32(xp, wp, k)), kernels.launches()


def test_fragment_layouts_are_one_to_one(emu):
    for kernels in emu.values():
        assert kernels.check_layouts() == 0


@pytest.mark.parametrize("arch", driver.ARCHS)
@pytest.mark.parametrize("m,n,k,num_sms,variant", GEMM_CASES)
def test_emulated_int32_accumulators_identical(emu, arch, m, n, k, num_sms, variant):
    for order in ORDERS:
        emu[arch].set_schedule(order)
        ok, launches = check_int32(emu[arch], m, n, k, num_sms, seed=m + n + k)
        assert ok, f"{order} order"
        assert gemm_variant(launches) == variant and len(launches) == 1  # int32 split-K: no epilogue kernel


@pytest.mark.parametrize("arch", driver.ARCHS)
@pytest.mark.parametrize("order", ["round_robin", "shuffle"])
def test_emulated_other_thread_orders(emu, arch, order):
    emu[arch].set_schedule(order, seed=arch)
    for m, n, k, num_sms, _ in (GEMM_CASES[4], GEMM_CASES[8], GEMM_CASES[11]):
        assert check_int32(emu[arch], m, n, k, num_sms)[0]
    x = _activations(9, 1000, torch.bfloat16, 0)
    ref = reference.quantize_act_reference(x)
    got = emu[arch].quantize(x)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    g = torch.Generator().manual_seed(1)
    left, right = torch.randn(40, 40, generator=g) / 40 ** 0.5, torch.randn(25, 25, generator=g) / 5
    assert_quantize_act_close(emu[arch].quantize(x, left, right), x, left, right)
    emu[arch].set_schedule("forward")


@pytest.mark.parametrize("arch", driver.ARCHS)
@pytest.mark.parametrize("m", [1, 17, 300])
@pytest.mark.parametrize("xv,wv", [(-8, -8), (7, -8), (-8, 7)])
def test_emulated_extreme_tiles(emu, arch, m, xv, wv):
    k, n = 2048, 24
    x = torch.full((m, k), xv, dtype=torch.int8)
    w = torch.full((n, k), wv, dtype=torch.int8)
    w[1::2] = 7
    xp, wp = pack_int4(x), pack_int4(w)
    got = emu[arch].gemm(xp, None, wp, None, None, torch.int32, 132)
    assert torch.equal(got, reference.int4_matmul_int32(xp, wp, k))
    assert int(got[0, 0]) == xv * wv * k and int(got[-1, 1]) == xv * 7 * k


@pytest.mark.parametrize("arch", driver.ARCHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,n,k,num_sms,variant", [GEMM_CASES[i] for i in (0, 1, 6, 8, 10, 11)])
def test_emulated_gemm_output_identical(emu, arch, dtype, m, n, k, num_sms, variant):
    """fp32 epilogue (acc · sx) · sw (+ bias) and the round-to-nearest-even cast, with scales over 60 decades
    (outputs from subnormal to overflowing to inf in every dtype)."""
    g = torch.Generator().manual_seed(m * n + k)
    xp, wp = pack_int4(_codes((m, k), 1)), pack_int4(_codes((n, k), 2))
    sx = (torch.rand(m, generator=g) + 1e-3) * torch.logspace(-30, 30, m)[torch.randperm(m, generator=g)]
    sw = (torch.rand(n, 1, generator=g) + 1e-3) * torch.logspace(-8, 8, n)[torch.randperm(n, generator=g)][:, None]
    bias = (torch.randn(n, generator=g) * 100).to(dtype)
    for b, order in ((None, "forward"), (bias, "reverse")):  # thread orders: test_emulated_int32_...
        ref = reference.w4a4_gemm_reference(xp, sx, wp, sw, b, k, dtype)
        emu[arch].set_schedule(order)
        got = emu[arch].gemm(xp, sx, wp, sw, b, dtype, num_sms)
        assert got.dtype == dtype and torch.equal(got, ref), f"bias={b is not None}"
        launches = emu[arch].launches()
        assert gemm_variant(launches) == variant
        assert len(launches) == (2 if variant[1] else 1)
        assert launches[-1]["kernel"].startswith("epilogue_kernel") == variant[1]
    assert m == 1 or torch.isinf(ref).any()  # the scales reach the overflow


def _activations(m, k, dtype, seed, qmax=7):
    """Rows over a wide dynamic range for the dtype, a zero row (scale 1) and a row of rounding ties (its
    absmax ``qmax``, the largest code: scale 1 without clip)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = {torch.float32: (-30, 30), torch.bfloat16: (-30, 30), torch.float16: (-6, 4)}[dtype]
    x = torch.randn(m, k, generator=g) * torch.logspace(lo, hi, k)[torch.randperm(k, generator=g)][None]
    x[0] = 0.0
    if m > 1:  # max qmax -> scale 1 without clip; x / s lands on .5: round half to even
        x[1] = torch.tensor([float(qmax), 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5])[torch.arange(k) % 8]
    return x.to(dtype)


def _assert_identity_quantize(quantize, kernels, reference_quantize, x):
    """``quantize`` (an emulated quantizer of ``kernels``) without a transform, bit-identical to
    ``reference_quantize`` (same codes dtype and shape) with no diagonal and clip, a clip, and a diagonal and a
    clip, under every schedule order, in one identity-kernel launch; returns the reference of the last case."""
    k = x.shape[1]
    diag = torch.rand(k, generator=torch.Generator().manual_seed(k)) + 0.5
    clip = torch.tensor(0.93)
    for d, c in ((None, None), (None, clip), (diag, clip)):
        ref = reference_quantize(x, None, None, d, c)
        for order in ORDERS:
            kernels.set_schedule(order)
            got = quantize(x, None, None, d, c)
            assert got[0].dtype == ref[0].dtype and got[0].shape == ref[0].shape
            assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]), f"{order}, diag={d is not None}"
            assert [(r["kernel"], r["smem"]) for r in kernels.launches()] == [("quant_identity_kernel", 0)]
    return ref


def _transform_inputs(a, b, m, dtype):
    """x [m, a·b] over a moderate range in ``dtype``, random Kronecker factors ``left`` [a, a] and ``right``
    [b, b], a diagonal near 1 and clip 0.9, from a generator seeded ``a·b + m``."""
    k = a * b
    g = torch.Generator().manual_seed(k + m)
    x = (torch.randn(m, k, generator=g) * torch.logspace(-1, 1, k)[None]).to(dtype)
    left, right = torch.randn(a, a, generator=g) / a ** 0.5, torch.randn(b, b, generator=g) / b ** 0.5
    diag = torch.rand(k, generator=g) + 0.5
    return x, left, right, diag, torch.tensor(0.9)


@pytest.mark.parametrize("arch", driver.ARCHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,k", [(1, 1), (5, 13), (17, 96), (3, 4097), (64, 300)])
def test_emulated_quantize_identity_identical(emu, arch, dtype, m, k):
    _assert_identity_quantize(emu[arch].quantize, emu[arch], reference.quantize_act_reference,
                              _activations(m, k, dtype, m * k))


@pytest.mark.parametrize("arch", driver.ARCHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("a,b,m", [(8, 8, 5), (2, 40, 3), (96, 136, 2), (64, 33, 17)])
def test_emulated_quantize_with_transform(emu, arch, dtype, a, b, m):
    """Fused Kronecker transform + quantization, within the transform tolerance of the reference; the
    scales also against a float64 transform. 96 x 136 needs 51 KB of shared memory: the opt-in launch."""
    k = a * b
    x, left, right, diag, clip = _transform_inputs(a, b, m, dtype)
    for order in ORDERS:
        emu[arch].set_schedule(order)
        got = emu[arch].quantize(x, left, right, diag, clip)
        assert_quantize_act_close(got, x, left, right, diag, clip)
        assert [(r["kernel"], r["smem"]) for r in emu[arch].launches()] == [("quant_kron_kernel", 4 * k)]
    xt = (x.double() * diag.double()) @ torch.kron(left.double(), right.double())
    torch.testing.assert_close(got[1].double(), xt.abs().amax(1) * 0.9 / 7, rtol=1e-5, atol=0)


def test_emulation_reports_launch_errors(emu, monkeypatch):
    """Factors whose row does not fit the opt-in shared memory (227 KB on sm_90) are refused by the support
    check the binding uses; launched anyway, the emulated device refuses the launch with the CUDA error."""
    kernels = emu[900]
    assert kernels.lib.fc_quantize_act_fused_supported(256, 256, driver.OPTIN_SMEM[900]) == 0
    assert kernels.lib.fc_quantize_act_fused_supported(256, 128, driver.OPTIN_SMEM[900]) == 1
    x, eye = torch.ones(1, 65536), torch.eye(256)
    with pytest.raises(ValueError, match="fused kernel does not handle"):
        kernels.quantize(x, eye, eye)
    monkeypatch.setitem(driver.OPTIN_SMEM, 900, 1 << 30)  # skip the support check
    with pytest.raises(driver.EmulationError, match="invalid argument"):
        kernels.quantize(x, eye, eye)


# ------------------------------------------------------------------------------ (3) 8-bit activations
A8_BITS = {"w4a8": 4, "w8a8": 8}  # precision: weight bits (activations int8)
A8_REFERENCE = {"w4a8": reference.w4a8_gemm_reference,
                "w8a8": lambda xq, sx, w, sw, bias, k, dtype: reference.w8a8_gemm_reference(xq, sx, w, sw, bias, dtype)}


def _a8_operands(precision, m, n, k, seed):
    """(int8 activation codes [M, K] over the full range, weight codes [N, K], the stored weights: packed
    uint8 [N, ceil(K/2)] for W4A8, int8 [N, K] for W8A8)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    lim = 1 << (A8_BITS[precision] - 1)
    w = torch.randint(-lim, lim, (n, k), generator=g, dtype=torch.int8)
    return x, w, (pack_int4(w) if precision == "w4a8" else w)


def a8_gemm(kernels, precision, *args):
    return getattr(kernels, f"{precision}_gemm")(*args)


def check_a8_int32(kernels, precision, m, n, k, num_sms, seed=0):
    """(ok, launches): the emulated int32 accumulators of W4A8 / W8A8 equal the reference's."""
    x, w, stored = _a8_operands(precision, m, n, k, seed)
    got = a8_gemm(kernels, precision, x, None, stored, None, None, torch.int32, num_sms)
    return torch.equal(got, reference.int_matmul_int32(x, w, 8, A8_BITS[precision])), kernels.launches()


@pytest.mark.parametrize("arch", driver.ARCHS)
@pytest.mark.parametrize("precision", list(A8_BITS))
@pytest.mark.parametrize("m,n,k,num_sms,variant", GEMM_CASES)
def test_emulated_a8_int32_accumulators_identical(emu, arch, precision, m, n, k, num_sms, variant):
    """The W4A4 cases (M = 1, 16, 17, 64, 300; K odd, not a multiple of 32 or of a stage; split-K) plan the
    same kernel variants with 8-bit activations."""
    for order in ORDERS:
        emu[arch].set_schedule(order)
        ok, launches = check_a8_int32(emu[arch], precision, m, n, k, num_sms, seed=m + n + k)
        assert ok, f"{order} order"
        assert gemm_variant(launches) == variant and len(launches) == 1


@pytest.mark.parametrize("arch", driver.ARCHS)
@pytest.mark.parametrize("precision", list(A8_BITS))
@pytest.mark.parametrize("order", ["round_robin", "shuffle"])
def test_emulated_a8_other_thread_orders(emu, arch, precision, order):
    emu[arch].set_schedule(order, seed=arch)
    for m, n, k, num_sms, _ in (GEMM_CASES[4], GEMM_CASES[8], GEMM_CASES[11]):
        assert check_a8_int32(emu[arch], precision, m, n, k, num_sms)[0]
    x = _activations(9, 1000, torch.bfloat16, 0, qmax=127)
    got, ref = emu[arch].quantize_int8(x), reference.quantize_act_int8_reference(x)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    emu[arch].set_schedule("forward")


@pytest.mark.parametrize("arch", driver.ARCHS)
@pytest.mark.parametrize("m", [1, 17, 300])
@pytest.mark.parametrize("precision,xv,wv", [("w4a8", -128, -8), ("w4a8", 127, -8), ("w4a8", -128, 7),
                                             ("w8a8", -128, -128), ("w8a8", 127, -128), ("w8a8", -128, 127)])
def test_emulated_a8_extreme_tiles(emu, arch, m, precision, xv, wv):
    """Every code at an end of its range (the largest products, the sign extension of -8 and 7)."""
    k, n = 2048, 24
    top = 7 if precision == "w4a8" else 127
    x = torch.full((m, k), xv, dtype=torch.int8)
    w = torch.full((n, k), wv, dtype=torch.int8)
    w[1::2] = top
    stored = pack_int4(w) if precision == "w4a8" else w
    got = a8_gemm(emu[arch], precision, x, None, stored, None, None, torch.int32, 132)
    assert torch.equal(got, reference.int_matmul_int32(x, w, 8, A8_BITS[precision]))
    assert int(got[0, 0]) == xv * wv * k and int(got[-1, 1]) == xv * top * k


@pytest.mark.parametrize("arch", driver.ARCHS)
@pytest.mark.parametrize("precision", list(A8_BITS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,n,k,num_sms,variant", [GEMM_CASES[i] for i in (0, 1, 6, 8, 10, 11)])
def test_emulated_a8_gemm_output_identical(emu, arch, precision, dtype, m, n, k, num_sms, variant):
    """The fp32 epilogue and the cast, as for W4A4: scales over 60 decades, with and without bias."""
    g = torch.Generator().manual_seed(m * n + k)
    x, _, stored = _a8_operands(precision, m, n, k, 3)
    sx = (torch.rand(m, generator=g) + 1e-3) * torch.logspace(-30, 30, m)[torch.randperm(m, generator=g)]
    sw = (torch.rand(n, 1, generator=g) + 1e-3) * torch.logspace(-8, 8, n)[torch.randperm(n, generator=g)][:, None]
    bias = (torch.randn(n, generator=g) * 100).to(dtype)
    for b, order in ((None, "forward"), (bias, "reverse")):
        ref = A8_REFERENCE[precision](x, sx, stored, sw, b, k, dtype)
        emu[arch].set_schedule(order)
        got = a8_gemm(emu[arch], precision, x, sx, stored, sw, b, dtype, num_sms)
        assert got.dtype == dtype and torch.equal(got, ref), f"bias={b is not None}"
        launches = emu[arch].launches()
        assert gemm_variant(launches) == variant
        assert len(launches) == (2 if variant[1] else 1)
        assert launches[-1]["kernel"].startswith("epilogue_kernel") == variant[1]
    assert m == 1 or torch.isinf(ref).any()  # the scales reach the overflow


@pytest.mark.parametrize("arch", driver.ARCHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,k", [(1, 1), (5, 13), (17, 96), (3, 4097), (64, 300)])
def test_emulated_quantize_int8_identity_identical(emu, arch, dtype, m, k):
    """int8 codes and scales bit-identical; clip < 1 saturates codes at -128 and 127."""
    ref = _assert_identity_quantize(emu[arch].quantize_int8, emu[arch], reference.quantize_act_int8_reference,
                                    _activations(m, k, dtype, m * k, qmax=127))
    assert ref[0].dtype == torch.int8 and ref[0].shape == (m, k)
    if m * k > 100:
        assert int(ref[0].min()) == -128 and int(ref[0].max()) == 127


def assert_quantize_int8_close(got, x, left, right, diag=None, clip=None):
    """The transform tolerance of ``fair_calib_hf.ops.exactness`` for int8 codes: scales within
    ``SCALE_RTOL``; a code may differ by one step only where the float64 ``x̃ / s`` is within ``TIE_ATOL`` of a
    rounding tie."""
    codes, scale = got
    ref_codes, ref_scale = reference.quantize_act_int8_reference(x, left, right, diag, clip)
    assert codes.dtype == torch.int8 and codes.shape == ref_codes.shape and scale.dtype == torch.float32
    rel = ((scale.double() - ref_scale.double()).abs() / ref_scale.double()).max().item()
    assert rel <= SCALE_RTOL, f"scales differ by a relative {rel:.3g}"
    diff = codes.int() - ref_codes.int()
    if not bool(diff.any()):
        return
    assert int(diff.abs().max()) <= 1
    xt = (x.double() * (diag.double() if diag is not None else 1.0)) @ torch.kron(left.double(), right.double())
    exact = (xt / ref_scale.double()[:, None]).abs()
    far = (diff != 0) & (((exact - exact.floor()) - 0.5).abs() > TIE_ATOL)
    assert not bool(far.any()), f"{int(far.sum())} codes off by one away from a rounding tie"


@pytest.mark.parametrize("arch", driver.ARCHS)
@pytest.mark.parametrize("dtype,a,b,m", [(torch.float32, 8, 8, 5), (torch.bfloat16, 2, 40, 3),
                                         (torch.float16, 64, 33, 17), (torch.bfloat16, 96, 136, 2)])
def test_emulated_quantize_int8_with_transform(emu, arch, dtype, a, b, m):
    """The fused Kronecker transform with int8 codes (the transform code is the int4 kernel's, tested there in
    every dtype); 96 x 136 takes the opt-in shared memory."""
    k = a * b
    x, left, right, diag, clip = _transform_inputs(a, b, m, dtype)
    for order in ORDERS:
        emu[arch].set_schedule(order)
        got = emu[arch].quantize_int8(x, left, right, diag, clip)
        assert_quantize_int8_close(got, x, left, right, diag, clip)
        assert [(r["kernel"], r["smem"]) for r in emu[arch].launches()] == [("quant_kron_kernel", 4 * k)]


def test_emulated_a8_c_abi_rejects_bad_arguments(emu):
    """-1 (FC_ERR_BAD_ARGUMENT) for K not a multiple of 32 (W4A8) / 16 (W8A8), a misaligned operand or an
    unknown dtype; -2 for Kronecker factors above 256 in the int8 quantizer."""
    lib, p = emu[900].lib, driver._ptr
    x, w4, w8 = (torch.zeros(20, 64, dtype=torch.int8), torch.zeros(8, 32, dtype=torch.uint8),
                 torch.zeros(8, 64, dtype=torch.int8))
    out, ones = torch.empty(20, 8), torch.ones(20)

    def w4a8(xq=x, k=64, out_dtype=0):
        return lib.fc_w4a8_gemm(p(xq), p(ones), p(w4), p(ones), None, p(out), out_dtype, 20, 8, k, None, 1, None)

    def w8a8(xq=x, k=64, out_dtype=0):
        return lib.fc_w8a8_gemm(p(xq), p(ones), p(w8), p(ones), None, p(out), out_dtype, 20, 8, k, None, 1, None)

    assert w4a8() == 0 and w8a8() == 0 and w8a8(k=48) == 0
    assert w4a8(k=48) == -1 and w4a8(k=0) == -1 and w8a8(k=40) == -1 and w8a8(k=0) == -1
    assert w4a8(xq=x.view(-1)[8:]) == -1 and w8a8(xq=x.view(-1)[8:]) == -1  # 8 bytes off the alignment
    assert w4a8(out_dtype=7) == -1 and w8a8(out_dtype=7) == -1
    assert lib.fc_w8a8_gemm_workspace_bytes(20, 8, 4096, 132, 0) == 4 * 20 * 8
    assert lib.fc_w4a8_gemm_workspace_bytes(20, 8, 4096, 132, 3) == 0
    xf, codes, scale = torch.zeros(2, 90000), torch.empty(2, 90000, dtype=torch.int8), torch.empty(2)
    eye = torch.eye(300)
    q = lib.fc_quantize_act_int8
    assert q(p(xf), 0, 2, 90000, None, p(eye), 300, p(eye), 300, None, p(codes), p(scale), None) == -2
    assert q(p(xf), 0, 2, 90000, None, p(eye), 300, p(eye), 299, None, p(codes), p(scale), None) == -1
    assert q(p(xf), 5, 2, 90000, None, None, 0, None, 0, None, p(codes), p(scale), None) == -1


# ------------------------------------------------------------------------------------ (2) mutation check
# name: (arch, file, original text, mutated text, check). Each mutant is a mistake the emulation must see.
MUTANTS = {
    # A fragment registers in the order of a plain K walk (row g: k, k+32) instead of the PTX layout
    # (row g, row g+8, then the next K group): only a layout-exact mma catches this.
    "tiled_a_fragment_order": (800, "int_gemm.h",
                               "af[i][1] = frag_at<P::kABits>(r + 8 * SA, lo);\n"
                               "        af[i][2] = frag_at<P::kABits>(r, hi);",
                               "af[i][1] = frag_at<P::kABits>(r, hi);\n"
                               "        af[i][2] = frag_at<P::kABits>(r + 8 * SA, lo);",
                               "gemm"),
    "small_m_a_fragment_order": (800, "int_gemm.h",
                                 "{share_frag<A>(a0l.v, s), share_frag<A>(a1l.v, s), share_frag<A>(a0h.v, s),",
                                 "{share_frag<A>(a0l.v, s), share_frag<A>(a0h.v, s), share_frag<A>(a1l.v, s),",
                                 "gemm"),
    # accumulator layout: c1 taken as row g+8 instead of column 2t+1
    "accumulator_layout": (800, "int_gemm.h",
                           "const int row = r0 + (r >= 2 ? 8 : 0), col = c0 + (r & 1);",
                           "const int row = r0 + ((r & 1) ? 8 : 0), col = c0 + (r >> 1);", "gemm"),
    # sm_90 path: the even/odd code words of rows g and g+8 swapped between A registers
    "s8_operand_order": (900, "int_gemm.h",
                         "mma_s8(c, ag[0], ag8[0], ag[1], ag8[1], bs[0], bs[1]);",
                         "mma_s8(c, ag[0], ag[1], ag8[0], ag8[1], bs[0], bs[1]);", "gemm"),
    # the barrier after the pipeline wait: warps read stages other threads' copies have not filled
    "tiled_missing_syncthreads": (800, "int_gemm.h",
                                  "    __syncthreads();  // tile kt is in shared memory", "    // (removed)", "gemm"),
    # epilogue store without the column bound: writes past the row (and past the end of the output)
    "tiled_store_without_column_check": (800, "int_gemm.h",
                                         "if (row < m && col < n) emit<OUT>(e, ws, split, row, col, n, acc[i][j][r]);",
                                         "if (row < m) emit<OUT>(e, ws, split, row, col, n, acc[i][j][r]);", "gemm"),
    "tiled_missing_cp_async_wait": (900, "int_gemm.h", "    cp_async_wait<kStages - 2>();\n", "\n", "gemm"),
    # Kronecker transform: Y = Z right starts before every warp has written its columns of Z
    "kron_missing_syncthreads": (800, "w4a4_quant.cu",
                                 "    __syncwarp();\n  }\n  __syncthreads();\n\n  // Y = Z right",
                                 "    __syncwarp();\n  }\n\n  // Y = Z right", "kron"),
    # lanes overwrite the column while other lanes of the warp still read it
    "kron_missing_syncwarp": (900, "w4a4_quant.cu",
                              "    }\n    __syncwarp();\n#pragma unroll\n    for (int q = 0; q < kMaxPerLane; ++q) {\n"
                              "      const int i = lane + 32 * q;",
                              "    }\n#pragma unroll\n    for (int q = 0; q < kMaxPerLane; ++q) {\n"
                              "      const int i = lane + 32 * q;", "kron"),
    # block reduction: warp 0 reads the per-warp maxima before the other warps wrote them
    "block_max_missing_syncthreads": (800, "w4a4_quant.cu",
                                      "  if (lane == 0) red[warp] = v;\n  __syncthreads();",
                                      "  if (lane == 0) red[warp] = v;", "identity"),
    # --- 8-bit activations
    # W4A8: the int4 weight codes zero-extended instead of sign-extended (negative weights read as 8..15)
    "w4a8_no_sign_extension": (800, "int_gemm.h",
                               "    s[0] = sext_nibbles(f.w[0] & 0x0F0F0F0Fu);\n"
                               "    s[1] = sext_nibbles((f.w[0] >> 4) & 0x0F0F0F0Fu);",
                               "    s[0] = f.w[0] & 0x0F0F0F0Fu;\n    s[1] = (f.w[0] >> 4) & 0x0F0F0F0Fu;", "w4a8"),
    # W4A8: the int8 activations fed in K order, not permuted into the weights' even/odd order
    "w4a8_activation_byte_order": (900, "int_gemm.h",
                                   "    s[0] = __byte_perm(f.w[0], f.w[1], 0x6420u);  // codes 0, 2, 4, 6\n"
                                   "    s[1] = __byte_perm(f.w[0], f.w[1], 0x7531u);  // codes 1, 3, 5, 7",
                                   "    s[0] = f.w[0];\n    s[1] = f.w[1];", "w4a8"),
    # W4A8: the 4-bit operand's shared-memory stage as wide as the 8-bit one's (K offsets and rows wrong)
    "w4a8_narrow_stage_bytes": (800, "int_gemm.h", "  static constexpr int kBytes = 64 * BITS / WIDE_BITS;",
                                "  static constexpr int kBytes = 64;", "w4a8"),
    # W4A8 small-M: the activations' second 16-byte vector of a share never read (steps 2, 3 reuse the first)
    "w4a8_small_m_share_vector": (900, "int_gemm.h", "    f.w[q] = word(v[w / 4], w % 4);",
                                  "    f.w[q] = word(v[0], w % 4);", "w4a8"),
    # W8A8: the weights' second half-step fragment replaced by the first (A and B cover different K)
    "w8a8_b_half_step": (800, "int_gemm.h", "      to_s8<P::kBBits, P::kABits>(b[h], bs);",
                         "      to_s8<P::kBBits, P::kABits>(b[0], bs);", "w8a8"),
    # W8A8 tiled: an 8-bit fragment read at the 4-bit byte offset (overlapping K positions)
    "w8a8_int8_fragment_offset": (900, "int_gemm.h", "    const uint2 v = *reinterpret_cast<const uint2*>(row + code);",
                                  "    const uint2 v = *reinterpret_cast<const uint2*>(row + code / 2);", "w8a8"),
    # int8 quantizer: codes clamped to the symmetric [-127, 127] (clipped rows must reach -128)
    "int8_clamp_range": (800, "w4a4_quant.cu", "  static constexpr int kMin = -128, kMax = 127;",
                         "  static constexpr int kMin = -127, kMax = 127;", "identity8"),
    # int8 quantizer: the store loop strides by the int4 byte count (half the row never written)
    "int8_store_row_length": (900, "w4a4_quant.cu",
                              "    for (int64_t j = threadIdx.x; j < k; j += kThreads) pr[j] = static_cast<int8_t>",
                              "    for (int64_t j = threadIdx.x; j < (k + 1) / 2; j += kThreads) pr[j] = "
                              "static_cast<int8_t>", "identity8"),
}


def mutation_check(kernels, kind):
    """True when the kernels pass every case of this small exactness sweep in both thread orders; an
    emulation error (deadlock, bad warp operation) counts as a failure."""
    try:
        for order in ORDERS:
            kernels.set_schedule(order)
            if kind == "gemm":
                for m, n, k, sms, _ in (GEMM_CASES[1], GEMM_CASES[7], GEMM_CASES[11]):
                    if not check_int32(kernels, m, n, k, sms)[0]:
                        return False
            elif kind in A8_BITS:
                for m, n, k, sms, _ in (GEMM_CASES[1], GEMM_CASES[7], GEMM_CASES[11]):
                    if not check_a8_int32(kernels, kind, m, n, k, sms)[0]:
                        return False
            elif kind == "identity":
                x = _activations(6, 3000, torch.float32, 0)
                got, ref = kernels.quantize(x), reference.quantize_act_reference(x)
                if not (torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])):
                    return False
            elif kind == "identity8":
                x, clip = _activations(6, 3000, torch.float32, 0, qmax=127), torch.tensor(0.93)
                got, ref = kernels.quantize_int8(x, clip=clip), reference.quantize_act_int8_reference(x, clip=clip)
                if not (torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])):
                    return False
            else:
                g = torch.Generator().manual_seed(0)
                a, b, m = 64, 48, 4
                x = torch.randn(m, a * b, generator=g)
                left, right = torch.randn(a, a, generator=g) / a ** 0.5, torch.randn(b, b, generator=g) / b ** 0.5
                try:
                    got = kernels.quantize(x, left, right)
                    assert_quantize_act_close(got, x, left, right)
                except AssertionError:
                    return False
        return True
    except driver.EmulationError:
        return False
    finally:
        kernels.set_schedule("forward")


@pytest.fixture(scope="module")
def mutant_kernels(tmp_path_factory):
    """{name: EmulatedKernels} built from patched copies of kernels/cuda (each patch must apply exactly once)."""
    def make(name):
        arch, file, old, new, _ = MUTANTS[name]
        src = tmp_path_factory.mktemp(name)
        shutil.copytree(driver.CUDA_DIR, src / "cuda", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
        path = src / "cuda" / file
        text = path.read_text()
        assert text.count(old) == 1, f"mutant {name}: the original text is not in {file} exactly once"
        path.write_text(text.replace(old, new))
        return driver.EmulatedKernels(driver.build(arch, str(src / "cuda")))

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(MUTANTS, pool.map(make, MUTANTS)))


@pytest.mark.parametrize("kind", ["gemm", "identity", "kron", "w4a8", "w8a8", "identity8"])
def test_real_kernels_pass_the_mutation_checks(emu, kind):
    for arch in driver.ARCHS:
        assert mutation_check(emu[arch], kind)


@pytest.mark.parametrize("name", list(MUTANTS))
def test_mutant_fails_the_check(mutant_kernels, name):
    assert not mutation_check(mutant_kernels[name], MUTANTS[name][4])



def test_emulated_c_abi_rejects_bad_arguments(emu):
    """The C ABI's contract checks (w4a4_cuda.h), run for real: -1 (FC_ERR_BAD_ARGUMENT) for a packed width
    that is not a multiple of 16 bytes, a misaligned operand, a missing workspace or an unknown dtype; -2
    (FC_ERR_UNSUPPORTED) for Kronecker factors above 256."""
    lib = emu[800].lib
    xq, wq = torch.zeros(20, 64, dtype=torch.uint8), torch.zeros(8, 64, dtype=torch.uint8)
    out = torch.empty(20, 8, dtype=torch.float32)
    p = driver._ptr
    ones = torch.ones(20)

    def gemm(x=xq, kb=64, out_dtype=0, ws=None, sms=1):
        return lib.fc_w4a4_gemm(p(x), p(ones), p(wq), p(ones), None, p(out), out_dtype, 20, 8, kb, ws, sms, None)

    assert gemm() == 0
    assert gemm(kb=40) == -1 and gemm(kb=0) == -1
    assert gemm(x=xq.view(-1)[1:]) == -1  # 1 byte off the 16-byte alignment
    assert gemm(out_dtype=7) == -1
    kb = 4096
    big_x, big_w = torch.zeros(20, kb, dtype=torch.uint8), torch.zeros(8, kb, dtype=torch.uint8)
    assert lib.fc_w4a4_gemm_workspace_bytes(20, 8, kb, 132, 0) == 4 * 20 * 8  # split-K needs the workspace
    assert lib.fc_w4a4_gemm(p(big_x), p(ones), p(big_w), p(ones), None, p(out), 0, 20, 8, kb, None, 132, None) == -1
    assert lib.fc_w4a4_gemm_workspace_bytes(20, 8, kb, 132, 3) == 0  # int32 output accumulates in place
    x = torch.zeros(2, 300 * 300)
    packed, scale = torch.empty(2, 45000, dtype=torch.uint8), torch.empty(2)
    eye = torch.eye(300)
    q = lib.fc_quantize_act
    assert q(p(x), 0, 2, 90000, None, p(eye), 300, None, 0, None, p(packed), p(scale), None) == -1  # left alone
    assert q(p(x), 0, 2, 90000, None, p(eye), 300, p(eye), 299, None, p(packed), p(scale), None) == -1  # a*b != k
    assert q(p(x), 0, 2, 90000, None, p(eye), 300, p(eye), 300, None, p(packed), p(scale), None) == -2
    assert q(p(x), 5, 2, 90000, None, None, 0, None, 0, None, p(packed), p(scale), None) == -1  # dtype
    assert b"contract" in lib.fc_cuda_error_string(-1) and b"unsupported" in lib.fc_cuda_error_string(-2)
