"""Build script. Package metadata lives in pyproject.toml.

The compiled W4A4 kernels (sources in kernels/) are not part of this release: the package runs its ops on
the pure-torch reference backend (fair_calib_hf/ops/reference.py), which is exact and slow. When the CPU/CUDA
kernels land, this file builds them as one extension.
"""
from setuptools import setup

setup()
