"""Build script: package metadata lives in pyproject.toml; this file builds the optional native extension.

``fair_calib_hf._C`` holds the compiled CPU W4A4 kernels (sources in kernels/). It is built when torch is
importable at build time (install with ``pip install --no-build-isolation``) and a C++ compiler works.
Without it, or with ``FAIR_CALIB_NO_EXT=1``, the package installs pure Python and its ops run on the exact
pure-torch reference backend (one warning at model load says so). A failing compile never fails the install.
CUDA kernels are not part of this release.
"""
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _extension():
    if os.environ.get("FAIR_CALIB_NO_EXT") == "1":
        print("fair_calib_hf: FAIR_CALIB_NO_EXT=1, skipping the native extension", file=sys.stderr)
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("fair_calib_hf: torch is not importable at build time (build isolation?); installing without the "
              "native extension. Use `pip install --no-build-isolation` to build it.", file=sys.stderr)
        return [], {}

    class OptionalBuildExtension(BuildExtension):
        """Build the extension if possible; on any compiler error, warn and install without it."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as err:  # noqa: BLE001 - any build failure falls back to the reference ops
                print(f"fair_calib_hf: building {ext.name} failed ({err}); the reference ops will be used",
                      file=sys.stderr)

    sources = ["kernels/bindings.cpp", "kernels/cpu/w4a4_cpu.cpp"]
    ext = CppExtension(
        "fair_calib_hf._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "kernels")],
        # -ffp-contract=off: the fp32 epilogue must round exactly like the reference (no FMA contraction).
        extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off"],
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": OptionalBuildExtension}


ext_modules, cmdclass = _extension()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
