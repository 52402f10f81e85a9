"""Smoke tests of the benchmark commands (tiny settings; no timing is asserted)."""
import json

from fair_calib_hf.bench import calibrate, decode, kernels


def test_decode_bench_runs(tmp_path, capsys):
    decode.main(["--gen-lengths", "8", "--repeats", "1", "--json", str(tmp_path / "d.json")])
    rows = json.load(open(tmp_path / "d.json"))["rows"]
    assert {r["family"] for r in rows} == {"llada", "dream"} and all(r["steps_per_s"] > 0 for r in rows)
    assert "| family | model |" in capsys.readouterr().out


def test_kernel_bench_runs(tmp_path):
    kernels.main(["--shapes", "4096x4096", "--m", "3", "--repeats", "1", "--models", "zoo:dream-arith",
                  "--batches", "2", "--json", str(tmp_path / "k.json")])
    record = json.load(open(tmp_path / "k.json"))
    (row,) = record["layers"]
    assert row["M"] == 3 and min(row["fp32_ms"], row["int8_ms"], row["w4a4_gemm_ms"], row["w4a4_layer_ms"]) > 0
    from fair_calib_hf.ops import cpu

    prepared = cpu.prepared_layout_available() and row["isa"] == "avx512vnni"
    assert (row["w4a4_prepared_ms"] is not None) == prepared and (not prepared or row["w4a4_prepared_ms"] > 0)
    (step,) = record["denoising_step"]
    assert step["model"] == "zoo:dream-arith" and step["batch"] == 2 and step["tokens"] == 2 * 44
    assert step["fp32_step_ms"] > 0 and step["w4a4_step_ms"] > 0
    assert (step["w4a4_prepared_step_ms"] is not None) == cpu.prepared_layout_available()
    # the packed checkpoint is several times smaller than fp32 and smaller than bf16 (transforms included)
    assert step["size_ratio_fp32"] > 3 and step["size_ratio_bf16"] > 1.5


def test_transformed_layer_matches_its_float_weight():
    """The benchmarked W4A4 layer holds the benchmarked weight: folding its transform back gives ``W`` up to
    int4 weight rounding (a wrong fold gives an error near 1 or above)."""
    import torch

    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 256, generator=g) / 16
    layer = kernels.transformed_w4a4_linear(w, g)
    assert layer.input_transform is not None and layer.input_transform.diag is not None
    assert (layer.to_linear().weight - w).norm() / w.norm() < 0.2


def test_gpu_check_without_a_gpu_stops_before_building(tmp_path, monkeypatch):
    """`python -m fair_calib_hf.bench gpu` on a machine without a GPU says so at once instead of spending
    minutes on a build it cannot use."""
    import pytest
    import torch

    from fair_calib_hf.bench import gpu

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")

    def build(out_dir):
        raise AssertionError("the build started")

    monkeypatch.setattr(gpu, "build", build)
    with pytest.raises(SystemExit, match="no GPU visible"):
        gpu.main(["--out", str(tmp_path / "g")])
    assert not (tmp_path / "g").exists()


def test_kernel_bench_models_none_skips_the_denoising_step(tmp_path):
    """`--models none` (as the help says) skips the denoising step instead of looking up a model named none."""
    kernels.main(["--shapes", "4096x4096", "--m", "2", "--repeats", "1", "--models", "none",
                  "--json", str(tmp_path / "k.json")])
    record = json.load(open(tmp_path / "k.json"))
    assert len(record["layers"]) == 1 and record.get("denoising_step", []) == []
