"""The source distribution carries what an install from it needs: the kernel sources (else the extension is
silently skipped and the package runs pure Python) and the trained zoo models."""
import os
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, ".git")), reason="needs the source tree")
def test_sdist_contains_kernel_sources_and_zoo_models(tmp_path):
    proc = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (archive,) = list(tmp_path.glob("*.tar.gz"))
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    tracked = subprocess.run(["git", "ls-files", "kernels", "fair_calib_hf/zoo/models"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    assert tracked and not set(tracked) - names, sorted(set(tracked) - names)
    assert "setup.py" in names and "pyproject.toml" in names
