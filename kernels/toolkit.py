"""Locate the CUDA toolkit behind ``nvcc`` (stdlib only: imported by setup.py before torch's build helpers,
by the nvcc compile tests and by the GPU check script).

``nvcc`` on PATH may be a wrapper script (``exec /usr/local/cuda-13.0/bin/nvcc "$@"``) or a symlink. torch
infers ``CUDA_HOME`` as the parent of the folder holding whatever ``nvcc`` it finds, which for a wrapper in
``/usr/local/bin`` gives ``/usr/local``, and the link then fails with ``cannot find -lcudart``. The toolkit
root is the folder whose ``bin/nvcc`` is the real compiler and which holds ``include/cuda_runtime.h``.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

ARCHS = ("80", "86", "89", "90")
"""Architectures the CUDA kernels are built and compile-tested for (sm_80/86/89: int4 mma; sm_90: int8 mma)."""

DEFAULT_TORCH_CUDA_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"
"""TORCH_CUDA_ARCH_LIST used when it is unset and no GPU is visible (+PTX: newer GPUs JIT the sm_90 code)."""


def _is_root(path: str | None) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and os.path.isfile(
        os.path.join(path, "include", "cuda_runtime.h"))


def _root_of(nvcc: str) -> str | None:
    """Toolkit root of an ``nvcc`` executable, following symlinks and wrapper scripts."""
    real = os.path.realpath(nvcc)
    root = os.path.dirname(os.path.dirname(real))
    if _is_root(root):
        return root
    try:  # a small wrapper script naming the real compiler
        if os.path.getsize(real) < 64 * 1024:
            with open(real, "rb") as f:
                text = f.read().decode("utf-8", "replace")
            if text.startswith("#!"):
                for cand in re.findall(r"(/[^\s'\"$;]*?/bin/nvcc)\b", text):
                    root = os.path.dirname(os.path.dirname(os.path.realpath(cand)))
                    if _is_root(root):
                        return root
    except OSError:
        pass
    try:  # ask the driver itself: its dry run prints TOP=<root>/bin/..
        out = subprocess.run([nvcc, "-dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
        match = re.search(r"^#\$ TOP=(.*)$", out.stdout + out.stderr, re.M)
        if match:
            root = os.path.realpath(os.path.join(match.group(1).strip(), ".."))
            if _is_root(root):
                return root
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def find_cuda_home() -> str | None:
    """The CUDA toolkit root: ``$CUDA_HOME``/``$CUDA_PATH`` when they point at one, else resolved from the
    ``nvcc`` they or PATH provide, else ``/usr/local/cuda``; ``None`` when there is no toolkit."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if _is_root(home):
            return os.path.realpath(home)
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            root = _root_of(os.path.join(home, "bin", "nvcc"))
            if root:
                return root
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = _root_of(nvcc)
        if root:
            return root
    return os.path.realpath("/usr/local/cuda") if _is_root("/usr/local/cuda") else None


def nvcc_path() -> str | None:
    """The real ``nvcc`` of :func:`find_cuda_home`, or ``None``."""
    home = find_cuda_home()
    return os.path.join(home, "bin", "nvcc") if home else None
