"""Smoke tests of the benchmark commands (tiny settings; no timing is asserted)."""
import json

from fair_calib_hf.bench import calibrate, decode, kernels


def test_decode_bench_runs(tmp_path, capsys):
    decode.main(["--gen-lengths", "8", "--repeats", "1", "--json", str(tmp_path / "d.json")])
    rows = json.load(open(tmp_path / "d.json"))["rows"]
    assert {r["family"] for r in rows} == {"llada", "dream"} and all(r["steps_per_s"] > 0 for r in rows)
    assert "| family | model |" in capsys.readouterr().out


def test_kernel_bench_runs(tmp_path):
    kernels.main(["--shapes", "4096x4096", "--m", "1", "--repeats", "1", "--json", str(tmp_path / "k.json")])
    (row,) = json.load(open(tmp_path / "k.json"))["rows"]
    assert row["M"] == 1 and row["fp32_ms"] > 0 and row["w4a4_total_ms"] > 0


def test_calibrate_bench_one_configuration():
    row = calibrate.run_one("llada", "rtn")
    assert row["method"] == "rtn" and row["samples"] == 16 and len(row["block_rel_mse"]) == 2
