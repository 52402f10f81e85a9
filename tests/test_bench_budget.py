"""The budget-sensitivity benchmark: budget parsing, the table's reading, and one end-to-end run on a tiny model
scored on the calibration split's held-out part (random weights: only the pipeline is checked)."""
import json

import pytest

from fair_calib_hf.bench import budget
from fair_calib_hf.reference_models import build_tiny
from fair_calib_hf.zoo import save_reference_model
from fair_calib_hf.zoo.train import TrainConfig


def test_parse_budget():
    assert budget.parse_budget("64:16:2") == {"n_probe": 64, "num_samples": 16, "epochs": 2}
    for bad in ("64:16", "64:0:2", "a:b:c", "1:2:3:4"):
        with pytest.raises(ValueError, match="n_probe:num_samples:epochs"):
            budget.parse_budget(bad)
    with pytest.raises(SystemExit):
        budget.main(["--model", "x", "--out", "y", "--budgets", "1:2"])


def _line(lo, hi):
    return {"budget": {"n_probe": 16, "num_samples": 16, "epochs": 2},
            "accuracy": {"fp": 0.9, "flatquant": 0.7, "fair_calib": 0.7 + (lo + hi) / 2},
            "fair_minus_flat": {"mean": (lo + hi) / 2, "ci_low": lo, "ci_high": hi}}


def test_table_calls_an_interval_containing_zero_a_tie():
    table = budget.markdown([_line(-0.02, 0.03), _line(0.01, 0.05), _line(-0.06, -0.01)], "m", "calibration-heldout")
    readings = [row.rsplit("|", 2)[-2].strip() for row in table.splitlines()[4:]]
    assert readings == ["tie", "FAIR-Calib better", "FlatQuant better"]
    assert "| 16 | 16 | 2 | 90.0 | 70.0 | 70.5 | +0.5 | [-2.0, +3.0] | tie |" in table


def test_budget_end_to_end(tmp_path):
    cfg = TrainConfig(kind="dream", task="arith", steps=1,
                      model=dict(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                                 num_hidden_layers=1))
    path = save_reference_model("tiny-arith", build_tiny("dream", seed=0, hidden_size=32, num_attention_heads=2,
                                                         num_key_value_heads=1, intermediate_size=64,
                                                         num_hidden_layers=1),
                                cfg, [{"step": 1, "loss": 1.0, "seconds": 0.1}], str(tmp_path / "tiny-arith"))
    out = tmp_path / "budget"
    budget.main(["--model", path, "--out", str(out), "--budgets", "4:4:1", "--seeds", "1", "--n-eval", "8",
                 "--threads", "1"])
    lines = json.loads((out / "budget.json").read_text())
    assert len(lines) == 1 and lines[0]["budget"] == {"n_probe": 4, "num_samples": 4, "epochs": 1}
    record = json.loads((out / "4-4-1" / "quality.json").read_text())
    assert record["settings"]["eval_split"] == "calibration-heldout"
    assert [r["config"] for r in record["rows"]] == ["fp", "flatquant", "fair_calib"]
    assert all(len(r["correct"]) == 8 for r in record["rows"])
    d = lines[0]["fair_minus_flat"]
    assert d["ci_low"] <= d["mean"] <= d["ci_high"] and "| 4 | 4 | 1 |" in (out / "budget.md").read_text()
