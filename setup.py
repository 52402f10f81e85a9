"""Build script: package metadata lives in pyproject.toml; this file builds the optional native extension.

``fair_calib_hf._C`` holds the compiled W4A4 kernels (sources in kernels/): always the CPU kernels, and the
CUDA kernels too when torch is a CUDA build and a CUDA toolkit is found. It is built when torch is
importable at build time (install with ``pip install --no-build-isolation``) and a C++ compiler works.

* CUDA: ``CUDA_HOME`` is set to the real toolkit root (``nvcc`` on PATH may be a wrapper script; see
  kernels/toolkit.py) and, when ``TORCH_CUDA_ARCH_LIST`` is unset and no GPU is visible, to
  ``8.0;8.6;8.9;9.0+PTX``. ``FAIR_CALIB_NO_CUDA=1`` builds the CPU kernels only.
* A failing CUDA build falls back to the CPU-only extension; a failing CPU build installs pure Python.
  Without the extension, or with ``FAIR_CALIB_NO_EXT=1``, the ops run on the exact pure-torch reference
  backend (one warning at model load names the backend). A failing compile never fails the install.
"""
import importlib.util
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _log(msg):
    print(f"fair_calib_hf: {msg}", file=sys.stderr)


def _toolkit():
    spec = importlib.util.spec_from_file_location("_fair_calib_toolkit", os.path.join(ROOT, "kernels", "toolkit.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _want_cuda(torch):
    """Whether to build the CUDA kernels; sets CUDA_HOME / TORCH_CUDA_ARCH_LIST for torch's build helpers
    (which read CUDA_HOME when torch.utils.cpp_extension is first imported, so this runs before that)."""
    if os.environ.get("FAIR_CALIB_NO_CUDA") == "1":
        _log("FAIR_CALIB_NO_CUDA=1: building the CPU kernels only")
        return False
    if not torch.version.cuda:
        _log(f"torch {torch.__version__} is not a CUDA build: building the CPU kernels only")
        return False
    home = _toolkit().find_cuda_home()
    if home is None:
        _log(f"torch {torch.__version__} is a CUDA build but no CUDA toolkit (nvcc) was found: CPU kernels only")
        return False
    if os.environ.get("CUDA_HOME") != home:
        _log(f"CUDA_HOME={home} (resolved from nvcc)")
    os.environ["CUDA_HOME"] = home
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        if torch.cuda.is_available():
            _log("TORCH_CUDA_ARCH_LIST unset: building for the visible GPU(s)")
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = _toolkit().DEFAULT_TORCH_CUDA_ARCH_LIST
            _log(f"no GPU visible: TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
    return True


def _extension():
    if os.environ.get("FAIR_CALIB_NO_EXT") == "1":
        _log("FAIR_CALIB_NO_EXT=1, skipping the native extension")
        return [], {}
    if not os.path.isfile(os.path.join(ROOT, "kernels", "toolkit.py")):
        _log("kernels/ sources not found (not a source checkout?); installing without the native extension")
        return [], {}
    try:
        import torch
    except ImportError:
        _log("torch is not importable at build time (build isolation?); installing without the native "
             "extension. Use `pip install --no-build-isolation` to build it.")
        return [], {}
    with_cuda = _want_cuda(torch)
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    include = [os.path.join(ROOT, "kernels")]
    cpu_sources = ["kernels/bindings.cpp", "kernels/cpu/w4a4_cpu.cpp", "kernels/cpu/w4a4_avx512.cpp",
                   "kernels/cpu/w4a4_quantize.cpp", "kernels/cpu/a8_quantize.cpp",
                   "kernels/cpu/w8a8_avx512.cpp", "kernels/cpu/fake_quant.cpp"]
    # -ffp-contract=off: the fp32 epilogue must round exactly like the reference (no FMA contraction).
    # The AVX2 / AVX-512 code uses function-level target attributes, so no -m flags: the extension loads on
    # any x86-64 CPU and picks its GEMM at run time.
    cxx = ["-O3", "-fopenmp", "-ffp-contract=off"]

    def cpu_ext():
        return CppExtension("fair_calib_hf._C", sources=cpu_sources, include_dirs=include,
                            extra_compile_args=list(cxx), extra_link_args=["-fopenmp"])

    def cuda_ext():
        # .cu files: no torch headers, no fast math (the epilogue and the quantizer must round like the
        # reference; the kernels use __fmul_rn/__fdiv_rn anyway).
        return CUDAExtension(
            "fair_calib_hf._C",
            sources=cpu_sources + ["kernels/cuda_bindings.cpp", "kernels/cuda/w4a4_gemm.cu",
                                   "kernels/cuda/a8_gemm.cu", "kernels/cuda/w4a4_quant.cu"],
            include_dirs=include,
            define_macros=[("FAIR_CALIB_WITH_CUDA", "1")],
            extra_compile_args={"cxx": list(cxx), "nvcc": ["-O3", "-std=c++17", "--threads", "4"]},
            extra_link_args=["-fopenmp"])

    class OptionalBuildExtension(BuildExtension):
        """Build the extension if possible: on a CUDA build error, retry with the CPU kernels only; on any
        other compiler error, warn and install without it (the reference ops are used)."""

        def build_extensions(self):
            try:
                super().build_extensions()
                _log("built fair_calib_hf._C with the CPU" + (" and CUDA" if with_cuda else "") + " kernels")
                return
            except Exception as err:  # noqa: BLE001 - any build failure falls back
                if not with_cuda:
                    _log(f"building fair_calib_hf._C failed ({err}); the reference ops will be used")
                    return
                _log(f"building the CUDA kernels failed ({err}); retrying with the CPU kernels only")
            # Reuse the Extension object (setuptools attached its own state to it) with the CPU-only settings.
            ext, cpu = self.extensions[0], cpu_ext()
            for attr in ("sources", "include_dirs", "define_macros", "undef_macros", "libraries", "library_dirs",
                         "runtime_library_dirs", "extra_objects", "extra_compile_args", "extra_link_args",
                         "language"):
                setattr(ext, attr, getattr(cpu, attr))
            try:
                super().build_extensions()
                _log("built fair_calib_hf._C with the CPU kernels only (CUDA tensors use the reference ops)")
            except Exception as err:  # noqa: BLE001
                _log(f"building fair_calib_hf._C failed ({err}); the reference ops will be used")

    return [cuda_ext() if with_cuda else cpu_ext()], {"build_ext": OptionalBuildExtension}


ext_modules, cmdclass = _extension()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
