"""Stage II's compiled fake quantizer (kernels/cpu/fake_quant.cpp, issue 32) against its pure-torch definition
(``FakeQuantRowsReference``), on every instruction set this CPU can run: the forward (output, and the scale it
implies) bit for bit; the input gradient bit for bit wherever ``|x|`` is not its row's maximum, and within
``backward_tolerance`` (the two per-row sums are accumulated in another order) at the maxima and for the clip;
the same bits on every ISA and at 1 and 2 threads; int4 and int8 grids; rows with a zero row, tied maxima of
mixed signs, a huge outlier, duplicates, widths below / around / above the 16-lane vectors; scalar and per-row
clips. Skipped without the native extension, unless FAIR_CALIB_REQUIRE_EXT=1 (tests/run.sh)."""
import pytest
import torch
from conftest import skip_without_cpu_extension

from fair_calib_hf.calibration.fake_quant import FakeQuantRowsFused, FakeQuantRowsReference, fake_quant_rows
from fair_calib_hf.ops import cpu, fake_quant_cpu
from fair_calib_hf.packing import code_range

skip_without_cpu_extension()

WIDTHS = [1, 7, 16, 17, 33, 40, 128, 352]


def _rows(rows, k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g) * torch.logspace(-3, 3, k)
    if rows >= 4 and k >= 6:
        x[0] = 0.0  # zero row: scale 1
        x[1, :3] = x[1].abs().max() * torch.tensor([1.0, -1.0, 1.0])  # three tied maxima, mixed signs
        x[2, 5] = 1e30  # one huge outlier: everything else rounds to zero
        x[3, :k // 2] = x[3, k // 2:2 * (k // 2)]  # exact duplicates
    return x, g


def _run(fn, x0, clip0, upstream, bits, need=(True, True)):
    x = x0.clone().requires_grad_(need[0])
    clip = clip0.clone().requires_grad_(need[1])
    out = fn.apply(x, clip, *code_range(bits))
    (out * upstream).sum().backward()
    return out.detach(), x.grad, clip.grad


@pytest.mark.parametrize("k", WIDTHS)
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("bits", [4, 8])
def test_kernel_matches_the_reference(isa, k, per_row, bits):
    x0, g = _rows(37, k, seed=k + 100 * bits + per_row)
    clip0 = (torch.rand((37, 1) if per_row else (), generator=g) * 0.5 + 0.4)  # below 1: the clamp is exercised
    upstream = torch.randn(37, k, generator=g)
    out, gx, gc = _run(FakeQuantRowsFused, x0, clip0, upstream, bits)
    out_ref, gx_ref, gc_ref = _run(FakeQuantRowsReference, x0, clip0, upstream, bits)
    assert torch.equal(out, out_ref)
    gs_bound, reach_x, reach_clip = fake_quant_cpu.backward_tolerance(upstream, x0, clip0, *code_range(bits))
    at_max = x0.abs() == x0.abs().amax(-1, keepdim=True)
    assert torch.equal(gx[~at_max], gx_ref[~at_max])  # gu / s: identical elementwise steps
    ulps = 4 * 2.0 ** -23
    assert bool(((gx - gx_ref).abs() <= reach_x.expand_as(gx).float() + ulps * gx_ref.abs())[at_max].all())
    per_row_bound = reach_clip.float() + ulps * gc_ref.abs().expand_as(reach_clip) if per_row else None
    if per_row:
        assert bool(((gc - gc_ref).abs() <= per_row_bound).all())
    else:  # the per-row terms summed in torch's order on both sides
        assert bool((gc - gc_ref).abs() <= reach_clip.sum().float() + ulps * gc_ref.abs())
    assert bool((gx != 0).any())


def test_kernel_is_the_same_on_every_isa_and_thread_count():
    x0, g = _rows(301, 352, seed=7)
    clip0 = torch.rand(301, 1, generator=g) * 0.5 + 0.4
    upstream = torch.randn(301, 352, generator=g)
    results = []
    threads = torch.get_num_threads()
    try:
        for isa in cpu.supported_isas():
            previous = cpu.set_isa(isa)
            for n in (1, 2):
                torch.set_num_threads(n)
                results.append((isa, n, _run(FakeQuantRowsFused, x0, clip0, upstream, 4)))
            cpu.set_isa(previous)
    finally:
        torch.set_num_threads(threads)
    first = results[0][2]
    for isa, n, got in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(got, first)), (isa, n)


def test_kernel_computes_only_the_gradients_asked_for():
    x0, g = _rows(9, 40, seed=1)
    clip0 = torch.tensor(0.9)
    upstream = torch.randn(9, 40, generator=g)
    _, gx, gc = _run(FakeQuantRowsFused, x0, clip0, upstream, 4, need=(True, False))
    assert gx is not None and gc is None
    _, gx, gc = _run(FakeQuantRowsFused, x0, clip0, upstream, 4, need=(False, True))
    assert gx is None and gc is not None
    _, _, gc_ref = _run(FakeQuantRowsReference, x0, clip0, upstream, 4, need=(False, True))
    torch.testing.assert_close(gc, gc_ref, rtol=1e-5, atol=0)


def test_dispatch_takes_the_kernel_only_where_it_applies():
    x = torch.randn(6, 16)
    assert fake_quant_cpu.usable(x, torch.tensor(0.9)) and fake_quant_cpu.usable(x, torch.ones(6, 1))
    assert fake_quant_cpu.usable(x.view(2, 3, 16), torch.ones(2, 3, 1))
    assert not fake_quant_cpu.usable(x.double(), torch.tensor(0.9, dtype=torch.float64))  # fp32 only
    assert not fake_quant_cpu.usable(x, torch.ones(1, 16))  # a clip per column is not a per-row clip
    assert not fake_quant_cpu.usable(x.view(2, 3, 16), torch.ones(3, 1))  # broadcast over a leading dim
    # wherever it does not apply, the reference runs (the same values)
    clip = torch.rand(3, 1) + 0.5
    got = fake_quant_rows(x.view(2, 3, 16), clip)
    assert torch.equal(got, FakeQuantRowsReference.apply(x.view(2, 3, 16), clip, -8, 7))
    previous = fake_quant_cpu.set_enabled(False)
    try:
        assert not fake_quant_cpu.usable(x, torch.tensor(0.9))
    finally:
        fake_quant_cpu.set_enabled(previous)
    assert fake_quant_cpu.usable(x, torch.tensor(0.9))


def test_kernel_refuses_bad_operands_with_a_clear_error():
    from fair_calib_hf import _C

    with pytest.raises(RuntimeError, match="clip must be"):
        _C.fake_quant_rows_forward(torch.randn(4, 8), torch.ones(3), -8, 7)
    with pytest.raises(RuntimeError, match="x must be"):
        _C.fake_quant_rows_forward(torch.randn(4, 8).t(), torch.ones(1), -8, 7)
