"""The fair-calib CLI end to end on tiny checkpoints: quantize (with report), probe + --prior, eval, inspect,
determinism through the CLI, push to the hub (upload intercepted), the zoo default dataset, optimum-cli and
FairCalibQuantizer."""
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from fair_calib_hf import FairCalibConfig, W4A4Linear
from fair_calib_hf.calibration.stage1_prior import PositionPrior
from fair_calib_hf.cli import main
from fair_calib_hf.zoo.tasks import get_task

from conftest import CALIB_TEXTS

FAST = ["--no-progress", "--n-probe", "4", "--probe-steps", "8", "--set", "epochs=1"]


@pytest.fixture(scope="module")
def calib_txt(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "calib.txt"
    path.write_text("\n".join(t.replace("\n", " ") for t in CALIB_TEXTS * 3))
    return str(path)


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory, tiny_dirs):
    """A fake zoo: a tiny LLaDA checkpoint registered as zoo:llada-arith (task arith)."""
    root = tmp_path_factory.mktemp("zoo")
    shutil.copytree(tiny_dirs["llada"], root / "llada-arith")
    (root / "llada-arith" / "training.json").write_text(json.dumps({"recipe": {"task": "arith", "kind": "llada"}}))
    return str(root)


@pytest.fixture
def fake_zoo(monkeypatch, zoo_dir):
    import fair_calib_hf.zoo as zoo

    monkeypatch.setattr(zoo, "MODELS_DIR", zoo_dir)
    return zoo


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _parts(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


@pytest.mark.parametrize("sub", [[], ["quantize"], ["probe"], ["eval"], ["inspect"]])
def test_help_on_every_subcommand(sub, capsys):
    with pytest.raises(SystemExit) as exc:
        main(sub + ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: fair-calib" in out
    if sub == ["quantize"]:
        assert "--push-to-hub" in out and "--dataset" in out and "--prior" in out and "--overwrite" in out


@pytest.mark.parametrize("sub", ["quantize", "probe", "eval", "inspect"])
def test_help_mentions_only_options_of_its_subcommand(sub, capsys):
    """Each subcommand's --help names only options it has (e.g. eval has no --calibration-device)."""
    import re

    from fair_calib_hf_cli import build_parser

    parser = build_parser()
    subparser = next(a for a in parser._actions if a.dest == "command").choices[sub]
    own = {o for action in subparser._actions for o in action.option_strings}
    with pytest.raises(SystemExit):
        main([sub, "--help"])
    out = capsys.readouterr().out
    out = out.replace(subparser.description or "", "")  # the description may point to another command's option
    assert set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", out)) <= own


def test_help_imports_neither_torch_nor_transformers():
    """``--help`` must be instant (issue 17: 7-10 s before): parsing imports no heavy module. Checked by what is
    imported, not by timing (timings live in BENCHMARKS.md)."""
    code = ("import sys, fair_calib_hf_cli\n"
            "for sub in ([], ['quantize'], ['probe'], ['eval'], ['inspect']):\n"
            "    try:\n        fair_calib_hf_cli.main(sub + ['--help'])\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'fair_calib_hf', 'numpy') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY []"
    optimum = pytest.importorskip("optimum.commands.base", reason="optimum is part of the [test] extra")
    assert optimum is not None
    code = ("import sys, fair_calib_hf_cli.optimum\n"
            "print('HEAVY', [m for m in ('torch', 'fair_calib_hf') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY []", proc.stderr


def test_exit_statuses_usage_error_2_failure_1(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # the command line does not parse: argparse's usage error
        main(["quantize", "x", "--out", str(tmp_path / "o"), "--no-such-option"])
    assert exc.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err
    assert main([]) == 2  # no command: usage
    assert main(["inspect", str(tmp_path / "nope")]) == 1  # parsed, then refused by the work


def test_option_typo_shows_the_subcommand_usage_and_the_closest_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["quantize", "zoo:llada-arith", "--out", "/nonexistent/q", "--methd", "rtn"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("usage: fair-calib quantize ")
    assert err.rstrip().endswith("fair-calib quantize: error: unrecognized arguments: --methd; "
                                 "did you mean --method?")
    with pytest.raises(SystemExit) as exc:  # the typo is reported, not the --out it may have hidden
        main(["quantize", "zoo:llada-arith", "--ot", "/nonexistent/q", "--methd=rtn"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("usage: fair-calib quantize ")
    assert err.rstrip().endswith("fair-calib quantize: error: unrecognized arguments: --ot --methd=rtn; "
                                 "did you mean --out or --method?")


def test_unknown_set_field_fails_before_any_work(tmp_path, capsys, monkeypatch):
    from fair_calib_hf.cli import commands

    def no_work(*args, **kwargs):
        raise AssertionError("work started despite a bad --set")

    monkeypatch.setattr(commands, "preflight", no_work)
    monkeypatch.setattr(commands, "resolve_model", no_work)
    for sub in ("quantize", "probe"):
        out = tmp_path / f"{sub}-out"
        assert main([sub, "zoo:llada-arith", "--out", str(out), "--set", "epcohs=3", "--no-progress"]) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err == f"fair-calib {sub}: error: --set: unknown field 'epcohs' (did you mean 'epochs'?)"
        assert not out.exists()


def test_console_script_is_installed_and_fails_in_one_line(tmp_path):
    from importlib.metadata import entry_points

    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("fair-calib") == "fair_calib_hf_cli:entry_point"
    proc = subprocess.run([sys.executable, "-m", "fair_calib_hf.cli", "inspect", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("fair-calib inspect: error: ") and "does not exist" in lines[-1]
    assert "Traceback" not in proc.stderr


def test_quantize_writes_checkpoint_report_and_inspects(tiny_dirs, calib_txt, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("12+35=\nhello there\n")
    out = str(tmp_path / "q")
    code, stdout, err = _run(capsys, "quantize", tiny_dirs["dream"], "--out", out, "--method", "fair_calib",
                             "--dataset", calib_txt, "--seq-len", "48", "--num-samples", "4", "--prior-window", "16",
                             "--eval-prompts", str(prompts), "--gen-length", "8", *FAST)
    assert code == 0, err
    assert f"wrote {out}" in stdout
    files = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "fair_calib_report.md", "fair_calib_report.json",
            "fair_calib_prior.safetensors", "tokenizer.json"} <= files
    plots = set(os.listdir(os.path.join(out, "report")))
    assert {"block_error.png", "layer_error.png", "prior.png", "flip_rate.png", "prob_mse.png", "amplification.png",
            "lag_ccdf.png"} <= plots
    report = json.load(open(os.path.join(out, "fair_calib_report.json")))
    blocks = report["calibration"]["blocks"]
    assert len(blocks) == 2 and all(len(b["layers"]) == 7 for b in blocks)
    assert all(0 < v < 1 for b in blocks for v in b["layers"].values())
    assert report["calibration"]["prior"]["positions"] == 48 and report["calibration"]["prior"]["window"] == 16
    assert report["calibration"]["peak_memory"]["cpu_rss_bytes"] > 0 and report["calibration"]["seconds"] > 0
    assert 0 <= report["frontier"]["flip_rate"] <= 1 and len(report["frontier"]["teacher_forced_prob_mse_curve"]) > 0
    md = open(os.path.join(out, "fair_calib_report.md")).read()
    for section in ("## Settings", "## Calibration cost", "## Reconstruction error", "## Stage I position prior",
                    "## Frontier diagnostics vs full precision", "report/prior.png"):
        assert section in md
    # each figure is defined where it appears; the models are "full precision" / "quantized" throughout
    assert "| metric | full precision | quantized | definition |" in md
    assert md.count("student") == 1 and "`student` in the JSON" in md
    assert "| `epochs` |" in md and "| `n_probe` |" in md  # Stage I/II settings applied to fair_calib
    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    assert sum(isinstance(m, W4A4Linear) for m in model.modules()) == 14
    assert torch.equal(PositionPrior.load(os.path.join(out, "fair_calib_prior.safetensors")).weights,
                       PositionPrior.from_checkpoint(out).weights)

    code, stdout, err = _run(capsys, "inspect", out)
    assert code == 0, err
    assert "fair_calib  W4A4" in stdout and "packed         14 linears" in stdout
    assert ("prior          Stage I position prior: one weight per position of a 48-token calibration sequence, "
            "probe window = the last 16 positions") in stdout
    assert "layout         matches the quantization_config" in stdout and "lm_head" in stdout
    code, stdout, _ = _run(capsys, "inspect", out, "--json")
    info = json.loads(stdout)
    assert info["method"] == "fair_calib" and len(info["packed"]) == 14 and info["kept_float"] == [
        "lm_head", "model.embed_tokens"]
    assert info["disk_bytes"] < info["float_bytes"] and info["layout"]["ok"]
    assert sum(info["transforms"].values()) == 14


def test_zoo_model_defaults_to_its_task_and_probe_prior_is_reusable(fake_zoo, tmp_path, capsys):
    prior_file = str(tmp_path / "prior.safetensors")
    code, stdout, err = _run(capsys, "probe", "zoo:llada-arith", "--out", prior_file, "--num-samples", "4",
                             "--plot", str(tmp_path / "prior.png"), *FAST[:5])
    assert code == 0, err
    prior = PositionPrior.load(prior_file)
    task = get_task("arith")
    assert prior.weights.numel() == task.prompt_width + task.gen_length  # the zoo task's layout
    assert prior.frontier.numel() == task.gen_length  # the window is the answer
    assert os.path.isfile(tmp_path / "prior.png")
    out = str(tmp_path / "q")
    code, stdout, err = _run(capsys, "quantize", "zoo:llada-arith", "--out", out, "--num-samples", "4",
                             "--prior", prior_file, "--eval-count", "4", *FAST)
    assert code == 0, err
    assert "zoo task 'arith'" in err
    report = json.load(open(os.path.join(out, "fair_calib_report.json")))
    assert report["config"]["seq_len"] == task.prompt_width + task.gen_length
    assert report["config"]["prior_window"] == task.gen_length
    # Stage I follows the benchmark's LLaDA decoding (blocks of 8); the user's --probe-steps wins over the default
    assert report["config"]["probe_steps"] == 8 and report["config"]["probe_block_length"] == 8
    assert report["config"]["prior_path"] == "sha256:" + hashlib.sha256(open(prior_file, "rb").read()).hexdigest()
    assert torch.equal(PositionPrior.from_checkpoint(out).weights, prior.weights)
    assert report["accuracy"]["student"]["task"] == "arith" and report["accuracy"]["student"]["n"] == 4
    assert "test-split examples of zoo task 'arith'" in report["eval_source"]

    # the same prior weights plain GPTQ's Hessian (weight-only W4A16, group size 32)
    gq = str(tmp_path / "gq")
    code, stdout, err = _run(capsys, "quantize", "zoo:llada-arith", "--out", gq, "--num-samples", "4", "--method",
                             "gptq", "--prior", prior_file, "--set", "a_bits=16", "--set", "group_size=32",
                             "--eval-count", "4", "--no-progress")
    assert code == 0, err
    gconfig = json.load(open(os.path.join(gq, "fair_calib_report.json")))["config"]
    assert (gconfig["method"], gconfig["weight_rounding"], gconfig["gptq_position_weights"]) == ("gptq", "gptq", "prior")
    assert (gconfig["a_bits"], gconfig["group_size"]) == (16, 32)
    assert torch.equal(PositionPrior.from_checkpoint(gq).weights, prior.weights)
    assert "- GPTQ weight rounding: weighted reconstruction error on the calibration inputs below round-to-nearest's" \
        in open(os.path.join(gq, "fair_calib_report.md")).read()

    code, stdout, err = _run(capsys, "eval", out, "--teacher", "zoo:llada-arith", "--count", "4",
                             "--frontier-count", "4", "--out", str(tmp_path / "ev"), "--no-progress")
    assert code == 0, err
    results = json.load(open(tmp_path / "ev" / "results.json"))
    assert results["task"] == "arith" and 0 <= results["student"]["accuracy"] <= 1
    assert 0 <= results["frontier"]["flip_rate"] <= 1 and "accuracy" in results["teacher"]
    assert {"flip_rate.png", "prob_mse.png", "amplification.png", "lag_ccdf.png"} <= set(
        os.listdir(tmp_path / "ev"))


def test_quantize_is_bit_identical_across_runs(tiny_dirs, calib_txt, tmp_path, capsys):
    """Same model, data, config and seed through the CLI: identical tensors, parsed headers and config.json
    (safetensors writes the header's metadata map in arbitrary key order, so headers are compared parsed)."""
    outs = []
    for run in range(2):
        out = str(tmp_path / f"run{run}")
        code, _, err = _run(capsys, "quantize", tiny_dirs["llada"], "--out", out, "--method", "fair_calib",
                            "--dataset", calib_txt, "--seq-len", "48", "--num-samples", "4", "--prior-window", "16",
                            "--seed", "3", "--no-report", *FAST)
        assert code == 0, err
        outs.append(out)
    (head_a, data_a), (head_b, data_b) = (_parts(os.path.join(o, "model.safetensors")) for o in outs)
    assert head_a == head_b and data_a == data_b
    a, b = (load_file(os.path.join(o, "model.safetensors")) for o in outs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.load(open(os.path.join(outs[0], "config.json"))) == json.load(open(os.path.join(outs[1], "config.json")))
    other = str(tmp_path / "seed4")
    assert main(["quantize", tiny_dirs["llada"], "--out", other, "--method", "fair_calib", "--dataset", calib_txt,
                 "--seq-len", "48", "--num-samples", "4", "--prior-window", "16", "--seed", "4", "--no-report",
                 *FAST]) == 0
    c = load_file(os.path.join(other, "model.safetensors"))
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the seed matters: the comparison can fail


def test_push_to_hub_uploads_the_folder(tiny_dirs, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    uploaded = {}

    def create_commit(self, repo_id, operations=(), **kwargs):
        uploaded["repo"] = repo_id
        uploaded["files"] = {op.path_in_repo for op in operations}

    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    monkeypatch.setattr(huggingface_hub.HfApi, "preupload_lfs_files", lambda self, *a, **k: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **k: huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}"))
    out = str(tmp_path / "q")
    code, stdout, err = _run(capsys, "quantize", tiny_dirs["llada"], "--out", out, "--method", "rtn",
                             "--push-to-hub", "someone/tiny-w4a4", "--no-progress")
    assert code == 0, err
    assert uploaded["repo"] == "someone/tiny-w4a4" and "uploaded to https://huggingface.co/someone/tiny-w4a4" in stdout
    assert {"config.json", "model.safetensors", "modeling_llada.py", "fair_calib_report.md"} <= uploaded["files"]


def test_fair_calib_quantizer_follows_optimum_interface(tiny_dirs, tmp_path):
    from optimum.quantization_base import OptimumQuantizer

    from fair_calib_hf.optimum_quantizer import FairCalibQuantizer

    quantizer = FairCalibQuantizer.from_pretrained(tiny_dirs["llada"])
    assert isinstance(quantizer, OptimumQuantizer)
    out = quantizer.quantize(tmp_path / "q", quantization_config=FairCalibConfig(
        method="rtn", calibration_dataset=CALIB_TEXTS, seq_len=64))
    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    assert sum(isinstance(m, W4A4Linear) for m in model.modules()) == 14
    assert os.path.isfile(os.path.join(out, "fair_calib_report.md"))
    with pytest.raises(FileExistsError, match="overwrite"):
        quantizer.quantize(tmp_path / "q", quantization_config=FairCalibConfig(method="rtn"))
    # an in-memory float model goes through a temporary folder (remote code kept)
    fp = AutoModel.from_pretrained(tiny_dirs["dream"], trust_remote_code=True)
    out2 = FairCalibQuantizer.from_pretrained(fp).quantize(tmp_path / "q2", report=False)
    assert AutoModel.from_pretrained(out2, trust_remote_code=True).config.quantization_config.method == "rtn"
    # 8-bit activations through the same interface (issue 29)
    out3 = quantizer.quantize(tmp_path / "q3", quantization_config=FairCalibConfig(
        method="quarot", w_bits=8, a_bits=8, calibration_dataset=CALIB_TEXTS, seq_len=64), report=False)
    model = AutoModel.from_pretrained(out3, trust_remote_code=True)
    assert sum(type(m).__name__ == "W8A8Linear" for m in model.modules()) == 14


def test_optimum_cli_registers_fair_calib(tiny_dirs, tmp_path):
    cli = os.path.join(os.path.dirname(sys.executable), "optimum-cli")
    assert os.path.isfile(cli), "optimum is part of the test extra"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))] + os.environ.get("PYTHONPATH", "").split(os.pathsep))}
    proc = subprocess.run([cli, "fair-calib", "--help"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and "quantize" in proc.stdout and "inspect" in proc.stdout, proc.stderr
    out = str(tmp_path / "q")
    proc = subprocess.run([cli, "fair-calib", "quantize", tiny_dirs["llada"], "--out", out, "--method", "rtn",
                           "--no-progress"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = subprocess.run([cli, "fair-calib", "inspect", out], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and "packed         14 linears" in proc.stdout
    proc = subprocess.run([cli, "fair-calib", "quantize", tiny_dirs["llada"], "--out", out, "--method", "rtn"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("fair-calib quantize: error:")


def test_prior_mismatch_says_probed_vs_used_in_cli_words(tiny_dirs, calib_txt, tmp_path, capsys):
    """A prior probed at another seq_len: the error says what it was probed with, what this run uses, and how
    to fix it, in option names (no "--prior / --prior")."""
    prior_file = str(tmp_path / "prior.safetensors")
    PositionPrior(torch.ones(44), torch.ones(16), torch.ones(16),
                  {"family": "llada", "logits_shift": 0, "seq_len": 44, "window": 16}).save(prior_file)
    code, _, err = _run(capsys, "quantize", tiny_dirs["llada"], "--out", str(tmp_path / "q"), "--dataset", calib_txt,
                        "--seq-len", "48", "--num-samples", "2", "--prior-window", "16", "--prior", prior_file,
                        "--no-report", *FAST)
    line = err.strip().splitlines()[-1]
    assert code == 1 and line == (
        "fair-calib quantize: error: the reused position prior was probed with --seq-len 44, but this calibration "
        "uses --seq-len 48; probe again with the same model, --seq-len and --prior-window (fair-calib probe), or "
        "drop --prior")
    assert not os.path.exists(tmp_path / "q")


def test_zoo_model_with_a_local_dataset_keeps_the_zoo_geometry(fake_zoo, calib_txt, tmp_path, capsys):
    """zoo:NAME --dataset FILE: the defaults (seq_len, prior_window) stay the zoo task's layout, not 1024."""
    out = str(tmp_path / "q")
    code, _, err = _run(capsys, "quantize", "zoo:llada-arith", "--out", out, "--method", "flatquant", "--dataset",
                        calib_txt, "--num-samples", "2", "--no-report", *FAST)
    assert code == 0, err
    task = get_task("arith")
    qc = json.load(open(os.path.join(out, "config.json")))["quantization_config"]
    assert qc["seq_len"] == task.prompt_width + task.gen_length and qc["prior_window"] == task.gen_length


def test_written_files_follow_the_umask(tiny_dirs, calib_txt, tmp_path, capsys):
    """probe's prior file and quantize's checkpoint files get 0666 minus the umask (safetensors writes 0600)."""
    import stat

    old = os.umask(0o027)
    try:
        prior_file = str(tmp_path / "prior.safetensors")
        code, _, err = _run(capsys, "probe", tiny_dirs["llada"], "--out", prior_file, "--dataset", calib_txt,
                            "--seq-len", "48", "--num-samples", "2", "--prior-window", "16", *FAST[:5])
        assert code == 0, err
        assert stat.S_IMODE(os.stat(prior_file).st_mode) == 0o640
        out = str(tmp_path / "q")
        code, _, err = _run(capsys, "quantize", tiny_dirs["llada"], "--out", out, "--method", "rtn", "--no-report",
                            "--no-progress")
        assert code == 0, err
        modes = {name: stat.S_IMODE(os.stat(os.path.join(out, name)).st_mode) for name in os.listdir(out)}
        assert "model.safetensors" in modes and set(modes.values()) == {0o640}, modes
    finally:
        os.umask(old)


def test_fair_calib_quantizer_on_a_zoo_model_evaluates_its_task(fake_zoo, tiny_dirs, tmp_path, capfd):
    """FairCalibQuantizer.from_pretrained("zoo:NAME").quantize(...) measures the report's frontier diagnostics on
    the zoo task like the CLI, and its progress steps count 1..3 (1..2 without an evaluation set)."""
    from fair_calib_hf.optimum_quantizer import FairCalibQuantizer

    out = FairCalibQuantizer.from_pretrained("zoo:llada-arith").quantize(
        tmp_path / "q", quantization_config=FairCalibConfig(method="rtn"))
    err = capfd.readouterr().err
    assert [s for s in ("[1/3]", "[2/3]", "[3/3]") if s in err] == ["[1/3]", "[2/3]", "[3/3]"], err
    report = json.load(open(os.path.join(out, "fair_calib_report.json")))
    assert report["frontier"] is not None and "zoo task 'arith'" in report["eval_source"]
    assert "Not measured" not in open(os.path.join(out, "fair_calib_report.md")).read()
    FairCalibQuantizer.from_pretrained(tiny_dirs["llada"]).quantize(tmp_path / "q2")
    err = capfd.readouterr().err
    assert "[1/2]" in err and "[2/2] saving" in err and "/3]" not in err, err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_folder_saved_sharded_then_unsharded_still_inspects(tiny_dirs, tmp_path, capsys, kind, dtype):
    """transformers leaves the old model.safetensors.index.json behind when an unsharded save follows a sharded
    one into the same folder; files are resolved as transformers resolves them (model.safetensors first, an
    index only when its shards are there)."""
    cfg = FairCalibConfig(method="fair_calib", calibration_dataset=[list(range(5, 37)), list(range(40, 72))],
                          num_samples=2, seq_len=32, epochs=1, n_probe=2, probe_batch_size=2, probe_steps=8)
    q = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True, dtype=dtype, quantization_config=cfg)
    out = tmp_path / "q"
    q.save_pretrained(out, max_shard_size="40KB")
    assert (out / "model.safetensors.index.json").exists()
    q.save_pretrained(out)
    assert (out / "model.safetensors").exists()
    assert main(["inspect", str(out)]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    prior = PositionPrior.from_checkpoint(str(out))
    assert prior is not None and torch.equal(prior.weights, q.hf_quantizer.calibration_report.prior.weights)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_one_quantizer_and_one_config_are_reusable(tiny_dirs, tmp_path, monkeypatch, kind, dtype):
    """A FairCalibQuantizer of an in-memory model quantizes several times; one FairCalibConfig used for models of
    both families calibrates each with its own tokenizer; the caller's config is left as it was."""
    from transformers import AutoTokenizer

    import fair_calib_hf.quantizer as quantizer_module
    from fair_calib_hf.optimum_quantizer import FairCalibQuantizer

    seen = []
    real = quantizer_module.calibrate

    def spy(model, config, **kwargs):
        seen.append(config.tokenizer.bos_token)
        return real(model, config, **kwargs)

    monkeypatch.setattr(quantizer_module, "calibrate", spy)
    config = FairCalibConfig(method="rtn", calibration_dataset=CALIB_TEXTS, seq_len=64)
    before = config.to_dict()
    other = "dream" if kind == "llada" else "llada"
    fp = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[kind], trust_remote_code=True)
    quantizer = FairCalibQuantizer.from_pretrained(fp, tokenizer=tokenizer)
    first = quantizer.quantize(tmp_path / "a", quantization_config=config, report=False)
    second = quantizer.quantize(tmp_path / "b", quantization_config=config, report=False)
    FairCalibQuantizer.from_pretrained(tiny_dirs[other]).quantize(tmp_path / "c", quantization_config=config,
                                                                  report=False)
    assert load_file(os.path.join(first, "model.safetensors")).keys() == load_file(
        os.path.join(second, "model.safetensors")).keys()
    bos = {"llada": "<|startoftext|>", "dream": "<|beginoftext|>"}
    assert seen == [bos[kind], bos[kind], bos[other]]
    assert config.tokenizer is None and config.to_dict() == before


@pytest.fixture(scope="module")
def mixed_zoo(tmp_path_factory, tiny_dirs):
    """A fake zoo of tiny checkpoints: dream-arith and llada-arith (task arith), llada-code (task code)."""
    root = tmp_path_factory.mktemp("mixed-zoo")
    for name, kind, task in (("dream-arith", "dream", "arith"), ("llada-arith", "llada", "arith"),
                             ("llada-code", "llada", "code")):
        shutil.copytree(tiny_dirs[kind], root / name)
        (root / name / "training.json").write_text(json.dumps({"recipe": {"task": task, "kind": kind}}))
    return str(root)


@pytest.mark.parametrize("model, teacher, words", [
    ("zoo:dream-arith", "zoo:llada-arith", "another family"),
    ("zoo:llada-arith", "zoo:llada-code", "another task"),
])
def test_eval_refuses_a_teacher_of_another_family_or_task_before_any_work(mixed_zoo, monkeypatch, capsys, model,
                                                                         teacher, words):
    import fair_calib_hf.zoo as zoo

    monkeypatch.setattr(zoo, "MODELS_DIR", mixed_zoo)
    code, stdout, err = _run(capsys, "eval", model, "--teacher", teacher, "--count", "4", "--no-progress")
    assert code == 1 and words in err and teacher in err, err
    assert "accuracy" not in stdout and "[1/2]" not in err  # refused before any model was loaded


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_eval_decoding_is_chosen_and_accuracy_has_n_and_a_95_interval(mixed_zoo, monkeypatch, tmp_path, capsys,
                                                                      kind, dtype):
    """The README's tables are "N tokens/step" (LLaDA: blocks of 8): ``--tokens-per-step`` / ``--steps`` /
    ``--block-length`` set the decoding of the scores and of the frontier; every accuracy prints with n and a
    95 % Wilson interval. Bad decoding settings fail before any model is loaded, naming the option."""
    import fair_calib_hf.zoo as zoo

    monkeypatch.setattr(zoo, "MODELS_DIR", mixed_zoo)
    name = f"zoo:{kind}-arith"
    out = tmp_path / "ev"
    code, stdout, err = _run(capsys, "eval", name, "--teacher", name, "--count", "4", "--frontier-count", "2",
                             "--tokens-per-step", "4", "--dtype", dtype, "--out", str(out), "--no-progress")
    assert code == 0, err
    results = json.load(open(out / "results.json"))
    for who in ("student", "teacher"):
        r = results[who]
        assert r["decoding"]["steps"] == 8 and r["n"] == 4
        assert r["decoding"]["block_length"] == (8 if kind == "llada" else None)
        lo, hi = r["accuracy_ci95"]
        assert 0 <= lo <= r["accuracy"] <= hi <= 1 and hi - lo > 0.2  # 4 problems: a wide interval
        assert f"n=4, 95 % CI [{100 * lo:.1f}, {100 * hi:.1f}]" in stdout
    assert results["decoding"]["steps"] == 8
    if kind == "llada":
        code, _, err = _run(capsys, "eval", name, "--count", "4", "--steps", "8", "--block-length", "16",
                            "--out", str(tmp_path / "ev2"), "--no-progress")
        assert code == 0, err
        assert json.load(open(tmp_path / "ev2" / "results.json"))["student"]["decoding"]["block_length"] == 16
    for bad, words in ((["--tokens-per-step", "5"], "--tokens-per-step 5 does not divide"),
                       (["--block-length", "5"], "--block-length")):
        code, stdout, err = _run(capsys, "eval", name, "--count", "4", "--no-progress", *bad)
        assert code == 1 and words in err and "[1/2]" not in err, err
    with pytest.raises(SystemExit) as exc:
        main(["eval", name, "--tokens-per-step", "4", "--steps", "8"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize("spelling, value", [("True", True), ("False", False), ("true", True), ("false", False),
                                             ("yes", True), ("no", False), ("1", True), ("0", False),
                                             ("YES", True), (" No ", False)])
def test_set_booleans_take_the_spellings_users_type(spelling, value):
    from fair_calib_hf.cli.commands import _parse_set

    assert _parse_set([f"lwc={spelling}", f"pack_samples={spelling}"]) == {"lwc": value, "pack_samples": value}
    assert _parse_set(["epochs=1", "lr=0.01", "prior_schedule=early", "method=fair-calib"]) == {
        "epochs": 1, "lr": 0.01, "prior_schedule": "early", "method": "fair_calib"}
    with pytest.raises(ValueError, match=r"--set lwc=maybe: lwc is a boolean; write True/False"):
        _parse_set(["lwc=maybe"])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_method_spelled_with_a_hyphen_and_set_false_quantize(tiny_dirs, calib_txt, tmp_path, capsys, kind, dtype):
    """``--method fair-calib`` is ``fair_calib``; ``--set lwc=False`` (Python's spelling) is false."""
    from fair_calib_hf_cli import build_parser

    assert build_parser().parse_args(["quantize", "m", "--out", "o", "--method", "Fair-Calib"]).method == "fair_calib"
    out = tmp_path / "q"
    code, _, err = _run(capsys, "quantize", tiny_dirs[kind], "--out", str(out), "--method", "fair-calib",
                        "--dataset", calib_txt, "--seq-len", "48", "--num-samples", "4", "--prior-window", "16",
                        "--dtype", dtype, "--no-report", *FAST, "--set", "lwc=False", "--set", "add_diag=no")
    assert code == 0, err
    qc = json.load(open(out / "config.json"))["quantization_config"]
    assert qc["method"] == "fair_calib" and qc["lwc"] is False and qc["add_diag"] is False


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_quantize_report_states_the_data_used_and_the_last_line_names_it(mixed_zoo, monkeypatch, tmp_path, capsys,
                                                                         kind, dtype):
    """A zoo model calibrates on its task's calibration split: the report's settings say so (not the unused
    ``dataset_split "train"``); the diagnostics step shows a progress bar; the last line of the output names
    the report and its headline numbers."""
    import fair_calib_hf.zoo as zoo

    from transformers.utils import logging as hf_logging

    monkeypatch.setattr(zoo, "MODELS_DIR", mixed_zoo)
    out = tmp_path / "q"
    was_enabled = hf_logging.is_progress_bar_enabled()  # an earlier --no-progress in this process disabled them
    hf_logging.enable_progress_bar()
    try:
        code, stdout, err = _run(capsys, "quantize", f"zoo:{kind}-arith", "--out", str(out), "--method",
                                 "flatquant", "--num-samples", "4", "--eval-count", "4", "--dtype", dtype,
                                 "--set", "epochs=1")
    finally:
        if not was_enabled:
            hf_logging.disable_progress_bar()
    assert code == 0, err
    md = (out / "fair_calib_report.md").read_text()
    assert "| calibration data | zoo task 'arith', calibration split (4 sequences) |" in md
    assert not {"`dataset_split`", "`calibration_dataset`", "`dataset_text_column`"} & set(md.split())
    assert "fair_calib: frontier diagnostics" in err  # the progress bar of the diagnostics step
    last = stdout.strip().splitlines()[-1]
    report = json.load(open(out / "fair_calib_report.json"))
    student = report["accuracy"]["student"]
    assert last.startswith(f"report {out / 'fair_calib_report.md'}: "), last
    assert f"quantized accuracy {100 * student['accuracy']:.1f} % (n=4" in last and "full precision" in last
    assert f"flip rate {report['frontier']['flip_rate']:.4f}" in last
