"""FAIR-Calib and its baselines: transforms, Stage I prior, Stage II loss, end-to-end methods."""
import math
import os

import pytest
import torch
from torch import nn
from transformers import AutoModel

from fair_calib_hf import FairCalibConfig, W4A4Linear
from fair_calib_hf.calibration import PositionPrior
from fair_calib_hf.calibration.stage1_prior import accumulate_rollout, combine_prior, lambda0
from fair_calib_hf.calibration.stage2_fit import SiteParams, weighted_mse
from fair_calib_hf.calibration.transforms import (
    hadamard,
    hadamard_factors,
    kron_apply,
    kronecker_factors,
    orthogonal_hadamard_factors,
)

from conftest import CALIB_TEXTS

DOWN = {"llada": "model.transformer.blocks.0.ff_out", "dream": "model.layers.0.mlp.down_proj"}
# Enough text for several 96-token Stage II sequences (the project's own source files exist on every machine).
TEXTS = [open(os.path.join(os.path.dirname(torch.__file__), "nn", "modules", f)).read()[:2000]
         for f in ("linear.py", "activation.py", "normalization.py")] + CALIB_TEXTS


@pytest.mark.parametrize("n,factors", [(4096, (64, 64)), (3584, (56, 64)), (18944, (128, 148)),
                                       (12288, (96, 128)), (14336, (112, 128)), (224, (14, 16)), (7, (1, 7))])
def test_kronecker_factor_sizes(n, factors):
    assert kronecker_factors(n) == factors


@pytest.mark.parametrize("n", [1, 2, 4, 12, 20, 28, 36, 40, 44, 60, 108, 140, 148, 56, 96, 224])
def test_hadamard_constructions(n):
    h = hadamard(n)
    assert h is not None and set(h.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(h @ h.t(), n * torch.eye(n, dtype=torch.float64))


def test_no_hadamard_where_none_exists_and_quarot_factors_for_real_widths():
    assert hadamard(14) is None and hadamard(6) is None and hadamard(52) is None  # 52: Paley needs GF(25)
    for n in (4096, 3584, 18944, 12288, 14336, 96, 224):
        a, b = hadamard_factors(n)
        assert a * b == n
        left, right = orthogonal_hadamard_factors(n, torch.Generator().manual_seed(0)) if n < 5000 else (None, None)
        if left is not None:
            p = torch.kron(left.double(), right.double())
            torch.testing.assert_close(p @ p.t(), torch.eye(n, dtype=torch.float64), atol=1e-5, rtol=0)


def test_kron_apply_matches_dense():
    g = torch.Generator().manual_seed(0)
    x, left, right = torch.randn(5, 12, generator=g), torch.randn(3, 3, generator=g), torch.randn(4, 4, generator=g)
    torch.testing.assert_close(kron_apply(x, left, right), x @ torch.kron(left, right), rtol=1e-5, atol=1e-5)


def test_transform_is_exactly_invertible_in_float():
    """Unquantised: (x ⊙ d)(L ⊗ R) · ((W ⊘ d)(L ⊗ R)^{-T})ᵀ equals x Wᵀ within fp32 tolerance."""
    torch.manual_seed(0)
    lin = nn.Linear(96, 40)
    x = torch.randn(7, 96) * torch.linspace(0.1, 20, 96)  # outlier channels
    cfg = FairCalibConfig(method="flatquant", calibration_dataset=["x"])
    site = SiteParams(96, x.abs().amax(0), lin.weight.abs().amax(0), cfg, torch.Generator().manual_seed(1))
    with torch.no_grad():
        site.left.add_(0.1 * torch.randn_like(site.left))  # a generic (non-orthogonal) invertible transform
        xt = kron_apply(x * site.diag, site.left, site.right)
        y = xt @ site.transform_weight(lin.weight).t() + lin.bias
    torch.testing.assert_close(y, lin(x), rtol=1e-4, atol=1e-4)


def test_uniform_weighted_loss_is_plain_mse():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 9, 16, generator=g), torch.randn(2, 9, 16, generator=g)
    torch.testing.assert_close(weighted_mse(a, b, None), nn.functional.mse_loss(a, b), rtol=1e-6, atol=0)
    torch.testing.assert_close(weighted_mse(a, b, torch.ones(9)), nn.functional.mse_loss(a, b))
    w = torch.zeros(9)
    w[3] = 9.0  # all weight on one position
    torch.testing.assert_close(weighted_mse(a, b, w), (a[:, 3] - b[:, 3]).pow(2).mean())


def test_lambda0_schedules():
    assert lambda0(3, "early", 1.0).tolist() == [2.0, 1.5, 1.0]
    assert lambda0(3, "late", 1.0).tolist() == [1.0, 1.5, 2.0]
    assert lambda0(3, "flat").tolist() == [1.0, 1.0, 1.0]


def test_prior_from_hand_built_trajectory():
    # one rollout, K = 3 positions, T = 3 steps; commits: pos 2 at step 0, pos 0 at step 1, pos 1 at step 2
    commit_step = torch.tensor([[1, 2, 0]])
    rel = torch.tensor([[[0.2, 0.6, 1.0]],    # t=0: all masked -> rownorm (0, .5, 1)
                        [[0.3, 0.9, 0.0]],    # t=1: pos 0, 1 masked -> (0, 1)
                        [[0.0, 0.5, 0.0]]])   # t=2: only pos 1 masked -> degenerate row -> 1
    lam = lambda0(3, "early", 1.0)  # [2, 1.5, 1]
    f, r = accumulate_rollout(commit_step, rel, lam)
    assert f.tolist() == [1.5, 1.0, 2.0]
    # reliability = mean over the steps a position was masked (t <= its commit step)
    torch.testing.assert_close(r, torch.tensor([(0 + 0) / 2, (0.5 + 1 + 1) / 3, 1.0 / 1], dtype=torch.float64))
    w = combine_prior(f, r, seq_len=5, terms="frontier", floor=0.1)
    window = f / f.mean()  # [1, 2/3, 4/3]
    expected = torch.cat([torch.full((2,), 0.1), window])
    torch.testing.assert_close(w, (expected / expected.mean()).float())
    both = combine_prior(f, r, seq_len=5, terms="both", floor=0.1)
    win = (f / f.mean() + r / r.mean()) / 2
    exp2 = torch.cat([torch.full((2,), 0.1), win])
    torch.testing.assert_close(both, (exp2 / exp2.mean()).float())
    shifted = combine_prior(f, r, seq_len=5, terms="frontier", floor=0.1, logits_shift=1)
    torch.testing.assert_close(shifted, torch.cat([w[1:], w[:1]]))  # token i's weight lands on hidden i-1
    assert math.isclose(float(w.mean()), 1.0, rel_tol=1e-6)


def test_prior_save_load(tmp_path):
    prior = PositionPrior(torch.rand(10), torch.rand(4), torch.rand(4), {"window": 4, "schedule": "early"})
    prior.save(str(tmp_path / "p.safetensors"))
    again = PositionPrior.load(str(tmp_path / "p.safetensors"))
    assert torch.equal(again.weights, prior.weights) and again.metadata == prior.metadata
    assert torch.equal(PositionPrior.from_json(prior.to_json()).weights, prior.weights)


def _cfg(method, **kw):
    base = dict(method=method, calibration_dataset=TEXTS, num_samples=8, seq_len=96, epochs=10, batch_size=2,
                n_probe=8, prior_window=32, probe_steps=16)
    base.update(kw)
    return FairCalibConfig(**base)


@pytest.fixture(scope="module")
def calibrated(tiny_dirs, tmp_path_factory):
    """Every method on both families: (model, saved dir)."""
    out = {}
    for kind in ("llada", "dream"):
        for method in ("rtn", "quarot", "flatquant", "fair_calib"):
            model = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True, quantization_config=_cfg(method))
            path = str(tmp_path_factory.mktemp(f"{kind}-{method}"))
            model.save_pretrained(path)
            out[kind, method] = (model, path)
    return out


@pytest.mark.parametrize("kind", ["llada", "dream"])
@pytest.mark.parametrize("method", ["rtn", "quarot", "flatquant", "fair_calib"])
def test_method_round_trips_bit_identically(calibrated, kind, method, input_ids):
    model, path = calibrated[kind, method]
    again = AutoModel.from_pretrained(path, trust_remote_code=True)
    with torch.no_grad():
        assert torch.equal(again(input_ids=input_ids).logits, model(input_ids=input_ids).logits)
    down = dict(again.named_modules())[DOWN[kind]]
    assert isinstance(down, W4A4Linear)
    assert (down.input_transform is None) == (method == "rtn")


@pytest.mark.parametrize("kind", ["llada", "dream"])
@pytest.mark.parametrize("method", ["flatquant", "fair_calib"])
def test_stage2_reduces_block_error_vs_rtn(calibrated, kind, method):
    rtn = calibrated[kind, "rtn"][0].hf_quantizer.calibration_report.blocks
    fitted = calibrated[kind, method][0].hf_quantizer.calibration_report.blocks
    assert len(rtn) == len(fitted) == 2
    for a, b in zip(rtn, fitted):
        assert b.rel_mse < a.rel_mse, (a.name, a.rel_mse, b.rel_mse)
        losses = b.extra["epoch_losses"]
        assert len(losses) == 10 and losses[-1] < losses[0]


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_prior_is_stored_with_the_checkpoint_and_reusable(calibrated, kind, tmp_path, tiny_dirs):
    model, path = calibrated[kind, "fair_calib"]
    prior = model.hf_quantizer.calibration_report.prior
    assert prior.weights.shape == (96,) and math.isclose(float(prior.weights.mean()), 1.0, rel_tol=1e-5)
    assert prior.metadata["logits_shift"] == (1 if kind == "dream" else 0) and prior.metadata["window"] == 32
    stored = PositionPrior.from_checkpoint(path)
    assert torch.equal(stored.weights, prior.weights) and stored.metadata == prior.metadata
    resaved = str(tmp_path / "resaved")
    AutoModel.from_pretrained(path, trust_remote_code=True).save_pretrained(resaved)
    assert torch.equal(PositionPrior.from_checkpoint(resaved).weights, prior.weights)  # survives a re-save
    prior.save(str(tmp_path / "prior.safetensors"))
    reused = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True, quantization_config=_cfg(
        "fair_calib", prior_path=str(tmp_path / "prior.safetensors")))
    report = reused.hf_quantizer.calibration_report
    assert torch.equal(report.prior.weights, prior.weights)
    a, b = reused.state_dict(), model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # same prior, same seed: same checkpoint


def test_prior_length_mismatch_and_too_little_data(tiny_dirs, tmp_path):
    PositionPrior(torch.ones(50), torch.ones(8), torch.ones(8), {}).save(str(tmp_path / "p.safetensors"))
    with pytest.raises(ValueError, match="seq_len"):
        AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True, quantization_config=_cfg(
            "fair_calib", prior_path=str(tmp_path / "p.safetensors")))
    with pytest.raises(ValueError, match="fewer than seq_len"):
        AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True, quantization_config=_cfg(
            "flatquant", calibration_dataset=["too short"]))
    with pytest.raises(ValueError, match="needs calibration_dataset"):
        AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True,
                                  quantization_config=FairCalibConfig(method="flatquant"))


def test_prior_of_another_family_or_geometry_is_refused(tiny_dirs, tmp_path):
    """A prior probed on a LLaDA-style model (logit shift 0) reused on a Dream-style one (shift 1), or with
    another window, weights the wrong positions: refused, naming every difference."""
    llada = PositionPrior(torch.ones(96), torch.ones(32), torch.ones(32),
                          {"family": "llada", "logits_shift": 0, "seq_len": 96, "window": 32})
    llada.save(str(tmp_path / "llada.safetensors"))
    with pytest.raises(ValueError, match=r"probed with model family 'llada', logit shift 0, but this "
                                         r"calibration uses model family 'dream', logit shift 1"):
        AutoModel.from_pretrained(tiny_dirs["dream"], trust_remote_code=True, quantization_config=_cfg(
            "fair_calib", prior_path=str(tmp_path / "llada.safetensors")))
    with pytest.raises(ValueError, match=r"probed with prior_window 32, but this calibration uses prior_window 16"):
        AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True, quantization_config=_cfg(
            "fair_calib", prior_path=str(tmp_path / "llada.safetensors"), prior_window=16))


def test_prior_path_is_recorded_as_a_content_hash(tiny_dirs, tmp_path):
    import hashlib

    path = tmp_path / "p.safetensors"
    PositionPrior(torch.ones(8), torch.ones(4), torch.ones(4), {}).save(str(path))
    record = FairCalibConfig(method="fair_calib", prior_path=str(path)).to_dict()["prior_path"]
    assert record == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert FairCalibConfig.from_dict(FairCalibConfig(prior_path=record).to_dict()).prior_path == record
    assert FairCalibConfig(prior_path=str(tmp_path / "gone")).to_dict()["prior_path"] is None  # never a path
    with pytest.raises(ValueError, match="content hash a saved checkpoint records, not a file"):
        AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True,
                                  quantization_config=_cfg("fair_calib", prior_path=record))


def test_seq_len_beyond_the_model_positions_is_refused(tiny_dirs):
    for method in ("flatquant", "fair_calib"):  # packed sequences of exactly seq_len tokens
        with pytest.raises(ValueError, match="exceed the model's 512 positions.*seq_len=512 or less"):
            AutoModel.from_pretrained(tiny_dirs["dream"], trust_remote_code=True, quantization_config=_cfg(
                method, seq_len=1024))
    long_row = [list(range(5, 95)) * 7]  # 630 tokens, kept whole by seq_len=1024
    with pytest.raises(ValueError, match="630 tokens exceed the model's 512 positions"):
        AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True, quantization_config=FairCalibConfig(
            method="rtn", calibration_dataset=long_row))


def test_rtn_with_too_little_data_says_what_it_did(tiny_dirs, caplog):
    with caplog.at_level("WARNING"):
        AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True, quantization_config=FairCalibConfig(
            method="rtn", calibration_dataset=[list(range(5, 16))]))
    assert "method=rtn: the quantized weights do not depend on calibration data; the 1 sample(s) found (11 tokens, " \
           "fewer than num_samples=128) only measure the block errors" in caplog.text


def test_quarot_data_free_and_clip_search(tiny_dirs, input_ids):
    free = AutoModel.from_pretrained(tiny_dirs["dream"], trust_remote_code=True,
                                     quantization_config=FairCalibConfig(method="quarot"))
    searched = AutoModel.from_pretrained(tiny_dirs["dream"], trust_remote_code=True,
                                         quantization_config=FairCalibConfig(method="quarot", w_clip_search=True))
    a = dict(free.named_modules())[DOWN["dream"]]
    b = dict(searched.named_modules())[DOWN["dream"]]
    assert torch.equal(a.input_transform.left, b.input_transform.left)  # same fixed transform
    assert bool((b.weight_scale <= a.weight_scale + 1e-7).all()) and not torch.equal(a.weight_scale, b.weight_scale)


def test_diag_folds_into_norms_and_up_rows(calibrated):
    """After fitting, q/k/v, gate/up and down carry no online diagonal (folded), o_proj keeps its own."""
    model, _ = calibrated["dream", "flatquant"]
    modules = dict(model.named_modules())
    for leaf in ("self_attn.q_proj", "self_attn.k_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
        assert modules[f"model.layers.0.{leaf}"].input_transform.diag is None
    assert modules["model.layers.0.self_attn.o_proj"].input_transform.diag is not None
    assert not torch.equal(modules["model.layers.0.input_layernorm"].weight,
                           torch.ones_like(modules["model.layers.0.input_layernorm"].weight))


def test_pack_samples_option(tiny_dirs):
    with pytest.raises(ValueError, match="pack_samples"):
        FairCalibConfig(method="flatquant", calibration_dataset=TEXTS, pack_samples=False)
    q = AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True, quantization_config=FairCalibConfig(
        method="rtn", calibration_dataset=TEXTS, num_samples=5, seq_len=64, pack_samples=True))
    assert q.hf_quantizer.calibration_report.num_samples == 5


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "json", "parquet"])
def test_calibration_data_from_local_files(tiny_dirs, tmp_path, fmt):
    import datasets

    ds = datasets.Dataset.from_dict({"text": TEXTS})
    path = tmp_path / f"calib.{fmt}"
    if fmt == "txt":
        path.write_text("\n".join(t.replace("\n", " ") for t in TEXTS))
    elif fmt == "jsonl":
        ds.to_json(str(path), lines=True)
    elif fmt == "json":
        ds.to_json(str(path), lines=False)
    else:
        ds.to_parquet(str(path))
    q = AutoModel.from_pretrained(tiny_dirs["dream"], trust_remote_code=True, quantization_config=_cfg(
        "flatquant", calibration_dataset=str(path), num_samples=4, epochs=1))
    assert q.hf_quantizer.calibration_report.num_samples == 4
    assert q.config.quantization_config.to_dict()["calibration_dataset"] == str(path)  # a path is kept as a record


def test_calibration_data_errors(tiny_dirs, tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"body": TEXTS})
    with pytest.raises(ValueError, match="no column 'text'"):
        AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True, quantization_config=_cfg(
            "flatquant", calibration_dataset=ds))
    ok = AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True, quantization_config=_cfg(
        "flatquant", calibration_dataset=ds, dataset_text_column="body", num_samples=2, epochs=1))
    assert ok.hf_quantizer.calibration_report.num_samples == 2
    (tmp_path / "calib.xml").write_text("<a/>")
    with pytest.raises(ValueError, match="unsupported extension"):
        AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True, quantization_config=_cfg(
            "flatquant", calibration_dataset=str(tmp_path / "calib.xml")))
    with pytest.raises(ValueError, match="calibration sample 1"):
        AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True, quantization_config=_cfg(
            "rtn", calibration_dataset=["fine", 3.5]))


def test_fair_calib_is_deterministic_and_leaves_the_global_rng_alone(tiny_dirs, tmp_path):
    """Same model, data, config and seed: a bit-identical checkpoint (Stage I and Stage II included): the
    same header entries and byte-identical tensor data. (safetensors writes the header's metadata map in an
    arbitrary key order, so the raw header bytes are compared as parsed JSON.)"""
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    paths = []
    for run in range(2):
        model = AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True,
                                          quantization_config=_cfg("fair_calib", epochs=2))
        if run == 0:
            assert torch.equal(torch.rand(3), expected_next)  # calibration did not consume the global RNG
        path = tmp_path / f"run{run}"
        model.save_pretrained(str(path))
        paths.append(path / "model.safetensors")
    import json
    import struct

    def parts(path):
        raw = path.read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        return json.loads(raw[8:8 + n]), raw[8 + n:]

    (head_a, data_a), (head_b, data_b) = parts(paths[0]), parts(paths[1])
    assert head_a == head_b and data_a == data_b


# -- the prior reaches Stage II; clipping off means no clipping; Stage I geometry is checked -------------------

def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_stage2_depends_on_the_prior(tiny_dirs, tmp_path, dtype):
    """A uniform prior reproduces flatquant bit for bit; a non-uniform prior (all weight on the window, as
    Stage I shapes it) gives a different checkpoint. Same data, seed and Stage II settings throughout."""
    seq_len = 96
    uniform, ramp = tmp_path / "uniform.safetensors", tmp_path / "ramp.safetensors"
    PositionPrior(torch.ones(seq_len), torch.ones(32), torch.ones(32), {}).save(str(uniform))
    w = torch.cat([torch.full((seq_len - 32,), 0.1), torch.linspace(2.0, 0.5, 32)])
    PositionPrior(w / w.mean(), torch.ones(32), torch.ones(32), {}).save(str(ramp))

    def load(method, **kw):
        return _state(AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True, dtype=dtype,
                                                quantization_config=_cfg(method, epochs=2, **kw)))

    flat = load("flatquant")
    with_uniform = load("fair_calib", prior_path=str(uniform))
    with_ramp = load("fair_calib", prior_path=str(ramp))
    assert flat.keys() == with_uniform.keys() == with_ramp.keys()
    assert all(torch.equal(flat[k], with_uniform[k]) for k in flat)
    differ = [k for k in flat if not torch.equal(flat[k], with_ramp[k])]
    assert any(k.endswith("weight_packed") for k in differ), differ


def test_clipping_off_means_no_clipping():
    """``lwc=False`` / ``lac=False``: the fitted linear quantizes with clip ratio exactly 1 (scale = max|x|/7),
    not the frozen logit's σ(4) ≈ 0.982."""
    from fair_calib_hf.calibration.stage2_fit import FitLinear, fake_quant_rows

    torch.manual_seed(0)
    lin = nn.Linear(16, 8, bias=False)
    x = torch.randn(5, 16)
    cfg = FairCalibConfig(method="flatquant", calibration_dataset=["x"], add_diag=False, lwc=False, lac=False)
    site = SiteParams(16, x.abs().amax(0), lin.weight.abs().amax(0), cfg, torch.Generator().manual_seed(1))
    with torch.no_grad():
        site.left.copy_(torch.eye(site.left.shape[0]))
        site.right.copy_(torch.eye(site.right.shape[0]))
    fit = FitLinear(lin, site, cfg)
    ones = torch.ones(())
    expected = fake_quant_rows(x, ones) @ fake_quant_rows(lin.weight, ones).t()
    with torch.no_grad():
        assert torch.equal(fit(x), expected)
    assert float(site.input_clip()) == 1.0 and bool((fit.weight_clip() == 1.0).all())
    learned = FairCalibConfig(method="flatquant", calibration_dataset=["x"], add_diag=False)
    site_l = SiteParams(16, x.abs().amax(0), lin.weight.abs().amax(0), learned, torch.Generator().manual_seed(1))
    assert float(site_l.input_clip().detach()) == pytest.approx(1 / (1 + math.exp(-4.0)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_clipping_off_packs_clip_ratio_one(tiny_dirs, dtype):
    model = AutoModel.from_pretrained(tiny_dirs["dream"], trust_remote_code=True, dtype=dtype,
                                      quantization_config=_cfg("flatquant", epochs=1, lwc=False, lac=False))
    packed = [m for m in model.modules() if isinstance(m, W4A4Linear)]
    assert packed and all(float(m.input_clip) == 1.0 for m in packed)


@pytest.mark.parametrize("overrides,message", [
    (dict(probe_block_length=12), "probe_block_length=12 does not divide the probe window K=32"),
    (dict(probe_block_length=8, probe_steps=6), "probe_steps=6 .* not a multiple of the 4 blocks"),
])
def test_stage1_refuses_a_geometry_that_does_not_fit(tiny_dirs, overrides, message):
    with pytest.raises(ValueError, match=message):
        AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True,
                                  quantization_config=_cfg("fair_calib", epochs=1, **overrides))
