"""Frontier diagnostics on hand-built trajectories with known answers, and on real models."""
import math
import os

import pytest
import torch
from transformers import AutoModel

from fair_calib_hf import FairCalibConfig
from fair_calib_hf.decoding import DecodeConfig
from fair_calib_hf.diagnostics import (
    aligned_amplification,
    compare_models,
    first_false_commit,
    own_diagnostics,
    read_post_commit,
    student_amplification,
    exact_match,
    flip_rate,
    lag_ccdf,
    lag_quantile,
    output_agreement,
    plot_amplification,
    plot_flip_rate,
    plot_lag_ccdf,
    plot_teacher_forced_prob_mse,
    post_commit_mismatch,
    probability_mse,
    stability_lags,
)


def t3(rows):
    """[O][G] nested lists -> [O, 1, G] tensor (one sequence)."""
    return torch.tensor(rows)[:, None, :]


def test_flip_rate_hand_built():
    # 3 steps, 4 positions; commits: step 0 -> {0, 1}, step 1 -> {2}, step 2 -> {3}
    commit_step = torch.tensor([[0, 0, 1, 2]])
    teacher = t3([[5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8]])
    student = t3([[5, 9, 7, 8],   # step 0: 1 of 2 frontier positions flipped
                  [9, 9, 9, 8],   # step 1: position 2 flipped (others are not on the frontier)
                  [5, 6, 7, 8]])  # step 2: no flip
    rate, per_step = flip_rate(teacher, student, commit_step)
    assert rate == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert per_step.tolist() == [0.5, 1.0, 0.0]


def test_flip_rate_skips_empty_frontiers():
    commit_step = torch.tensor([[1, 1]])
    teacher, student = t3([[1, 1], [1, 1]]), t3([[2, 2], [1, 2]])
    rate, per_step = flip_rate(teacher, student, commit_step)
    assert rate == 0.5 and math.isnan(per_step[0]) and per_step[1] == 0.5


def test_post_commit_mismatch_hand_built():
    tokens = torch.tensor([[4, 4, 4]])
    commit_step = torch.tensor([[0, 1, 3]])  # position 2 has no post-commit observation (O = 4)
    argmax = t3([[4, 0, 0],
                 [0, 4, 0],   # pos 0 disagrees
                 [4, 0, 0],   # pos 1 disagrees
                 [0, 0, 0]])  # pos 0 and 1 disagree
    md, na, n = post_commit_mismatch(argmax, tokens, commit_step)
    # pos 0: post obs 1,2,3 -> disagree at 1,3 -> 2/3; pos 1: post obs 2,3 -> 2/2 (never agrees)
    assert n == 2 and md == pytest.approx((2 / 3 + 1) / 2) and na == pytest.approx(0.5)


def test_stability_lag_persistent_first_and_censored():
    tokens = torch.tensor([[7, 7, 7]])
    commit_step = torch.tensor([[0, 0, 1]])
    argmax = t3([[7, 0, 0],
                 [0, 7, 7],
                 [7, 7, 0],
                 [7, 7, 0]])
    lags, censored = stability_lags(argmax, tokens, commit_step)
    # pos 0: agrees from obs 2 on -> 2 - 0; pos 1: from obs 1 -> 1; pos 2: never persistently -> O - 1 = 3
    assert lags.tolist() == [2, 1, 3] and censored.tolist() == [False, False, True]
    first, _ = stability_lags(argmax, tokens, commit_step, mode="first")
    assert first.tolist() == [0, 1, 0]
    with pytest.raises(ValueError):
        stability_lags(argmax, tokens, commit_step, mode="last")


def test_lag_ccdf_and_quantile():
    d, p = lag_ccdf(torch.tensor([0, 0, 1, 3]))
    assert d.tolist() == [0, 1, 2, 3] and p.tolist() == [1.0, 0.5, 0.25, 0.25]
    assert lag_quantile(torch.tensor(list(range(10))), 0.9) == 8.0


def test_probability_mse_agreement_exact_match():
    p = torch.tensor([[0.5, 0.5, 0.0]])
    q = torch.tensor([[0.0, 0.5, 0.5]])
    assert probability_mse(p, p).tolist() == [0.0]
    assert probability_mse(p, q).tolist() == [0.5]
    assert output_agreement(torch.tensor([[1, 2], [3, 4]]), torch.tensor([[1, 2], [3, 5]])) == (0.5, 0.75)
    assert exact_match([" 42", "7"], ["42", "8"]) == 0.5
    with pytest.raises(ValueError):
        exact_match(["1"], [])


@pytest.fixture(scope="module")
def pair(tiny_dirs):
    fp = AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True)
    q = AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True,
                                  quantization_config=FairCalibConfig(method="rtn"))
    return fp, q


def test_same_model_gives_zero_diagnostics(pair, input_ids):
    fp, _ = pair
    cfg = DecodeConfig(gen_length=16, steps=16, block_length=8)
    r = compare_models(fp, fp, input_ids[:, :6], config=cfg)
    assert r.flip_rate == 0 and r.teacher_forced_prob_mse_mean == 0
    assert all(v == 0 for v in r.teacher_forced_prob_mse_curve)
    assert r.false_commit_rate == 0 and sum(r.amplification_counts) == 0 and math.isnan(r.amplification_mean)
    assert r.sequence_agreement == 1.0 and r.token_agreement == 1.0
    assert r.mismatch["teacher"] == r.mismatch["student"] and r.lags["teacher"] == r.lags["student"]
    assert r.mismatch["teacher"]["remasked"]  # LLaDA-style: committed positions read re-masked


def test_quantized_student_and_plots(pair, input_ids, tmp_path):
    fp, q = pair
    cfg = DecodeConfig(gen_length=16, steps=16, block_length=8)
    r = compare_models(fp, q, input_ids[:, :6], config=cfg)
    assert 0 < r.flip_rate <= 1 and r.teacher_forced_prob_mse_mean > 0 and len(r.teacher_forced_prob_mse_curve) == 17
    assert 0 < r.false_commit_rate <= 1 and len(r.amplification_curve) == 17 and r.amplification_counts[0] > 0
    assert r.amplification_mean > 0
    assert r.settings["policy"] == "low_confidence" and r.settings["block_length"] == 8
    paths = [
        plot_lag_ccdf({"fp": r.lags["teacher"], "rtn": r.lags["student"]}, str(tmp_path / "ccdf.png")),
        plot_amplification({"rtn": r.amplification_curve}, str(tmp_path / "amp.png")),
        plot_teacher_forced_prob_mse({"rtn": r.teacher_forced_prob_mse_curve}, str(tmp_path / "tf.png")),
        plot_flip_rate({"rtn": r.flip_rate_per_step}, str(tmp_path / "flip.png")),
    ]
    for path in paths:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 1000


def test_exact_match_through_compare_models(tiny_dirs, pair, input_ids):
    """References equal to the teacher's own decoded text give teacher EM 1 and the stop tokens cut it."""
    from transformers import AutoTokenizer

    from fair_calib_hf.architectures import get_adapter
    from fair_calib_hf.diagnostics import decode_windows

    fp, q = pair
    tok = AutoTokenizer.from_pretrained(tiny_dirs["llada"], trust_remote_code=True)
    stops = get_adapter(fp).stop_token_ids(fp.config, tok)
    assert stops == [tok.eos_token_id, tok.convert_tokens_to_ids("<|eot_id|>")]
    assert decode_windows(torch.tensor([[40, 41, stops[1], 42]]), tok, stops) == [tok.decode([40, 41])]
    cfg = DecodeConfig(gen_length=8, steps=8, block_length=8)
    from fair_calib_hf.decoding import diffusion_generate

    teacher = diffusion_generate(fp, input_ids[:, :6], config=cfg)
    refs = decode_windows(teacher.trajectory.tokens, tok, stops)
    r = compare_models(fp, q, input_ids[:, :6], config=cfg, teacher_result=teacher, references=refs, tokenizer=tok)
    assert r.exact_match["teacher"] == 1.0 and 0 <= r.exact_match["student"] <= 1


def test_first_false_commit_and_aligned_amplification_hand_built():
    commit_step = torch.tensor([[0, 1, 2], [1, 0, 2], [0, 1, -1]])
    tokens = torch.tensor([[5, 6, 7], [5, 6, 7], [5, 6, 0]])
    teacher = torch.tensor([[5, 9, 9], [9, 6, 7], [5, 6, 7]])  # row 0: false at steps 1, 2; row 1: at 1; row 2: none
    first = first_false_commit(commit_step, tokens, teacher)
    assert first.tolist() == [1, 1, -1]
    o = 4  # observations t = 0..3 (the last one on the finished canvas)
    obs = torch.arange(o)[:, None, None]
    masked = (commit_step[None] < 0) | (commit_step[None] >= obs)
    mse = torch.arange(o * 3 * 3, dtype=torch.float64).reshape(o, 3, 3)
    curve, counts = aligned_amplification(mse, masked, first)
    # row 0: obs 1 masked {1, 2} -> mean(mse[1,0,1:]) = 10.5; obs 2 masked {2} -> 20; obs 3 none
    # row 1: obs 1 masked {0, 2} -> mean(9+3, 9+5) = 13; obs 2 masked {2} -> 23; row 2 has no false commit
    assert counts.tolist() == [2, 2, 0, 0]
    assert curve[:2].tolist() == [(10.5 + 13) / 2, (20 + 23) / 2] and curve[2:].isnan().all()


def test_post_commit_reading_is_the_remasked_forward(pair, input_ids):
    """Every committed position's reading equals a forward of that state with only that position masked."""
    from fair_calib_hf.decoding import diffusion_generate

    fp, _ = pair
    cfg = DecodeConfig(gen_length=8, steps=8, block_length=4)
    traj = diffusion_generate(fp, input_ids[:, :6], config=cfg).trajectory
    read = read_post_commit(fp, traj, max_rows=5)  # several chunks
    mask_id, p = traj.settings["mask_token_id"], traj.prompt_ids.shape[1]
    checked = 0
    for t in (3, 8):
        canvas = traj.canvas(t, mask_id)
        for b in range(canvas.shape[0]):
            for i in range(traj.gen_length):
                x = canvas[b:b + 1].clone()
                if 0 <= int(traj.commit_step[b, i]) < t:
                    x[0, p + i] = mask_id
                    checked += 1
                    with torch.no_grad():
                        assert int(read[t, b, i]) == int(fp(input_ids=x).logits[0, p + i].argmax())
                else:
                    assert int(read[t, b, i]) == int(traj.argmax[t, b, i])  # still masked: the recorded top-1
    assert checked > 0
    assert torch.equal(read[0], traj.argmax[0])  # nothing committed before the first step


def test_fp_teacher_post_commit_floor_on_a_trained_llada():
    """On the trained LLaDA-style zoo model the teacher's raw output at committed positions disagrees with
    its own tokens about half of the time (untrained outputs); read re-masked it is near zero."""
    from fair_calib_hf.decoding import diffusion_generate
    from fair_calib_hf.reference_models import build_tokenizer
    from fair_calib_hf.zoo import available, resolve, task_of
    from fair_calib_hf.zoo.evaluate import default_decode_config

    if "llada-arith" not in available():
        pytest.skip("zoo model llada-arith is not in this installation")
    model = AutoModel.from_pretrained(resolve("zoo:llada-arith"), trust_remote_code=True).eval()
    task = task_of("zoo:llada-arith")
    prompts, _ = task.encode(task.examples("test", 4, seed=0), build_tokenizer("llada"))
    traj = diffusion_generate(model, prompts, config=default_decode_config(task, "llada")).trajectory
    raw = own_diagnostics(model, traj, remask=False)
    read = own_diagnostics(model, traj)
    assert read["remasked"] and raw["mean_disagree"] > 0.2
    assert read["mean_disagree"] < 0.05 and read["never_agree"] < 0.05 and read["lag_p90"] < 4


def test_student_amplification_on_its_own_trajectory(pair, input_ids):
    from fair_calib_hf.decoding import diffusion_generate

    fp, q = pair
    cfg = DecodeConfig(gen_length=8, steps=8, block_length=8)
    teacher = diffusion_generate(fp, input_ids[:, :6], config=cfg).trajectory
    student = diffusion_generate(q, input_ids[:, :6], config=cfg).trajectory
    amp = student_amplification(fp, q, student, teacher.tokens)
    expected_first = first_false_commit(student.commit_step, student.tokens, teacher.tokens)
    assert torch.equal(amp.first_false, expected_first)
    assert amp.false_commit_rate == float((expected_first >= 0).double().mean()) > 0
    assert int(amp.counts[0]) == int((expected_first >= 0).sum())
    assert bool((amp.curve[amp.counts > 0] > 0).all())
    same = student_amplification(fp, fp, teacher, teacher.tokens)
    assert same.false_commit_rate == 0 and int(same.counts.sum()) == 0


def test_tracked_positions_keep_the_per_position_definitions(pair, input_ids):
    """Measuring k positions per sequence reads exactly those positions re-masked: the same per-position
    values as reading every position, restricted to the drawn ones."""
    from fair_calib_hf.decoding import diffusion_generate
    from fair_calib_hf.diagnostics.frontier import sample_positions

    fp, _ = pair
    cfg = DecodeConfig(gen_length=8, steps=8, block_length=8)
    traj = diffusion_generate(fp, input_ids[:, :6], config=cfg).trajectory
    chosen = sample_positions(traj.commit_step, 3, seed=5)
    assert chosen.sum(1).tolist() == [3] * traj.tokens.shape[0] and bool((traj.commit_step[chosen] >= 0).all())
    full = read_post_commit(fp, traj)
    part = read_post_commit(fp, traj, positions=chosen)
    assert torch.equal(part[:, chosen], full[:, chosen]) and torch.equal(part[:, ~chosen], traj.argmax[:, ~chosen])
    d = own_diagnostics(fp, traj, remask_positions=3, seed=5)
    expected = post_commit_mismatch(full, traj.tokens, traj.commit_step.masked_fill(~chosen, -1))
    assert (d["mean_disagree"], d["never_agree"], d["positions"]) == expected and d["remask_positions"] == 3
    with pytest.raises(ValueError, match="remask_positions"):
        own_diagnostics(fp, traj, remask_positions=0)
