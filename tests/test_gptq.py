"""GPTQ weight rounding (issue 28): the algorithm on hand-worked and random cases, the position-weighted Hessian,
and GPTQ inside calibration for every method on both families."""
import pytest
import torch
from transformers import AutoModel

from fair_calib_hf import FairCalibConfig
from fair_calib_hf.calibration.gptq import HessianAccumulator, gptq_block, gptq_round, weighted_error
from fair_calib_hf.calibration.block_loop import capture_block_inputs
from fair_calib_hf.architectures import get_adapter
from fair_calib_hf.calibration.rtn import make_rtn_block_quantizer
from fair_calib_hf.modules import PackedLinear, WeightOnlyLinear
from fair_calib_hf.packing import expand_groups, grouped_weight_scale, quantize_to_grid
from fair_calib_hf.reference_models import build_tiny

DATA = [list(range(5, 37)), list(range(40, 72)), list(range(20, 52))]


def test_hand_worked_two_column_case():
    """W = [0.6, 0.6] on the integer grid (scale 1), H = [[1, .5], [.5, 1]]: column 0 rounds to 1 (error −0.4);
    the update w1 −= (w0 − q0)·(H⁻¹)₀₁/(H⁻¹)₀₀ = −0.4 · (−0.5) gives w1 = 0.4, which rounds to 0. RTN gives
    [1, 1]. Weighted errors ΔHΔᵀ/2: RTN 0.48/2, GPTQ 0.28/2."""
    w = torch.tensor([[0.6, 0.6]])
    h = torch.tensor([[1.0, 0.5], [0.5, 1.0]])
    scale = torch.ones(1, 1)
    codes = gptq_round(w, h, scale, bits=4, group_size=None, damp=1e-9)
    assert codes.tolist() == [[1, 0]]
    module = WeightOnlyLinear(2, 1, bits=4)
    module.weight_scale.fill_(1.0)
    rtn = quantize_to_grid(w, scale, 4, None)
    assert rtn.tolist() == [[1, 1]]
    assert weighted_error(w, codes, module, h) == pytest.approx(0.14, abs=1e-6)
    assert weighted_error(w, rtn, module, h) == pytest.approx(0.24, abs=1e-6)


def _case(k=64, n=24, tokens=2048, token_seed=0):
    """Correlated inputs ``x [tokens, k]`` (the same input distribution for every ``token_seed``) with an outlier
    channel, and a weight ``[n, k]`` with an all-zero row."""
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(k, k, generator=g) / k ** 0.5 + 0.3 * torch.eye(k)
    w = torch.randn(n, k, generator=g)
    w[0] = 0  # an all-zero row: scale 1, codes 0
    x = torch.randn(tokens, k, generator=torch.Generator().manual_seed(100 + token_seed)) @ mix
    x[:, 3] *= 20  # an outlier channel (a tail)
    return x, w


@pytest.mark.parametrize("bits,group_size", [(4, None), (4, 32), (8, None)])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_its_calibration_inputs_and_held_out(bits, group_size, act_order):
    x, w = _case()
    held_out, _ = _case(token_seed=1)
    acc = HessianAccumulator(x.shape[1], "cpu")
    acc.add(x[None], None)
    h = acc.hessian()
    scale = grouped_weight_scale(w, bits, group_size)
    codes = gptq_round(w, h, scale, bits, group_size, act_order=act_order)
    rtn = quantize_to_grid(w, scale, bits, group_size)
    lo, hi = (-8, 7) if bits == 4 else (-128, 127)
    assert codes.dtype == torch.int8 and int(codes.min()) >= lo and int(codes.max()) <= hi
    assert codes[0].abs().sum() == 0
    module = WeightOnlyLinear(w.shape[1], w.shape[0], bits, group_size)
    module.weight_scale.copy_(scale)
    assert weighted_error(w, codes, module, h) < weighted_error(w, rtn, module, h)
    s = expand_groups(scale, w.shape[1], group_size)

    def err(c):
        return ((held_out[:, :] @ (w - c.float() * s).t()) ** 2).mean()
    assert err(codes) < err(rtn)


def test_diagonal_hessian_gives_rtn_in_any_column_order():
    """Without correlations between inputs there is no error to propagate: GPTQ = RTN, act-order included (the
    codes come back in the original column order)."""
    _, w = _case()
    h = torch.diag(torch.rand(w.shape[1], generator=torch.Generator().manual_seed(2)) + 0.1)
    scale = grouped_weight_scale(w, 4, 32)
    rtn = quantize_to_grid(w, scale, 4, 32)
    for act_order in (False, True):
        assert torch.equal(gptq_round(w, h, scale, 4, 32, act_order=act_order), rtn)


def test_lazy_batch_updates_match_column_by_column_updates():
    x, w = _case(k=48)
    acc = HessianAccumulator(48, "cpu")
    acc.add(x[None], None)
    scale = grouped_weight_scale(w, 4, None)
    ref = gptq_round(w, acc.hessian(), scale, 4, None, block_size=1)
    for block in (7, 16, 128):
        assert torch.equal(gptq_round(w, acc.hessian(), scale, 4, None, block_size=block), ref)


def test_dead_inputs_get_zero_codes():
    x, w = _case(k=32)
    x[:, 5] = 0
    acc = HessianAccumulator(32, "cpu")
    acc.add(x[None], None)
    codes = gptq_round(w, acc.hessian(), grouped_weight_scale(w, 4, None), 4, None)
    assert codes[:, 5].abs().sum() == 0


def test_position_weighted_hessian_is_the_weighted_sum():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 5, generator=g)  # [batch, positions, K]
    weights = torch.rand(10, generator=g)  # a prior over 10 positions: the last 6 apply
    acc = HessianAccumulator(5, "cpu")
    acc.add(x, weights)
    wt = weights[-6:]
    expected = 2 * sum(wt[t] * torch.outer(x[b, t], x[b, t]) for b in range(2) for t in range(6)) / (2 * wt.sum())
    assert torch.allclose(acc.hessian(), expected, rtol=1e-5, atol=1e-6)
    ones, plain = HessianAccumulator(5, "cpu"), HessianAccumulator(5, "cpu")
    ones.add(x, torch.ones(10))
    plain.add(x, None)
    assert torch.equal(ones.hessian(), plain.hessian())


def _packed_block(kind, dtype, config):
    model = build_tiny(kind).to(dtype)
    adapter = get_adapter(model)
    block = adapter.blocks(model)[0]
    inputs = capture_block_inputs(model, block, [torch.tensor(d) for d in DATA])
    make_rtn_block_quantizer(config)(block, f"{adapter.blocks_path}.0")
    return block, inputs


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_uniform_position_weights_give_plain_gptq_bit_for_bit(kind):
    config = FairCalibConfig(method="gptq", calibration_dataset=DATA, seq_len=32)
    results = []
    for weights in (None, torch.ones(32)):
        block, inputs = _packed_block(kind, torch.float32, config)
        gptq_block(block, inputs, config, weights)
        results.append({n: m.state_dict() for n, m in block.named_modules() if isinstance(m, PackedLinear)})
    assert results[0].keys() == results[1].keys() and results[0]
    for name in results[0]:
        for key in results[0][name]:
            assert torch.equal(results[0][name][key], results[1][name][key]), (name, key)
    block, inputs = _packed_block(kind, torch.float32, config)
    prior = torch.linspace(0.1, 3.0, 32)
    gptq_block(block, inputs, config, prior)
    weighted = {n: m.state_dict() for n, m in block.named_modules() if isinstance(m, PackedLinear)}
    assert any(not torch.equal(weighted[n]["weight_packed"], results[0][n]["weight_packed"]) for n in weighted)


VARIANTS = {
    "gptq": {"method": "gptq"},
    "quarot-gptq": {"method": "quarot", "weight_rounding": "gptq"},
    "flatquant-gptq": {"method": "flatquant", "weight_rounding": "gptq", "epochs": 1},
    "fair_calib-gptq": {"method": "fair_calib", "weight_rounding": "gptq", "epochs": 1, "n_probe": 2,
                        "probe_batch_size": 2},
    "w4a16-g32-gptq-prior": {"method": "gptq", "a_bits": 16, "group_size": 32, "gptq_position_weights": "prior",
                             "n_probe": 2, "probe_batch_size": 2},
    "w8a16-gptq": {"method": "gptq", "w_bits": 8, "a_bits": 16},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_gptq_error_never_above_rtn_for_every_linear(tiny_dirs, kind, dtype, variant):
    """The report records, per linear, the weighted reconstruction error on the calibration inputs of the GPTQ
    codes and of RTN on the same grid: GPTQ's is never above RTN's."""
    config = FairCalibConfig(calibration_dataset=DATA, num_samples=3, seq_len=32, **VARIANTS[variant])
    model = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True, quantization_config=config, dtype=dtype)
    report = model.hf_quantizer.calibration_report
    errors = [pair for b in report.blocks for pair in b.extra["gptq_weighted_error"].values()]
    assert len(errors) == 14
    for gptq, rtn in errors:
        assert gptq <= rtn * (1 + 1e-6)
    assert sum(g < r for g, r in errors) >= 10
    assert all(not hasattr(m, "_gptq_target") for m in model.modules())
    assert (report.prior is not None) == config.uses_prior
