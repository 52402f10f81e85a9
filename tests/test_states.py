"""Stage II calibration states (issue 27): observed / masked / trajectory states and per-state frontier weights."""
import pytest
import torch
from transformers import AutoModel

import fair_calib_hf.calibration as calibration
from fair_calib_hf import FairCalibConfig
from fair_calib_hf.calibration import block_loop
from fair_calib_hf.calibration.data import load_calibration_samples
from fair_calib_hf.calibration.stage1_prior import lambda0
from fair_calib_hf.calibration.stage2_fit import weighted_mse
from fair_calib_hf.calibration.states import (CalibrationStates, build_states, frontier_weights, masked_states,
                                              trajectory_states)
from fair_calib_hf.config import applicable_fields
from fair_calib_hf.decoding.samplers import DecodeConfig, diffusion_generate

from test_fair_calib import TEXTS

SEQ_LEN, WINDOW, STEPS = 96, 32, 16
DTYPES = [torch.float32, torch.bfloat16]


def _cfg(method="flatquant", **kw):
    base = dict(method=method, calibration_dataset=TEXTS, num_samples=8, seq_len=SEQ_LEN, epochs=1, batch_size=4,
                n_probe=8, prior_window=WINDOW, probe_steps=STEPS, probe_batch_size=8)
    base.update(kw)
    return FairCalibConfig(**base)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _quantize(path, dtype, cfg):
    return AutoModel.from_pretrained(path, trust_remote_code=True, dtype=dtype, quantization_config=cfg)


def _fp(path, dtype):
    return AutoModel.from_pretrained(path, trust_remote_code=True, dtype=dtype).eval()


# -- loss weights ---------------------------------------------------------------------------------------------

def test_weighted_mse_takes_one_row_of_weights_per_sample():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    w = torch.rand(2, 7, generator=g)  # P = 7 >= N = 5: the last 5 positions are used
    err = (a - b).pow(2).mean(-1)
    torch.testing.assert_close(weighted_mse(a, b, w), (err * w[:, 2:]).mean())
    assert torch.equal(weighted_mse(a, b, torch.ones(2, 5)), weighted_mse(a, b, None))
    with pytest.raises(ValueError, match="3 rows of per-sample weights for 2 samples"):
        weighted_mse(a, b, torch.ones(3, 5))


def test_frontier_weights_of_a_hand_worked_example():
    """K = 3, T = 3, L = 5; one decoding commits position 2 at step 0, position 0 at step 1, position 1 at step 2;
    states S_0 and S_1 of it. λ0 (early, γ = 1) = [2, 1.5, 1].
    S_0: frontier [0, 0, 2]; all masked, raw c̃ [.2, .6, 1] -> [0, .5, 1].
    S_1: frontier [1.5, 0, 0]; positions 0 and 1 masked, raw c̃ [.3, .9, 0] -> [0, 1, 0] (position 2 committed).
    Each term over both states scaled to mean 1 (F: 3.5/6, R: 2.5/6), averaged; floor 0.1 × window mean (1);
    the whole [2, 5] rescaled to mean 1 (sum 6.4 over 10 entries)."""
    commit = torch.tensor([[1, 2, 0], [1, 2, 0]])
    step = torch.tensor([0, 1])
    rel = torch.tensor([[0.2, 0.6, 1.0], [0.3, 0.9, 0.0]])
    w = frontier_weights(commit, step, rel, lambda0(3, "early", 1.0), seq_len=5, terms="both", floor=0.1)
    f, r = 6 / 3.5, 6 / 2.5
    expected = torch.tensor([[0.1, 0.1, 0.0, 0.5 * r / 2, (2 * f + r) / 2],
                             [0.1, 0.1, 1.5 * f / 2, r / 2, 0.0]], dtype=torch.float64) / 0.64
    torch.testing.assert_close(w, expected.float())
    only = frontier_weights(commit, step, rel, lambda0(3, "early", 1.0), seq_len=5, terms="frontier", floor=0.0)
    torch.testing.assert_close(only, torch.tensor([[0, 0, 0, 0, 2.0], [0, 0, 1.5, 0, 0]]) / 0.35)
    shifted = frontier_weights(commit, step, rel, lambda0(3, "early", 1.0), seq_len=5, floor=0.1, logits_shift=1)
    torch.testing.assert_close(shifted, torch.cat([w[:, 1:], w[:, :1]], 1))  # token i's weight on hidden i - 1


# -- masked states ----------------------------------------------------------------------------------------------

def test_masked_states_mask_only_the_window_with_a_per_state_ratio():
    seqs = torch.arange(4 * 20).reshape(4, 20) + 1
    states, ratios = masked_states(seqs, 8, 0, 3, torch.Generator().manual_seed(1))
    again, _ = masked_states(seqs, 8, 0, 3, torch.Generator().manual_seed(1))
    assert torch.equal(states, again) and states.shape == (12, 20) and ratios.shape == (12,)
    assert torch.equal(states[:, :12], seqs.repeat_interleave(3, 0)[:, :12])  # prompt untouched
    window = states[:, 12:]
    assert bool(((window == 0) | (window == seqs.repeat_interleave(3, 0)[:, 12:])).all())
    assert bool((ratios > 1e-3 - 1e-12).all()) and bool((ratios <= 1).all())
    _, many = masked_states(torch.ones(2000, 20, dtype=torch.long), 8, 0, 1, torch.Generator().manual_seed(2))
    assert abs(float(many.mean()) - 0.5) < 0.03  # r uniform on (ε, 1]


# -- the states reach the blocks -----------------------------------------------------------------------------

@pytest.fixture
def block_samples(monkeypatch):
    """The token sequences whose block-0 inputs the block loop captures (what every block is calibrated on)."""
    seen = []
    original = block_loop.capture_block_inputs

    def capture(model, first_block, samples):
        seen.append(torch.stack(samples))
        return original(model, first_block, samples)
    monkeypatch.setattr(block_loop, "capture_block_inputs", capture)
    return seen


@pytest.mark.parametrize("kind", ["llada", "dream"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("states", ["observed", "masked", "trajectory"])
def test_blocks_see_the_mask_token_only_on_masked_and_trajectory_states(tiny_dirs, block_samples, kind, dtype,
                                                                        states):
    cfg = _cfg(calibration_states=states, states_per_sequence=2 if states != "observed" else 1)
    model = _quantize(tiny_dirs[kind], dtype, cfg)
    mask_id = model.config.mask_token_id
    (seen,) = block_samples
    assert seen.shape == ((16 if states != "observed" else 8), SEQ_LEN)
    if states == "observed":
        assert not bool((seen == mask_id).any())
        return
    assert bool((seen == mask_id).any())
    assert not bool((seen[:, :SEQ_LEN - WINDOW] == mask_id).any())  # only the answer window is ever masked
    report = model.hf_quantizer.calibration_report
    assert report.states.kind == states and report.num_samples == 8
    fp = _fp(tiny_dirs[kind], dtype)
    expected = build_states(fp, load_calibration_samples(cfg, fp, fixed_length=True), cfg).sequences
    assert torch.equal(seen, torch.stack(expected))  # deterministic for the seed


@pytest.mark.parametrize("kind", ["llada", "dream"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_trajectory_states_are_the_teachers_decoding_states(tiny_dirs, kind, dtype):
    model = _fp(tiny_dirs[kind], dtype)
    cfg = _cfg(calibration_states="trajectory", states_per_sequence=3)
    seqs = torch.stack(load_calibration_samples(cfg, model, fixed_length=True))
    out = trajectory_states(model, seqs, cfg)
    # the teacher decoding the prompts as documented: the family's deployed sampler, Stage I's geometry
    policy, block = ("low_confidence", WINDOW) if kind == "llada" else ("maskgit_plus", None)
    dec = DecodeConfig(gen_length=WINDOW, steps=STEPS, block_length=block, policy=policy,
                       seed=cfg.seed * 1_000_003 + 7, final_observation=False)
    traj = diffusion_generate(model, seqs[:, :SEQ_LEN - WINDOW], config=dec).trajectory
    mask_id = model.config.mask_token_id
    assert out.metadata["policy"] == policy and len(out.sequences) == 24
    for j, (state, t) in enumerate(zip(out.sequences, out.metadata["step"])):
        n = j // 3
        assert torch.equal(state[:SEQ_LEN - WINDOW], seqs[n, :SEQ_LEN - WINDOW])
        window = state[SEQ_LEN - WINDOW:]
        done = (traj.commit_step[n] >= 0) & (traj.commit_step[n] < t)
        assert torch.equal(window[done], traj.tokens[n][done])  # the teacher's committed tokens
        assert bool((window[~done] == mask_id).all())  # every other window position still masked
    steps = torch.tensor(out.metadata["step"]).reshape(8, 3)
    assert all(len(set(row.tolist())) == 3 for row in steps)  # distinct steps per sequence


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_frontier_weights_reach_stage2(tiny_dirs, monkeypatch, kind):
    """Per-state weights passed to Stage II are the frontier weights of the teacher's recorded trajectories, and
    they change the calibrated model against the static prior."""
    given = []
    original = calibration.fit_block

    def spy(block, path, inputs, targets, weights, config, adapter):
        given.append(weights)
        return original(block, path, inputs, targets, weights, config, adapter)
    monkeypatch.setattr(calibration, "fit_block", spy)
    cfg = _cfg("fair_calib", calibration_states="trajectory", state_weights="frontier", states_per_sequence=2)
    frontier = _state(_quantize(tiny_dirs[kind], torch.float32, cfg))
    fp = _fp(tiny_dirs[kind], torch.float32)
    out = trajectory_states(fp, torch.stack(load_calibration_samples(cfg, fp, fixed_length=True)), cfg)
    assert given and all(torch.equal(w, out.weights) for w in given) and given[0].shape == (16, SEQ_LEN)
    static = _state(_quantize(tiny_dirs[kind], torch.float32, _cfg("fair_calib", calibration_states="trajectory",
                                                                    states_per_sequence=2)))
    assert any(not torch.equal(frontier[k], static[k]) for k in frontier if k.endswith("weight_packed"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_uniform_per_state_weights_on_observed_states_are_flatquant_bit_for_bit(tiny_dirs, monkeypatch, dtype):
    plain = _state(_quantize(tiny_dirs["dream"], dtype, _cfg(epochs=2)))
    explicit = _state(_quantize(tiny_dirs["dream"], dtype, _cfg(epochs=2, calibration_states="observed")))

    def uniform_rows(model, samples, config):
        return CalibrationStates(list(samples), torch.ones(len(samples), config.seq_len), "observed")
    monkeypatch.setattr(calibration, "build_states", uniform_rows)
    rows = _state(_quantize(tiny_dirs["dream"], dtype, _cfg(epochs=2)))
    assert plain.keys() == explicit.keys() == rows.keys()
    assert all(torch.equal(plain[k], explicit[k]) and torch.equal(plain[k], rows[k]) for k in plain)


# -- config, errors, record ---------------------------------------------------------------------------------

def test_states_config_is_validated_serialized_and_reported():
    cfg = _cfg("fair_calib", calibration_states="trajectory", state_weights="frontier", trajectory_policy="random",
               states_per_sequence=4)
    again = FairCalibConfig.from_dict(cfg.to_dict())
    assert (again.calibration_states, again.state_weights, again.trajectory_policy, again.states_per_sequence) == \
        ("trajectory", "frontier", "random", 4)
    assert FairCalibConfig().calibration_states == "observed"
    for kw, message in [(dict(calibration_states="noisy"), "calibration_states='noisy'"),
                        (dict(state_weights="frontier"), "state_weights='frontier'"),
                        (dict(method="rtn", calibration_states="masked"), "calibration_states='masked'"),
                        (dict(trajectory_policy="threshold"), "trajectory_policy='threshold'"),
                        (dict(states_per_sequence=0), "states_per_sequence=0")]:
        with pytest.raises(ValueError, match=message):
            _cfg(**kw)
    assert "prior_window" in applicable_fields("flatquant", True, "masked")
    assert "prior_window" not in applicable_fields("flatquant", True)
    assert "trajectory_policy" in applicable_fields("fair_calib", True, "trajectory")
    assert not {"trajectory_policy", "states_per_sequence"} & applicable_fields("fair_calib", True)


@pytest.mark.parametrize("kw,message", [
    (dict(states_per_sequence=17), "states_per_sequence=17 exceeds the 16 decoding steps"),
    (dict(trajectory_policy="entropy", probe_block_length=8), "decodes without blocks"),
])
def test_states_that_cannot_be_drawn_are_refused_before_stage1(tiny_dirs, monkeypatch, kw, message):
    def no_probe(*a, **k):
        raise AssertionError("Stage I ran before the states were checked")
    monkeypatch.setattr(calibration, "probe_position_prior", no_probe)
    with pytest.raises(ValueError, match=message):
        _quantize(tiny_dirs["llada"], torch.float32, _cfg("fair_calib", calibration_states="trajectory", **kw))


# -- offloading, chained quantized inputs, prior reuse, CLI ---------------------------------------------------

@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_offloaded_quantized_chain_trajectory_equals_in_memory(tiny_dirs, tmp_path, kind):
    from test_offload import DEVICE_MAPS

    cfg = dict(method="fair_calib", calibration_states="trajectory", state_weights="frontier", block_inputs="quantized")
    ref = _state(_quantize(tiny_dirs[kind], torch.float32, _cfg(**cfg)))
    off = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True, quantization_config=_cfg(**cfg),
                                    device_map=DEVICE_MAPS[kind], offload_folder=str(tmp_path / "offload"))
    got = off.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def test_a_saved_prior_is_reused_on_masked_states(tiny_dirs, tmp_path):
    first = _quantize(tiny_dirs["llada"], torch.float32, _cfg("fair_calib", calibration_states="masked"))
    path = str(tmp_path / "prior.safetensors")
    first.hf_quantizer.calibration_report.prior.save(path)
    again = _quantize(tiny_dirs["llada"], torch.float32, _cfg("fair_calib", calibration_states="masked",
                                                              prior_path=path))
    a, b = _state(first), _state(again)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again.config.quantization_config.to_dict()["calibration_states"] == "masked"
    with pytest.raises(ValueError, match="prior_window"):  # a prior of another geometry is refused as before
        _quantize(tiny_dirs["llada"], torch.float32, _cfg("fair_calib", calibration_states="masked", prior_path=path,
                                                          prior_window=16, probe_steps=16))


def test_cli_sets_the_states():
    from fair_calib_hf.cli.commands import _parse_set

    fields = _parse_set(["calibration_states=trajectory", "state_weights=frontier", "states_per_sequence=2"])
    cfg = _cfg("fair_calib", **fields)
    assert (cfg.calibration_states, cfg.state_weights, cfg.states_per_sequence) == ("trajectory", "frontier", 2)


def test_benchmark_variants_are_valid_configs():
    from fair_calib_hf.bench.calibrate import STATES
    from fair_calib_hf.bench.quality import CONFIGS, PAIRS, STATES_CONFIGS

    assert len(STATES_CONFIGS) == 7
    for name in STATES_CONFIGS:
        method, overrides = CONFIGS[name]
        assert FairCalibConfig(method=method, calibration_dataset=["x"], **overrides).calibration_states != "observed"
        assert (name, "flatquant") in PAIRS and (name, method) in PAIRS
    for overrides in STATES.values():
        FairCalibConfig(method="fair_calib", calibration_dataset=["x"], **overrides)


def test_bench_calibrate_times_stage2_per_state_kind():
    from fair_calib_hf.bench.calibrate import run_one

    row = run_one("tiny-dream", "fair_calib", "trajectory-frontier")
    assert row["states"] == "trajectory-frontier" and row["states_s"] > 0 and row["samples"] == 16
    assert row["stage2_s_per_step"] > 0 and row["steps_per_block"] == 60  # 15 epochs × 16 states / batch 4
