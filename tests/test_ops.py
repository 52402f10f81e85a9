"""The reference W4A4 ops against an independent float64 / int64 computation of the same math."""
import pytest
import torch

from fair_calib_hf import ops
from fair_calib_hf.ops.reference import apply_input_transform, int4_matmul_int32
from fair_calib_hf.packing import pack_int4, unpack_int4


def _codes(shape, seed):
    return torch.randint(-8, 8, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.int8)


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (3, 5, 7), (17, 9, 64), (8, 33, 257)])
def test_int_accumulation_exact(m, n, k):
    qx, qw = _codes((m, k), 1), _codes((n, k), 2)
    acc = int4_matmul_int32(pack_int4(qx), pack_int4(qw), k)
    assert acc.dtype == torch.int32
    assert torch.equal(acc.long(), qx.long() @ qw.long().t())


def test_int_accumulation_extremes_large_k():
    # all -8 x -8: the largest possible accumulator, 64*K, still exact
    k = 4096
    qx = torch.full((2, k), -8, dtype=torch.int8)
    acc = int4_matmul_int32(pack_int4(qx), pack_int4(qx), k)
    assert acc.tolist() == [[64 * k] * 2] * 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gemm_matches_float64_reference(dtype, with_bias):
    g = torch.Generator().manual_seed(3)
    m, n, k = 6, 10, 48
    qx, qw = _codes((m, k), 4), _codes((n, k), 5)
    sx = torch.rand(m, generator=g) + 0.1
    sw = torch.rand(n, 1, generator=g) + 0.1
    bias = torch.randn(n, generator=g).to(dtype) if with_bias else None
    y = ops.w4a4_gemm(pack_int4(qx), sx, pack_int4(qw), sw, bias, k, dtype)
    assert y.dtype == dtype and y.shape == (m, n)
    ref = (qx.double() @ qw.double().t()) * sx.double()[:, None] * sw.double().t()
    if with_bias:
        ref = ref + bias.double()
    # fp32 epilogue: relative error of a couple of fp32 roundings, then one rounding to the output dtype
    tol = {torch.float32: 1e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
    torch.testing.assert_close(y.double(), ref.to(dtype).double(), rtol=tol, atol=tol)


def test_quantize_act_per_token():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(5, 13, generator=g) * torch.tensor([1, 10, 100, 0.01, 0])[:, None]
    packed, scale = ops.quantize_act_int4(x, None, None, None, torch.tensor(0.9))
    assert packed.shape == (5, 7) and scale.shape == (5,)
    expected_scale = 0.9 * x.abs().amax(1) / 7
    expected_scale[4] = 1.0  # all-zero row
    torch.testing.assert_close(scale, expected_scale, rtol=0, atol=0)
    codes = unpack_int4(packed, 13)
    assert torch.equal(codes, torch.clamp(torch.round(x / expected_scale[:, None]), -8, 7).to(torch.int8))
    # per-token error bound (where not clipped)
    err = (codes.float() * scale[:, None] - x).abs()
    assert torch.all(err[:4].amax(1) <= torch.maximum(scale[:4] / 2 + 1e-6, x[:4].abs().amax(1) * 0.1 + 1e-6))


def test_kronecker_transform_matches_dense():
    g = torch.Generator().manual_seed(7)
    a, b = 3, 4
    x = torch.randn(6, a * b, generator=g)
    left, right, diag = torch.randn(a, a, generator=g), torch.randn(b, b, generator=g), torch.rand(a * b, generator=g)
    got = apply_input_transform(x, left, right, diag)
    dense = (x.double() * diag.double()) @ torch.kron(left.double(), right.double())
    torch.testing.assert_close(got.double(), dense, rtol=1e-5, atol=1e-5)


def test_ops_are_registered_once_with_fake_kernels():
    assert torch.ops.fair_calib.w4a4_gemm.default is not None
    assert torch.ops.fair_calib.quantize_act_int4.default is not None
    with torch.device("meta"):
        x = torch.empty(4, 10)
        p, s = ops.quantize_act_int4(x, None, None, None, None)
    assert p.shape == (4, 5) and p.dtype == torch.uint8 and s.shape == (4,)
    assert ops.active_backend("cpu") in ("reference", "avx512vnni", "avx2", "scalar")
    cuda_backend = ops.active_backend("cuda")
    if not torch.cuda.is_available():
        assert cuda_backend == "reference"  # nothing to run CUDA kernels on
    else:
        assert cuda_backend in ("reference", "cuda-int4-mma", "cuda-int8-mma")
