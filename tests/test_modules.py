"""W4A4Linear against an explicit computation of its definition."""
import pytest
import torch
from torch import nn

from fair_calib_hf import W4A4Linear
from fair_calib_hf.packing import quantize_symmetric, symmetric_scale


def _linear(k, n, bias, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    return lin


@pytest.mark.parametrize("k,n,bias", [(64, 32, False), (96, 40, True), (33, 7, True)])
def test_forward_equals_definition(k, n, bias):
    lin = _linear(k, n, bias)
    q = W4A4Linear.from_linear(lin, input_clip=0.95)
    x = torch.randn(2, 5, k)
    y = q(x)
    assert y.shape == (2, 5, n) and y.dtype == x.dtype
    # the definition, computed independently in float64
    w = lin.weight.double()
    sw = symmetric_scale(w.abs().amax(1, keepdim=True).float()).double()
    qw = torch.clamp(torch.round(w.float() / sw.float()), -8, 7).double()
    x2 = x.reshape(-1, k)
    sx = symmetric_scale(x2.abs().amax(1), 0.95)
    qx = quantize_symmetric(x2, sx[:, None]).double()
    ref = (qx @ qw.t()) * sx.double()[:, None] * sw.t()
    if bias:
        ref = ref + lin.bias.double()
    torch.testing.assert_close(y.reshape(-1, n).double(), ref, rtol=1e-6, atol=1e-6)
    # and it approximates the float layer (W4A4 error, loose)
    rel = (y - lin(x)).norm() / lin(x).norm()
    assert rel < 0.25


def test_buffers_and_state_dict_names():
    q = W4A4Linear.from_linear(_linear(10, 4, True))
    sd = q.state_dict()
    assert set(sd) == {"weight_packed", "weight_scale", "input_clip", "bias"}
    assert sd["weight_packed"].dtype == torch.uint8 and sd["weight_packed"].shape == (4, 5)
    assert sd["weight_scale"].dtype == torch.float32 and sd["weight_scale"].shape == (4, 1)
    assert list(q.parameters()) == []  # nothing trainable, nothing for optimizers to touch


def test_transform_buffers_and_dequantize_fold():
    torch.manual_seed(1)
    q = W4A4Linear(12, 5, bias=True, transform_factors=(3, 4), transform_diag=True)
    assert set(q.state_dict()) >= {"input_transform.left", "input_transform.right", "input_transform.diag"}
    q.weight_packed.random_(0, 256)
    q.weight_scale.uniform_(0.01, 0.1)
    q.bias.normal_()
    q.input_transform.left.copy_(torch.linalg.qr(torch.randn(3, 3))[0])
    q.input_transform.right.copy_(torch.linalg.qr(torch.randn(4, 4))[0])
    q.input_transform.diag.uniform_(0.5, 2)
    x = torch.randn(7, 12)
    lin = q.to_linear(torch.float64)
    # dequantized layer = float transform then the quantized weight, without activation quantization
    xt = (x.double() * q.input_transform.diag.double()) @ torch.kron(
        q.input_transform.left.double(), q.input_transform.right.double())
    from fair_calib_hf.packing import dequantize_weight
    ref = xt @ dequantize_weight(q.weight_packed, q.weight_scale, 12).double().t() + q.bias.double()
    torch.testing.assert_close(lin(x.double()), ref)
    # the packed forward quantizes the transformed activations: close to the dequantized layer
    assert ((q(x).double() - ref).norm() / ref.norm()) < 0.2


def test_bad_transform_factors():
    with pytest.raises(ValueError, match="do not multiply"):
        W4A4Linear(12, 4, transform_factors=(3, 5))
