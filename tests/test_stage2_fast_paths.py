"""Stage II's fast paths against the plain expressions they replace (issue 16, item 3):

- ``fake_quant_rows``'s pure-torch definition (``FakeQuantRowsReference``, what the compiled kernel is checked
  against in test_fake_quant_kernel.py) is one autograd node with a hand-written straight-through backward:
  forward and both gradients bit-identical (``torch.equal``, so a zero's sign may differ) to the generic autograd graph of the
  plain expression with ``ste_round``, on rows with tied maxima, zero rows, clamped values, 2-D and 3-D
  inputs, scalar and per-row clips;
- ``kron_apply_gemms`` (two GEMMs over all rows) equals ``x · (L ⊗ R)`` and ``kron_apply`` to fp32 rounding;
- a site's linears stacked into one transform, one fake quantization and one matmul give, row for row, the
  outputs of each linear fake-quantized on its own.
"""
import pytest
import torch
from torch import nn

from fair_calib_hf import FairCalibConfig
from fair_calib_hf.calibration.fake_quant import FakeQuantRowsReference
from fair_calib_hf.calibration.stage2_fit import FitLinear, SiteParams, fake_quant_rows, ste_round
from fair_calib_hf.calibration.transforms import kron_apply, kron_apply_gemms
from fair_calib_hf.packing import QMAX, QMIN


def _plain_fake_quant_rows(x, clip):
    """The definition, left to autograd (the code before the hand-written backward)."""
    s = clip * x.abs().amax(-1, keepdim=True) / QMAX
    s = torch.where(s == 0, torch.ones_like(s), s)
    return torch.clamp(ste_round(x / s), QMIN, QMAX) * s


def _awkward_rows(shape, generator):
    x = torch.randn(shape, generator=generator) * torch.logspace(-3, 3, shape[-1])
    flat = x.view(-1, shape[-1])
    flat[0] = 0.0  # zero row: scale 1
    flat[1, :3] = flat[1].abs().max() * torch.tensor([1.0, -1.0, 1.0])  # three tied maxima, mixed signs
    flat[2, 5] = 1e30  # one huge outlier: everything else rounds to zero
    half = shape[-1] // 2
    flat[3, :half] = flat[3, half:2 * half]  # exact duplicates
    return x


@pytest.mark.parametrize("shape,per_row", [((9, 40), True), ((9, 40), False), ((2, 7, 33), False),
                                           ((300, 128), True)])
def test_fake_quant_rows_matches_the_autograd_graph_bit_for_bit(shape, per_row):
    g = torch.Generator().manual_seed(sum(shape))
    x0 = _awkward_rows(shape, g)
    clip_shape = (x0.view(-1, shape[-1]).shape[0], 1) if per_row else ()
    # clips below 1 clamp the largest values (the clamp's zero gradient is exercised)
    clip0 = torch.rand(clip_shape, generator=g) * 0.5 + 0.4
    upstream = torch.randn(shape, generator=g)
    results = []
    for fn in (lambda x, clip: FakeQuantRowsReference.apply(x, clip, QMIN, QMAX), _plain_fake_quant_rows):
        x = x0.clone().requires_grad_(True)
        clip = clip0.clone().requires_grad_(True)
        xin = x.view(-1, shape[-1]) if per_row else x
        out = fn(xin, clip)
        (out * upstream.view_as(out)).sum().backward()
        results.append((out.detach(), x.grad, clip.grad))
    (out, gx, gc), (out_ref, gx_ref, gc_ref) = results
    assert torch.equal(out, out_ref)
    assert torch.equal(gx, gx_ref) and torch.equal(gc, gc_ref)
    assert gc.shape == clip0.shape and bool((gx != 0).any()) and bool((gc != 0).any())


def test_fake_quant_rows_gradient_reaches_only_what_requires_it():
    x = torch.randn(5, 16, requires_grad=True)
    fake_quant_rows(x, torch.tensor(0.9)).sum().backward()  # a fixed clip
    assert x.grad is not None
    clip = torch.tensor(0.9, requires_grad=True)
    fake_quant_rows(torch.randn(5, 16), clip).sum().backward()  # a frozen input
    assert clip.grad is not None
    with torch.no_grad():
        y = fake_quant_rows(x, torch.tensor(1.0))
    assert not y.requires_grad and torch.equal(y, _plain_fake_quant_rows(x.detach(), torch.tensor(1.0)))


@pytest.mark.parametrize("rows,a,b", [(1, 1, 1), (7, 3, 4), (176, 8, 16), (33, 16, 22)])
def test_kron_apply_gemms_is_the_kronecker_product(rows, a, b):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, a * b, generator=g) * 100
    left, right = torch.randn(a, a, generator=g), torch.randn(b, b, generator=g)
    dense = (x.double() @ torch.kron(left.double(), right.double())).float()
    torch.testing.assert_close(kron_apply_gemms(x, left, right), dense, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(kron_apply_gemms(x, left, right), kron_apply(x, left, right), rtol=1e-5, atol=1e-3)
    x3 = x.view(1, rows, a * b).expand(2, rows, a * b)  # leading dims, a non-contiguous input
    assert kron_apply_gemms(x3, left, right).shape == x3.shape


@pytest.mark.parametrize("bias", [(True, True, True), (False, False, False), (True, False, True)])
def test_stacked_site_equals_each_linear_alone(bias):
    """q/k/v-like members (different widths, with / without / mixed bias): the site's stacked quantized
    weight is, row for row, each linear's own fake-quantized weight bit for bit, and the one matmul, split,
    gives each linear's output (to fp32 rounding: BLAS may take another kernel for another width)."""
    torch.manual_seed(0)
    linears = [nn.Linear(32, n, bias=b) for n, b in zip((32, 16, 8), bias)]
    x = torch.randn(3, 10, 32) * torch.linspace(0.1, 8, 32)
    cfg = FairCalibConfig(method="flatquant", calibration_dataset=["x"])
    w_absmax = torch.stack([lin.weight.abs().amax(0) for lin in linears]).amax(0)
    site = SiteParams(32, x.abs().reshape(-1, 32).amax(0), w_absmax, cfg, torch.Generator().manual_seed(1))
    fits = [FitLinear(lin, site, cfg) for lin in linears]
    originals = [lin.weight.detach().clone() for lin in linears]
    with torch.no_grad():
        for i, fit in enumerate(fits):
            fit.lwc.copy_(torch.linspace(1.0, 4.0, fit.lwc.shape[0])[:, None] + i)
        outs = [fit(x) for fit in fits]
        xq = site.transform_input(x)
        stacked = site.quantized_weight().split([lin.out_features for lin in linears])
        for fit, lin, out, w_site in zip(fits, linears, outs, stacked):
            wq = fake_quant_rows(site.transform_weight(lin.weight), fit.weight_clip())
            assert torch.equal(w_site, wq)
            alone = xq @ wq.t() + (lin.bias if lin.bias is not None else 0)
            torch.testing.assert_close(out, alone, rtol=1e-6, atol=1e-5)
            assert not torch.equal(out, torch.zeros_like(out))
    # the members' weights became views of the stack (no second copy), with their values unchanged
    stack = site._stacked()[0]
    assert linears[1].weight.data_ptr() == stack[32:].data_ptr()
    assert all(torch.equal(lin.weight, w) for lin, w in zip(linears, originals))
    # gradients reach every member's clip logits and the shared transform
    site.new_step()
    sum(fit(x).sum() for fit in fits).backward()
    assert all(fit.lwc.grad is not None and bool((fit.lwc.grad != 0).any()) for fit in fits)
    assert site.left.grad is not None and site.diag.grad is not None and site.lac.grad is not None


def test_stacked_site_gradients_equal_the_per_linear_graphs():
    """The loss gradients of every Stage II parameter (Kronecker factors, diagonal, activation clip, each
    linear's weight clips) through the stacked site equal those of the original per-linear computation (each
    linear transforming and fake-quantizing its own weight, the plain autograd graph of the fake quantization,
    the dense Kronecker apply, `torch.linalg.inv` per factor), to fp32 rounding."""
    torch.manual_seed(3)
    linears = [nn.Linear(48, n, bias=b) for n, b in ((48, True), (24, False), (12, True))]
    x = torch.randn(2, 7, 48) * torch.linspace(0.2, 6, 48)
    cfg = FairCalibConfig(method="flatquant", calibration_dataset=["x"])
    w_absmax = torch.stack([lin.weight.abs().amax(0) for lin in linears]).amax(0)
    site = SiteParams(48, x.abs().reshape(-1, 48).amax(0), w_absmax, cfg, torch.Generator().manual_seed(2))
    fits = [FitLinear(lin, site, cfg) for lin in linears]
    with torch.no_grad():
        for i, fit in enumerate(fits):
            fit.lwc.copy_(torch.linspace(0.5, 3.0, fit.lwc.shape[0])[:, None] - i)  # some clips well below 1
        site.lac.fill_(1.5)
    target = [torch.randn(2, 7, lin.out_features) for lin in linears]
    loss = sum(((fit(x) - t) ** 2).mean() for fit, t in zip(fits, target))
    loss.backward()
    fast = {"left": site.left.grad, "right": site.right.grad, "diag": site.diag.grad, "lac": site.lac.grad,
            **{f"lwc{i}": fit.lwc.grad for i, fit in enumerate(fits)}}

    left, right, diag, lac = (site.left.detach().clone().requires_grad_(), site.right.detach().clone().requires_grad_(),
                              site.diag.detach().clone().requires_grad_(), site.lac.detach().clone().requires_grad_())
    lwcs = [fit.lwc.detach().clone().requires_grad_() for fit in fits]
    xq = _plain_fake_quant_rows(kron_apply(x * diag, left, right), torch.sigmoid(lac))
    inv_l, inv_r = torch.linalg.inv(left).t(), torch.linalg.inv(right).t()
    loss_ref = 0
    for lin, lwc, t in zip(linears, lwcs, target):
        wq = _plain_fake_quant_rows(kron_apply(lin.weight.detach() / diag[None, :], inv_l, inv_r), torch.sigmoid(lwc))
        y = xq @ wq.t() + (lin.bias.detach() if lin.bias is not None else 0)
        loss_ref = loss_ref + ((y - t) ** 2).mean()
    loss_ref.backward()
    ref = {"left": left.grad, "right": right.grad, "diag": diag.grad, "lac": lac.grad,
           **{f"lwc{i}": lwc.grad for i, lwc in enumerate(lwcs)}}
    torch.testing.assert_close(loss.detach(), loss_ref.detach(), rtol=1e-5, atol=0)
    for name in ref:
        assert bool((ref[name] != 0).any()), name
        torch.testing.assert_close(fast[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_factors_inverted_together_equal_each_alone():
    from fair_calib_hf.calibration.stage2_fit import invert_factors_together

    cfg = FairCalibConfig(method="flatquant", calibration_dataset=["x"])
    g = torch.Generator().manual_seed(0)
    sites = [SiteParams(n, torch.rand(n) + 0.1, torch.rand(n) + 0.1, cfg, g) for n in (128, 352, 128, 96)]
    with torch.no_grad():
        for sp in sites:
            sp.left.add_(0.1 * torch.randn(sp.left.shape, generator=g))
            sp.right.add_(0.1 * torch.randn(sp.right.shape, generator=g))
    invert_factors_together(sites)
    together = [sp._inverse for sp in sites]
    for sp, (left_inv_t, right_inv_t) in zip(sites, together):
        sp._inverse = None
        alone = sp.inverse_factors()
        assert torch.equal(left_inv_t, alone[0]) and torch.equal(right_inv_t, alone[1])
    for sp, inverse in zip(sites, together):  # gradients flow through the batched inversion to each site
        sp._inverse = inverse
    sites[0].transform_weight(torch.randn(8, 128, generator=g)).sum().backward()
    assert bool((sites[0].left.grad != 0).any()) and bool((sites[0].right.grad != 0).any())
    assert sites[1].left.grad is None or not bool(sites[1].left.grad.any())
