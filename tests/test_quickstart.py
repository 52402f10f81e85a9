"""The newcomer's main job: ``examples/quickstart.py`` (its ``--help``, its default output folder) and
``examples/run_quickstart.sh``, the one command that sets up an environment and runs it."""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "examples", "quickstart.py")
RUNNER = os.path.join(ROOT, "examples", "run_quickstart.sh")


def _quickstart_module():
    spec = importlib.util.spec_from_file_location("quickstart", QUICKSTART)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _help_text() -> str:
    proc = subprocess.run([sys.executable, QUICKSTART, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_help_describes_every_option_with_its_default_and_the_output():
    text = _help_text()
    options = text.split("options:", 1)[1]
    described = re.split(r"\n  (?=-)", options)[1:]  # one entry per option, its help text included
    for entry in described:
        flags = entry.split()[0]
        if flags.startswith("-h"):
            continue
        assert "default:" in " ".join(entry.split()), f"--help gives no default for {flags}: {entry!r}"
    parser = _quickstart_module().build_parser()
    for action in parser._actions:
        for flag in action.option_strings:
            assert flag in options, f"--help does not describe {flag}"
    prose = " ".join(text.split())
    for what in ("How long:", "What it prints:", '"accuracy"', '"flip rate vs FP"', "examples/run_quickstart.sh"):
        assert what in prose, f"--help does not say {what}"


def test_help_is_instant_no_torch_import():
    code = ("import runpy, sys\nsys.argv = ['quickstart.py', '--help']\n"
            f"try:\n    runpy.run_path({QUICKSTART!r}, run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', [m for m in ('torch', 'transformers', 'fair_calib_hf') if m in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_default_output_folder_is_in_the_repository_and_git_ignored():
    module = _quickstart_module()
    out = module.default_out("zoo:dream-arith", "fair_calib")
    assert os.path.commonpath([out, ROOT]) == ROOT and out != ROOT
    assert module.build_parser().parse_args([]).out is None  # None means default_out(...)
    if subprocess.run(["git", "-C", ROOT, "rev-parse"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: nothing can be ignored")
    proc = subprocess.run(["git", "-C", ROOT, "check-ignore", "-q", os.path.relpath(out, ROOT)])
    assert proc.returncode == 0, f"the quickstart's default output {out} is not ignored by git"


def test_count_below_one_is_refused_before_any_work():
    proc = subprocess.run([sys.executable, QUICKSTART, "--count", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--count must be at least 1" in proc.stderr


def test_run_quickstart_script_is_valid_bash():
    proc = subprocess.run(["bash", "-n", RUNNER], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_run_quickstart_reuses_a_ready_environment():
    """With an environment that already has torch and this checkout's package, the script installs nothing and
    hands its arguments to the quickstart (``--help`` here)."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("the tests do not run in a virtual environment the script could reuse")
    python = os.path.join(sys.prefix, "bin", "python")
    where = subprocess.run([python, "-c", "import fair_calib_hf, os; print(os.path.realpath(fair_calib_hf.__file__))"],
                           cwd="/", capture_output=True, text=True, timeout=120)
    if where.returncode != 0 or not where.stdout.strip().startswith(os.path.join(os.path.realpath(ROOT), "")):
        pytest.skip(f"this environment's fair_calib_hf is not this checkout's ({where.stdout.strip() or where.stderr!r}): "
                    "the script would reinstall it")
    env = dict(os.environ, VENV=sys.prefix, FAIR_CALIB_REINSTALL="0")
    proc = subprocess.run(["bash", RUNNER, "--help"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "== installing" not in proc.stdout
    assert "usage: python examples/quickstart.py" in proc.stdout
