"""The quality benchmark: aggregation and table on hand-built rows, and one end-to-end run on a tiny model
saved the way zoo models are (random weights: only the pipeline is checked, not the scores)."""
import json
import math
import os

import pytest

from fair_calib_hf.bench import quality
from fair_calib_hf.reference_models import build_tiny
from fair_calib_hf.zoo import save_reference_model
from fair_calib_hf.zoo.train import TrainConfig


def _row(config, seed, acc, flip=0.1):
    return {"config": config, "seed": seed, "accuracy": acc, "flip_rate": flip, "mean_disagree": 0.2,
            "never_agree": 0.1, "lag_p90": 3.0, "prob_mse": 0.001, "calib_seconds": 5.0, "peak_mb": 10.0}


def test_summary_table_and_gap():
    rows = [{"config": "fp", "seed": None, "accuracy": 0.9}, _row("rtn", 0, 0.2),
            _row("flatquant", 0, 0.6), _row("flatquant", 1, 0.7),
            _row("fair_calib", 0, 0.75), _row("fair_calib", 1, 0.85)]
    summary = quality.summarize("m", rows)
    by = {s["config"]: s for s in summary}
    assert by["flatquant"]["accuracy"][0] == pytest.approx(0.65)
    assert by["flatquant"]["accuracy"][1] == pytest.approx(math.sqrt(0.005))  # sample std over seeds
    assert by["rtn"]["seeds"] == 1 and by["rtn"]["accuracy"][1] == 0.0
    assert quality.gap_closed(summary, "m") == pytest.approx((0.8 - 0.65) / (0.9 - 0.65))
    table = quality.markdown(summary, {"m": "note"})
    assert "| m | fair_calib | 2 | 80.0 ± 7.1 |" in table and "| m | FP | – | 90.0 ± 0.0 |" in table
    assert table.splitlines()[1].count("---") == table.splitlines()[0].count("|") - 1


def test_quality_benchmark_end_to_end(tmp_path, monkeypatch):
    cfg = TrainConfig(kind="llada", task="arith", steps=1,
                      model=dict(d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=192))
    model = build_tiny("llada", seed=0)
    path = save_reference_model("tiny-arith", model, cfg, [{"step": 1, "loss": 1.0, "seconds": 0.1}],
                                str(tmp_path / "tiny-arith"))
    out = tmp_path / "results"
    reduced = ["--quick", "--threads", "1", "--n-probe", "8", "--epochs", "1"]
    # --json without --out: the JSON file only, nothing in the tracked benchmarks/results/ folder of the cwd
    monkeypatch.chdir(tmp_path)
    quality.main(reduced + ["--models", path, "--configs", "rtn", "flatquant", "fair_calib",
                            "--json", str(tmp_path / "q.json")])
    assert sorted(os.listdir(tmp_path)) == ["q.json", "tiny-arith"]
    record = json.load(open(tmp_path / "q.json"))
    # --out: the table, quality.json and the plots there (--resume with every row kept runs nothing again)
    out.mkdir()
    (out / "quality.json").write_text((tmp_path / "q.json").read_text())
    quality.main(reduced + ["--models", path, "--configs", "rtn", "flatquant", "fair_calib", "--out", str(out),
                            "--resume"])
    assert json.load(open(out / "quality.json"))["rows"] == record["rows"]
    configs = [r["config"] for r in record["rows"]]
    assert configs == ["fp", "rtn", "flatquant", "fair_calib"]
    assert record["settings"]["calibration"]["n_probe"] == 8 and record["settings"]["calibration"]["epochs"] == 1
    fc = record["rows"][3]
    assert all(len(r["correct"]) == 32 and sum(r["correct"]) == round(32 * r["accuracy"]) for r in record["rows"])
    fp = record["rows"][0]  # the teacher's own diagnostics, not blanks
    assert 0 <= fp["mean_disagree"] <= 1 and fp["remasked"] and fp["flip_rate"] == 0.0
    assert 0 <= fc["false_commit_rate"] <= 1 and len(fc["amplification_curve"]) == len(fc["prob_mse_curve"])
    paired = record["fair_minus_flat"]["tiny-arith"]
    assert paired["seeds"] == [0] and paired["n_test"] == 32
    assert paired["ci_low"] <= paired["mean"] <= paired["ci_high"]
    assert 0.0 <= fc["accuracy"] <= 1.0 and 0.0 <= fc["flip_rate"] <= 1.0 and fc["calib_seconds"] > 0
    assert len(fc["flip_rate_per_step"]) > 0 and fc["stage1_seconds"] > 0
    assert record["rows"][0]["outlier_ratio"] >= 1.0
    for name in ("quality.md", "quality.json", "tiny-arith-flip_rate.png", "tiny-arith-amplification.png",
                 "tiny-arith-tf_prob_mse.png", "tiny-arith-lag_ccdf.png"):
        assert os.path.getsize(out / name) > 0
    md = (out / "quality.md").read_text()
    assert "| tiny-arith | fair_calib | 1 |" in md and "fair_calib − flatquant = " in md
    assert fc["log_lik"] < 0 and record["rows"][0]["log_lik"] < 0

    # --resume keeps the saved rows and runs only what is missing; other settings are refused
    before = (out / "quality.json").read_text()
    quality.main(reduced + ["--models", path, "--configs", "rtn", "--out", str(out), "--resume"])
    assert json.loads((out / "quality.json").read_text())["rows"] == json.loads(before)["rows"]
    with pytest.raises(SystemExit, match="other settings"):
        quality.main(["--quick", "--seeds", "2", "--models", path, "--configs", "rtn", "--out", str(out), "--resume"])
    # an interrupted benchmark (here: the fair_calib run lost) continues run by run
    saved = json.loads(before)
    saved["rows"] = [r for r in saved["rows"] if r["config"] != "fair_calib"]
    (out / "quality.json").write_text(json.dumps(saved))
    quality.main(reduced + ["--models", path, "--configs", "rtn", "flatquant", "fair_calib", "--out", str(out),
                            "--resume"])
    rows = json.loads((out / "quality.json").read_text())["rows"]
    assert [r["config"] for r in rows] == ["fp", "rtn", "flatquant", "fair_calib"]
    assert rows[:3] == saved["rows"] and rows[3]["seed"] == 0
    for argv, message in ((["--quick"], "pass --out FOLDER"), (["--quick", "--json", "x.json", "--resume"], "--resume")):
        with pytest.raises(SystemExit, match=message):
            quality.main(argv + ["--models", path])


def test_run_order_completes_seeds_one_by_one():
    order = quality.run_order(["fp", "rtn", "quarot-rtn", "flatquant", "fair_calib"], (0, 1))
    assert order == [("fp", None), ("rtn", 0), ("quarot-rtn", 0), ("flatquant", 0), ("fair_calib", 0),
                     ("quarot-rtn", 1), ("flatquant", 1), ("fair_calib", 1)]


def test_fair_minus_flat_pairs_by_seed():
    """Per-problem outcomes pair by seed (seed 2 of fair_calib has no flatquant partner and is left out)."""
    fp = {"config": "fp", "seed": None, "accuracy": 1.0, "correct": [1] * 8}
    flat = [dict(_row("flatquant", s, 0.5), correct=[1, 0] * 4) for s in (0, 1)]
    fair = [dict(_row("fair_calib", 0, 0.75), correct=[1, 1, 1, 0] * 2),
            dict(_row("fair_calib", 1, 0.625), correct=[1, 0, 1, 1, 1, 0, 1, 0]),
            dict(_row("fair_calib", 2, 1.0), correct=[1] * 8)]
    st = quality.fair_minus_flat([fp] + flat + fair, n_boot=500)
    assert st["seeds"] == [0, 1] and st["per_seed"] == pytest.approx([0.25, 0.125])
    assert st["mean"] == pytest.approx(0.1875) and st["gap_closed"] == pytest.approx(0.1875 / 0.5)
    assert st["ci_low"] <= st["mean"] <= st["ci_high"] and "bootstrap" in st["ci"]
    old = quality.fair_minus_flat([{k: v for k, v in r.items() if k != "correct"} for r in [fp] + flat + fair])
    assert old["mean"] == pytest.approx(0.1875) and old["ci_low"] is None and "not available" in old["ci"]
    assert quality.fair_minus_flat([fp] + flat) is None


def test_summary_json_from_result_folders(tmp_path):
    """summary.json: window fraction, n_test, seeds, mean accuracy per configuration and fair − flat with its
    interval; a folder without per-problem outcomes gets no interval rather than an invented one."""
    from fair_calib_hf.bench import summary

    fp = {"model": "m", "config": "fp", "seed": None, "accuracy": 1.0, "correct": [1] * 8, "window": 8,
          "seq_len": 32}
    rows = [fp] + [dict(_row("flatquant", s, 0.5), model="m", correct=[1, 0] * 4) for s in (0, 1)] + \
        [dict(_row("fair_calib", s, 0.75), model="m", correct=[1, 1, 1, 0] * 2) for s in (0, 1)]
    settings = {"seeds": [0, 1], "n_eval": 8, "n_diag": 4, "calibration": {"n_probe": 512, "epochs": 15}}
    for name, kept in (("new", rows), ("old", [{k: v for k, v in r.items() if k != "correct"} for r in rows])):
        os.makedirs(tmp_path / name)
        (tmp_path / name / "quality.json").write_text(json.dumps({"settings": settings, "rows": kept}))
    out = tmp_path / "summary.json"
    summary.main([str(tmp_path / "new"), str(tmp_path / "old"), "--out", str(out)])
    got = json.loads(out.read_text())
    new, old = got["new"], got["old"]
    assert new["window_fraction"] == 0.25 and new["n_test"] == 8 and new["seeds"] == [0, 1]
    assert new["accuracy"] == {"fp": 1.0, "flatquant": 0.5, "fair_calib": 0.75}
    d = new["fair_minus_flat"]
    assert d["mean"] == pytest.approx(0.25) and d["gap_closed"] == pytest.approx(0.5)
    assert d["ci_low"] <= 0.25 <= d["ci_high"] and d["ci_high"] > d["ci_low"]
    assert old["fair_minus_flat"]["mean"] == pytest.approx(0.25) and old["fair_minus_flat"]["ci_low"] is None
    with pytest.raises(FileNotFoundError, match="quality.json"):
        summary.main([str(tmp_path / "missing"), "--out", str(out)])


def test_heldout_part_of_the_calibration_split_excludes_every_calibration_run():
    from fair_calib_hf.zoo.tasks import get_task, split_of

    task = get_task("arith")
    held = quality.heldout_examples(task, 300, num_samples=64, seeds=(0, 1, 2))
    used = {task.split_key(e) for s in (0, 1, 2) for e in task.examples("calibration", 64, s)}
    assert len(held) == 300 and len({task.split_key(e) for e in held}) == 300
    assert all(split_of(*task.split_key(e)) == "calibration" for e in held)
    assert not used & {task.split_key(e) for e in held}
    # without the exclusion the same draw would overlap the calibration runs (so the check above can fail)
    drawn = task.examples("calibration", 300 + len(used), seed=quality.HELDOUT_SEED)
    assert used & {task.split_key(e) for e in drawn}
    assert held == quality.heldout_examples(task, 300, num_samples=64, seeds=(0, 1, 2))


def test_single_run_configurations_pair_with_every_seed_and_run_once():
    """Weight-only RTN (no data, no randomness) runs once; its row pairs with each seed of GPTQ."""
    assert quality.run_order(["fp", "w4a16-g128-rtn", "w4a16-g128-gptq"], (0, 1)) == [
        ("fp", None), ("w4a16-g128-rtn", 0), ("w4a16-g128-gptq", 0), ("w4a16-g128-gptq", 1)]
    rows = [{"config": "fp", "seed": None, "accuracy": 1.0, "correct": [1, 1, 1, 1]},
            {"config": "w4a16-g128-rtn", "seed": 0, "accuracy": 0.25, "correct": [1, 0, 0, 0]},
            {"config": "w4a16-g128-gptq", "seed": 0, "accuracy": 0.5, "correct": [1, 1, 0, 0]},
            {"config": "w4a16-g128-gptq", "seed": 1, "accuracy": 0.75, "correct": [1, 1, 1, 0]}]
    stats = quality.paired_difference(rows, "w4a16-g128-gptq", "w4a16-g128-rtn", n_boot=200)
    assert stats["seeds"] == [0, 1] and stats["per_seed"] == [0.25, 0.5]
    assert quality.paired_difference(rows, "flatquant", "w4a16-g128-rtn") is None
