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


def test_stage2_flop_model_counts_each_site_transform_once(tiny_dirs):
    """The FLOP bound of ``bench calibrate``: by hand for one block, and the online transform counted once per
    site (q/k/v share one input) when the sites' widths are given — an upper bound per linear otherwise."""
    from transformers import AutoModel

    from fair_calib_hf.architectures import get_adapter
    from fair_calib_hf.calibration.transforms import kronecker_factors

    model = AutoModel.from_pretrained(tiny_dirs["dream"], trust_remote_code=True)
    blocks = get_adapter(model).blocks(model)
    linears = [m for m in blocks[0].modules() if m.__class__.__name__ == "Linear"]
    d = model.get_input_embeddings().weight.shape[1]
    samples, seq, epochs, steps = 3, 10, 2, 4

    def kron(n):
        a, b = kronecker_factors(n)
        return 2 * n * (a + b)
    per_token = 4 * seq * d + sum(2 * m.weight.numel() + kron(m.in_features) for m in linears)
    weight_side = sum(2 * m.weight.numel() * sum(kronecker_factors(m.in_features)) for m in linears)
    by_hand = 3 * (epochs * samples * seq * per_token + steps * weight_side) * len(blocks)
    assert calibrate.stage2_flops(model, samples, seq, epochs, steps) == by_hand
    # sites: q/k/v (one input), o, gate/up (one input), down
    per_site = [[d, d, d, model.config.intermediate_size] for _ in blocks]
    per_linear_minus_per_site = sum(kron(m.in_features) for m in linears) - sum(kron(w) for w in per_site[0])
    shared = 3 * epochs * samples * seq * per_linear_minus_per_site
    assert calibrate.stage2_flops(model, samples, seq, epochs, steps, per_site) == by_hand - shared * len(blocks)
    assert shared > 0 and len(linears) == 7


def test_kernel_bench_weight_only_rows(tmp_path):
    kernels.main(["--shapes", "4096x4096", "--m", "2", "--repeats", "1", "--weight-only",
                  "--json", str(tmp_path / "w.json")])
    (row,) = json.load(open(tmp_path / "w.json"))["weight_only"]
    assert row["M"] == 2 and min(row["fp32_ms"], row["w4a16_g128_ms"], row["w8a16_ms"]) > 0
    # the stored bytes (codes + fp32 scales) against bf16 weights
    assert row["w4a16_g128_bytes_over_bf16"] <= 0.3 and row["w8a16_bytes_over_bf16"] <= 0.55
    from fair_calib_hf.ops import weight_only_cpu

    assert row["w4a16_g128_torch_int4_kernel"] == weight_only_cpu.available()


def test_kernel_bench_act8_rows(tmp_path):
    """`--act8` times only the 8-bit-activation layers, one row per shape and token count, in one JSON record."""
    kernels.main(["--act8", "--shapes", "4096x4096", "--m", "2", "--repeats", "1", "--json", str(tmp_path / "a.json")])
    record = json.load(open(tmp_path / "a.json"))
    (row,) = record["act8"]
    assert row["M"] == 2 and "layers" not in record and "weight_only" not in record
    assert min(row[key] for key in ("fp32_ms", "bf16_ms", "int8_ms", "w8a8_ms", "w4a8_ms", "w4a8_transform_ms")) > 0
    assert row["int8_over_w8a8"] > 0 and row["fp32_over_w4a8"] > 0


def test_contention_bench_times_a_workload_alone_and_beside_the_neighbour(tmp_path, monkeypatch):
    """The contention benchmark (issue 32) runs the workload alone and beside its neighbour process, reports both
    sides' rates, and leaves no neighbour running, also when the workload fails."""
    import subprocess

    from fair_calib_hf.bench import contention

    out = tmp_path / "c.json"
    contention.main(["--quick", "--workloads", "quantize", "--neighbour-seconds", "0.5", "--json", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["workload"] == "quantize" and row["alone_s"] > 0 and row["beside_s"] > 0
    assert row["ratio"] == round(row["beside_s"] / row["alone_s"], 2)
    assert row["neighbour_alone_per_s"] > 0 and row["neighbour_beside_per_s"] > 0
    started = []
    real_popen = subprocess.Popen

    def spy(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(contention.subprocess, "Popen", spy)
    flag = tmp_path / "ran-once"  # the run alone succeeds, the run beside the neighbour fails
    code = f"import os, sys; p = {str(flag)!r}; sys.exit(3) if os.path.exists(p) else open(p, 'w').close()"
    monkeypatch.setattr(contention, "workload_commands",
                        lambda quick, out: {"quantize": [contention.sys.executable, "-c", code]})
    try:
        contention.main(["--workloads", "quantize", "--neighbour-seconds", "0.1"])
    except RuntimeError as err:
        assert "failed (3)" in str(err)
    else:
        raise AssertionError("a failing workload must raise")
    neighbours = [p for p in started if "set_num_threads" in str(p.args)]
    assert flag.exists() and len(neighbours) == 2  # the rate alone, then the run beside
    assert all(p.poll() is not None for p in neighbours)  # every neighbour stopped


def test_calibrate_stubs_are_stand_ins_only_inside_the_block():
    """``bench calibrate --stub``: the named Stage II parts are replaced while calibrating and restored after
    (also after an error); an unknown part is refused."""
    import pytest
    import torch

    from fair_calib_hf.calibration import stage2_fit

    originals = (stage2_fit.fake_quant_rows, stage2_fit.kron_apply_gemms, stage2_fit.invert_factors_together)
    x = torch.randn(3, 8)
    with calibrate.stubbed(["fake-quant", "inversions"]):
        assert torch.equal(stage2_fit.fake_quant_rows(x, torch.tensor(0.5)), x * 0.5)
        assert stage2_fit.kron_apply_gemms is originals[1]
        assert stage2_fit.invert_factors_together is not originals[2]
    with pytest.raises(RuntimeError):
        with calibrate.stubbed(["transforms"]):
            assert stage2_fit.kron_apply_gemms is not originals[1]
            raise RuntimeError("inside")
    assert (stage2_fit.fake_quant_rows, stage2_fit.kron_apply_gemms, stage2_fit.invert_factors_together) == originals
    with pytest.raises(ValueError, match="unknown parts"):
        with calibrate.stubbed(["everything"]):
            pass


def test_fake_quant_ab_times_both_fake_quantizers_and_restores_the_kernel():
    from conftest import skip_without_cpu_extension

    from fair_calib_hf.ops import fake_quant_cpu

    skip_without_cpu_extension()
    row = calibrate.fake_quant_ab("tiny-llada", "flatquant", repeats=1)
    assert len(row["compiled_s"]) == len(row["pure_torch_s"]) == 1
    assert row["speedup"] > 0 and fake_quant_cpu.available()
