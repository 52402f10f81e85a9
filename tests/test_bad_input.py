"""Bad input gets a clear one-line error and leaves nothing half-written. (Missing / mis-shaped / wrong-dtype
packed tensors and a config that keeps a packed module in float are covered through the Python API in
test_end_to_end.py; here: the CLI and the cases not covered there.)"""
import json
import os
import shutil
import stat

import pytest
import torch
from transformers import AutoModel

from fair_calib_hf import FairCalibConfig
from fair_calib_hf.checkpoint import CorruptCheckpointError, atomic_directory
from fair_calib_hf.cli import main


def _fail(capsys, *argv, command="quantize"):
    code = main(list(argv) + ["--no-progress"])
    err = capsys.readouterr().err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert code == 1
    assert last.startswith(f"fair-calib {command}: error: ") and "Traceback" not in err
    return last


@pytest.fixture(scope="module")
def rtn_dir(tiny_dirs, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("rtn") / "q")
    assert main(["quantize", tiny_dirs["llada"], "--out", out, "--method", "rtn", "--no-progress", "--no-report"]) == 0
    return out


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def test_unknown_architecture_lists_supported(tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path / "llama")
    line = _fail(capsys, "quantize", str(tmp_path / "llama"), "--out", str(tmp_path / "o"), "--method", "rtn")
    assert "model_type 'llama'" in line and "llada" in line and "dream" in line
    assert not os.path.exists(tmp_path / "o")


def test_model_quantized_by_another_method(tiny_dirs, tmp_path, capsys):
    src = _copy(tiny_dirs["llada"], tmp_path / "m")
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["quantization_config"] = {"quant_method": "foo_quant", "bits": 4}
    json.dump(cfg, open(os.path.join(src, "config.json"), "w"))
    line = _fail(capsys, "quantize", src, "--out", str(tmp_path / "o"), "--method", "rtn")
    assert "already quantized with quant_method='foo_quant'" in line
    # the Python API refuses too (transformers itself only logs "unknown quantization type" and would
    # calibrate randomly initialised weights)
    with pytest.raises(ValueError, match="already quantized with quant_method='foo_quant'"):
        AutoModel.from_pretrained(src, trust_remote_code=True, quantization_config=FairCalibConfig(method="rtn"))


def test_already_fair_calib_checkpoint_is_not_requantized(rtn_dir, tmp_path, capsys):
    line = _fail(capsys, "quantize", rtn_dir, "--out", str(tmp_path / "o"), "--method", "rtn")
    assert "already a fair_calib checkpoint" in line


def test_unsupported_dtype(tiny_dirs, capsys, tmp_path):
    with pytest.raises(ValueError, match="unsupported dtype torch.float64"):
        AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True, dtype=torch.float64,
                                  quantization_config=FairCalibConfig(method="rtn"))
    with pytest.raises(SystemExit) as exc:  # the CLI only offers the supported ones
        main(["quantize", tiny_dirs["llada"], "--out", str(tmp_path / "o"), "--dtype", "float64"])
    assert exc.value.code == 2
    assert "invalid choice: 'float64'" in capsys.readouterr().err


def test_seq_len_beyond_positions_in_cli_words(tiny_dirs, tmp_path, capsys, monkeypatch):
    from fair_calib_hf.cli import commands

    def no_load(*args, **kwargs):
        raise AssertionError("weights loaded despite a seq_len beyond the model's positions")

    monkeypatch.setattr(commands, "_from_pretrained", no_load)
    data = tmp_path / "big.txt"
    data.write_text("word " * 3000)
    line = _fail(capsys, "quantize", tiny_dirs["dream"], "--out", str(tmp_path / "o"), "--method", "flatquant",
                 "--dataset", str(data), "--no-progress")
    assert line.endswith("calibration sequences of 1024 tokens exceed the model's 512 positions (config "
                         "max_sequence_length / max_position_embeddings): pass --seq-len 512 or less")
    assert not (tmp_path / "o").exists()


def test_nonexistent_paths(tmp_path, capsys):
    line = _fail(capsys, "quantize", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert "does not exist" in line and "missing" in line
    line = _fail(capsys, "quantize", "zoo:no-such-model", "--out", str(tmp_path / "o"))
    assert "unknown zoo model 'zoo:no-such-model'" in line
    line = _fail(capsys, "inspect", str(tmp_path / "missing"), command="inspect")
    assert "does not exist" in line


def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) - 100])


def test_truncated_or_corrupted_safetensors(tiny_dirs, rtn_dir, tmp_path, capsys):
    fp = _copy(tiny_dirs["dream"], tmp_path / "fp")
    _truncate(os.path.join(fp, "model.safetensors"))
    line = _fail(capsys, "quantize", fp, "--out", str(tmp_path / "o"), "--method", "rtn")
    assert "truncated" in line and "model.safetensors" in line
    q = _copy(rtn_dir, tmp_path / "q")
    _truncate(os.path.join(q, "model.safetensors"))
    line = _fail(capsys, "inspect", q, command="inspect")
    assert "corrupted or truncated safetensors file" in line
    with pytest.raises(Exception, match="truncated|incomplete"):
        AutoModel.from_pretrained(q, trust_remote_code=True)
    open(os.path.join(q, "model.safetensors"), "wb").write(b"\x07" * 64)
    line = _fail(capsys, "inspect", q, command="inspect")
    assert "corrupted or truncated safetensors file" in line
    with pytest.raises(CorruptCheckpointError):
        from fair_calib_hf.checkpoint import check_safetensors_files

        check_safetensors_files([os.path.join(q, "model.safetensors")])


def test_inspect_detects_config_tensor_mismatch(rtn_dir, tmp_path, capsys):
    q = _copy(rtn_dir, tmp_path / "q")
    cfg = json.load(open(os.path.join(q, "config.json")))
    cfg["quantization_config"]["modules_to_not_convert"] = ["model.transformer.blocks.0.ff_out"]
    json.dump(cfg, open(os.path.join(q, "config.json"), "w"))
    line = _fail(capsys, "inspect", q, command="inspect")
    assert "do not match the quantization_config" in line and "blocks.0.ff_out" in line
    q2 = _copy(rtn_dir, tmp_path / "q2")
    cfg = json.load(open(os.path.join(q2, "config.json")))
    cfg["quantization_config"]["method"] = "quarot"  # says transforms, the tensors have none
    json.dump(cfg, open(os.path.join(q2, "config.json"), "w"))
    line = _fail(capsys, "inspect", q2, command="inspect")
    assert "missing" in line and "input_transform" in line


def test_existing_output_is_refused_unless_overwrite(tiny_dirs, rtn_dir, tmp_path, capsys):
    out = _copy(rtn_dir, tmp_path / "out")
    (tmp_path / "out" / "marker.txt").write_text("keep me")
    line = _fail(capsys, "quantize", tiny_dirs["llada"], "--out", out, "--method", "rtn")
    assert "already exists" in line and line.endswith("pass --overwrite to replace it")  # CLI wording, not Python
    assert (tmp_path / "out" / "marker.txt").read_text() == "keep me"
    assert main(["quantize", tiny_dirs["llada"], "--out", out, "--method", "rtn", "--overwrite", "--no-progress"]) == 0
    assert not (tmp_path / "out" / "marker.txt").exists() and (tmp_path / "out" / "model.safetensors").exists()
    line = _fail(capsys, "probe", tiny_dirs["llada"], "--out", os.path.join(out, "config.json"), "--dataset",
                 "x.txt", command="probe")
    assert "already exists" in line


@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_save_leaves_the_destination_untouched(tiny_dirs, rtn_dir, tmp_path, capsys, monkeypatch,
                                                           existing):
    from transformers import PreTrainedModel

    out = tmp_path / "out"
    if existing:
        _copy(rtn_dir, out)
        (out / "marker.txt").write_text("old")
    before = sorted(os.listdir(out)) if existing else None
    real_save = PreTrainedModel.save_pretrained

    def failing_save(self, save_directory, *args, **kwargs):
        real_save(self, save_directory, *args, **kwargs)  # files written ...
        with open(os.path.join(save_directory, "model.safetensors"), "r+b") as f:
            f.truncate(100)  # ... then the "disk" fails midway
        raise OSError("No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", failing_save)
    args = ["quantize", tiny_dirs["llada"], "--out", str(out), "--method", "rtn"] + (["--overwrite"] if existing else [])
    line = _fail(capsys, *args)
    assert "No space left on device" in line
    if existing:
        assert sorted(os.listdir(out)) == before and (out / "marker.txt").read_text() == "old"
        assert AutoModel.from_pretrained(str(out), trust_remote_code=True) is not None  # still loadable
    else:
        assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == (["out"] if existing else [])  # no temporary folder left behind


def test_atomic_directory_keeps_umask_and_precreated_mode(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_directory(str(tmp_path / "fresh")) as tmp:
            open(os.path.join(tmp, "a"), "w").write("1")
        assert stat.S_IMODE(os.stat(tmp_path / "fresh").st_mode) == 0o755  # as mkdir under umask 022, not 0700
        os.umask(0o027)
        with atomic_directory(str(tmp_path / "fresh2")) as tmp:
            pass
        assert stat.S_IMODE(os.stat(tmp_path / "fresh2").st_mode) == 0o750
        made = tmp_path / "made"
        made.mkdir()
        os.chmod(made, 0o775)  # the user's empty folder keeps its own mode
        with atomic_directory(str(made)) as tmp:
            pass
        assert stat.S_IMODE(os.stat(made).st_mode) == 0o775
    finally:
        os.umask(old)


def test_atomic_directory_on_success_and_error(tmp_path):
    target = tmp_path / "d"
    with atomic_directory(str(target)) as tmp:
        open(os.path.join(tmp, "a"), "w").write("1")
        assert not target.exists()
    assert (target / "a").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_directory(str(target), overwrite=True) as tmp:
            open(os.path.join(tmp, "a"), "w").write("2")
            raise RuntimeError("boom")
    assert (target / "a").read_text() == "1" and os.listdir(tmp_path) == ["d"]


def test_missing_dataset_file_is_reported_before_the_seq_len_check(tiny_dirs, tmp_path, capsys, monkeypatch):
    """A --dataset path that does not exist is the first thing said (not that the default seq_len 1024 exceeds
    the model's 512 positions), before any weight is loaded."""
    from fair_calib_hf.cli import commands

    def no_load(*args, **kwargs):
        raise AssertionError("weights loaded despite a missing --dataset")

    monkeypatch.setattr(commands, "_from_pretrained", no_load)
    missing = str(tmp_path / "nope.jsonl")
    line = _fail(capsys, "quantize", tiny_dirs["dream"], "--out", str(tmp_path / "o"), "--method", "flatquant",
                 "--dataset", missing)
    assert line == f"fair-calib quantize: error: --dataset {missing} does not exist (no such file or folder)"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("method", ["rtn", "quarot", "flatquant"])
def test_prior_with_a_method_other_than_fair_calib_is_refused(tiny_dirs, tmp_path, capsys, monkeypatch, method):
    """--prior only applies to fair_calib: refused in one line before any work (the file is not even read),
    and in Python at calibration time, instead of recording prior_* fields in config.json."""
    from fair_calib_hf.cli import commands

    def no_work(*args, **kwargs):
        raise AssertionError("work started despite --prior with a method other than fair_calib")

    monkeypatch.setattr(commands, "resolve_model", no_work)
    line = _fail(capsys, "quantize", tiny_dirs["llada"], "--out", str(tmp_path / "o"), "--method", method,
                 "--prior", str(tmp_path / "prior.safetensors"))
    assert line == (f"fair-calib quantize: error: --prior applies to --method fair_calib (Stage II's loss) or gptq "
                    f"(its Hessian) only (the Stage I position prior), not --method {method}: drop --prior or use "
                    "--method fair_calib / gptq")
    monkeypatch.undo()
    with pytest.raises(ValueError, match=rf"FairCalibConfig\(method='{method}'\) with prior_path: the Stage I"):
        AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True, quantization_config=FairCalibConfig(
            method=method, prior_path=str(tmp_path / "prior.safetensors"), calibration_dataset=["a b c"] * 2))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["int8", "bogus", "torch.qint8", "torch.Tensor"])
def test_float_dtype_refuses_what_is_not_a_float_dtype(value):
    """One parser for every dtype name the package accepts (CLI, lm-eval model, benchmark, dequantize)."""
    from fair_calib_hf.dtypes import float_dtype

    with pytest.raises(ValueError, match=f"unknown float dtype '{value}'.*'bfloat16'"):
        float_dtype(value)


def test_float_dtype_spellings():
    from fair_calib_hf.dtypes import float_dtype

    assert float_dtype("bfloat16") is torch.bfloat16 and float_dtype("torch.float16") is torch.float16
    assert float_dtype(torch.float32) is torch.float32 and float_dtype(" float32 ") is torch.float32


def _no_load(monkeypatch):
    from fair_calib_hf.cli import commands

    def no_load(*args, **kwargs):
        raise AssertionError("weights loaded before the output location was checked")

    monkeypatch.setattr(commands, "_from_pretrained", no_load)


def test_output_whose_parent_cannot_be_written_is_refused_before_any_work(tiny_dirs, tmp_path, capsys, monkeypatch):
    """A parent that is a file, or a folder without write permission: refused at once with the fix, for quantize,
    probe and eval (not found after calibration as a raw errno on a temporary name)."""
    _no_load(monkeypatch)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for command, out, extra in (("quantize", blocker / "q", ["--method", "rtn"]),
                                ("probe", blocker / "sub" / "p.safetensors", ["--dataset", str(blocker)]),
                                ("eval", blocker / "e", ["--task", "arith"])):
        line = _fail(capsys, command, tiny_dirs["llada"], "--out", str(out), *extra, command=command)
        assert line.endswith(f"cannot write {out}: {blocker} is a file, not a folder; choose another output path")
    if os.geteuid() != 0:  # root writes anywhere: the permission case needs an ordinary user
        locked = tmp_path / "locked"
        locked.mkdir()
        os.chmod(locked, 0o555)
        try:
            line = _fail(capsys, "quantize", tiny_dirs["llada"], "--out", str(locked / "q"), "--method", "rtn")
            assert f"cannot write {locked / 'q'}: {locked} is not writable" in line
        finally:
            os.chmod(locked, 0o755)
    assert sorted(os.listdir(tmp_path)) == sorted(["a_file"] + (["locked"] if os.geteuid() != 0 else []))


def test_eval_out_with_a_tilde_that_exists_is_refused_before_any_work(tiny_dirs, tmp_path, capsys, monkeypatch):
    """``--out=~/results`` (no shell expansion after '=') names the same folder at the check and at the save."""
    _no_load(monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "results.json").write_text("{}")
    line = _fail(capsys, "eval", tiny_dirs["llada"], "--task", "arith", "--out=~/results", command="eval")
    assert line.endswith("already exists and is not empty; pass --overwrite to replace it")


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_calibration_device_cuda_without_cuda_is_refused_before_loading(tiny_dirs, monkeypatch, kind):
    from transformers import PreTrainedModel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_load(*args, **kwargs):
        raise AssertionError("weights loaded despite calibration_device='cuda' without CUDA")

    monkeypatch.setattr(PreTrainedModel, "_load_pretrained_model", no_load, raising=False)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=rf"calibration_device='{device}' but CUDA is not available.*"
                                             r"set calibration_device='cpu' or leave it None"):
            AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True, quantization_config=FairCalibConfig(
                method="rtn", calibration_device=device))
    with pytest.raises(ValueError, match=r"calibration_device='gpu' is not a torch device"):
        AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True,
                                  quantization_config=FairCalibConfig(method="rtn", calibration_device="gpu"))


def test_seq_len_beyond_positions_refused_for_rtn_and_the_zoo_split(tiny_dirs, tmp_path, capsys, monkeypatch):
    """--seq-len beyond the model's positions is refused for rtn and for a zoo model's calibration split, before
    any weight is loaded (it was accepted and written into config.json)."""
    import fair_calib_hf.zoo as zoo
    from fair_calib_hf.cli import commands

    root = tmp_path / "zoo"
    shutil.copytree(tiny_dirs["dream"], root / "dream-arith")
    (root / "dream-arith" / "training.json").write_text(json.dumps({"recipe": {"task": "arith", "kind": "dream"}}))
    monkeypatch.setattr(zoo, "MODELS_DIR", str(root))
    _no_load(monkeypatch)
    data = tmp_path / "d.txt"
    data.write_text("word " * 50)
    for model, extra in (("zoo:dream-arith", []), (tiny_dirs["dream"], ["--dataset", str(data)]),
                         (tiny_dirs["dream"], [])):
        for method in ("rtn", "flatquant"):
            if not extra and model != "zoo:dream-arith" and method != "rtn":
                continue
            line = _fail(capsys, "quantize", model, "--out", str(tmp_path / "o"), "--method", method,
                         "--seq-len", "100000", *extra)
            assert line.endswith("calibration sequences of 100000 tokens exceed the model's 512 positions (config "
                                 "max_sequence_length / max_position_embeddings): pass --seq-len 512 or less"), line
    assert not (tmp_path / "o").exists()
