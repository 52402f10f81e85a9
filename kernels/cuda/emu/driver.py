"""Build the real CUDA kernel sources (``kernels/cuda/*.cu``) for the host emulation with g++ and call them
through their C ABI (``kernels/cuda/w4a4_cuda.h``) on CPU tensors, the way ``kernels/cuda_bindings.cpp``
calls them on a GPU. No nvcc, no CUDA headers, no GPU: CI runs the kernels with this (tests/test_kernels_cuda_emu.py).

``build(arch)`` compiles ``w4a4_gemm.cu``, ``a8_gemm.cu``, ``w4a4_quant.cu`` and ``emu/cuda_emu.cpp`` with
``-DFC_HOST_EMULATION -DFC_EMU_ARCH=arch`` (800: the sm_80-89 int4 ``mma`` path, 900: the sm_90 int8 ``mma``
path) into a shared library, objects cached by the hash of source, headers and flags; ``source_dir`` builds a
patched copy (mutation tests). ``EmulatedKernels`` wraps the library. Stdlib + torch only; loaded by path (not a
package module).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading

import torch

CUDA_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("w4a4_gemm.cu", "a8_gemm.cu", "w4a4_quant.cu", "emu/cuda_emu.cpp")
ARCHS = (800, 900)
FLAGS = ("-std=c++17", "-O2", "-fPIC", "-ffp-contract=off", "-fno-strict-aliasing", "-Wall",
         "-Wno-unknown-pragmas", "-DFC_HOST_EMULATION")

# C ABI codes (w4a4_cuda.h)
OUT_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.int32: 3}
IN_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
# opt-in shared memory per block of the emulated device (cuda_emu.cpp), what the binding queries on a GPU
OPTIN_SMEM = {800: 163 * 1024, 900: 227 * 1024}


class EmulationError(RuntimeError):
    """A kernel returned an error code, or the emulation stopped a launch (message says why)."""


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def _cache_dir() -> str:
    root = os.environ.get("FAIR_CALIB_EMU_CACHE") or os.path.join(tempfile.gettempdir(),
                                                                    f"fair_calib_cuda_emu-{os.getuid()}")
    os.makedirs(root, exist_ok=True)
    return root


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the emulated kernels failed:\n{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")


_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def local_includes(source_dir: str, name: str) -> list[str]:
    """The headers (paths relative to ``source_dir``) that ``name`` includes with ``#include "..."``, directly or
    through other local headers, whatever the preprocessor conditions around them; sorted."""
    seen, todo = set(), [name]
    while todo:
        cur = todo.pop()
        with open(os.path.join(source_dir, cur)) as f:
            text = f.read()
        for inc in _INCLUDE.findall(text):
            for cand in (os.path.join(os.path.dirname(cur), inc), inc):  # next to the includer, then -I source_dir
                cand = os.path.normpath(cand)
                if os.path.isfile(os.path.join(source_dir, cand)):
                    if cand not in seen:
                        seen.add(cand)
                        todo.append(cand)
                    break
    return sorted(seen)


def build(arch: int, source_dir: str = CUDA_DIR) -> str:
    """Compile the emulated kernels for ``arch`` (800 or 900) from ``source_dir`` (a copy of kernels/cuda);
    returns the shared library's path. Objects are cached by the hash of the compiler, flags, source and the
    headers it includes (:func:`local_includes`), so a patched copy recompiles only the files that see the
    change.

    Raises ``ValueError`` for another arch, ``RuntimeError`` with the compiler output when g++ fails or is
    missing."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS} (the two mma paths), got {arch}")
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler: set CXX or put g++ on PATH")
    flags = (*FLAGS, f"-DFC_EMU_ARCH={arch}")
    common = hashlib.sha256(" ".join((cxx, *flags)).encode())
    cache = _cache_dir()
    objects = []
    for name in SOURCES:
        h = common.copy()
        for part in (*local_includes(source_dir, name), name):
            with open(os.path.join(source_dir, part), "rb") as f:
                h.update(part.encode() + b"\0" + f.read())
        obj = os.path.join(cache, f"{os.path.basename(name).replace('.', '_')}_sm{arch // 10}_{h.hexdigest()[:16]}.o")
        if not os.path.isfile(obj):
            tmp = f"{obj}.{os.getpid()}.{threading.get_ident()}.tmp"
            _run([cxx, *flags, "-c", "-I", source_dir, "-x", "c++", os.path.join(source_dir, name), "-o", tmp])
            os.replace(tmp, obj)
        objects.append(obj)
    key = hashlib.sha256("\0".join(objects).encode()).hexdigest()[:16]
    out = os.path.join(cache, f"fc_cuda_emu_sm{arch // 10}_{key}.so")
    if not os.path.isfile(out):
        tmp = f"{out}.{os.getpid()}.{threading.get_ident()}.tmp"
        _run([cxx, "-shared", *objects, "-o", tmp])
        os.replace(tmp, out)
    return out


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p | None:
    return None if t is None else ctypes.c_void_p(t.data_ptr())


# Every buffer handed to a kernel is followed by GUARD_BYTES of a known byte: inputs by POISON (as int4 codes
# 7 and -5, as fp32/bf16/fp16 a huge finite value), so a read past the end changes the result; outputs by
# CANARY, checked after the call, so a write past the end is an error.
GUARD_BYTES = 256
POISON, CANARY = 0x7B, 0xC3


def _guarded(t: torch.Tensor | None, fill: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(raw bytes incl. the guard, a view of ``t``'s shape and dtype holding a copy of ``t``)."""
    if t is None:
        return None, None
    t = t.contiguous()
    nbytes = t.numel() * t.element_size()
    raw = torch.full((nbytes + GUARD_BYTES,), fill, dtype=torch.uint8)
    view = raw[:nbytes].view(t.dtype).reshape(t.shape)
    view.copy_(t)
    return raw, view


def _empty_guarded(shape, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return _guarded(torch.zeros(shape, dtype=dtype), CANARY)


def _check_guard(raw: torch.Tensor | None, name: str) -> None:
    if raw is not None and not bool((raw[-GUARD_BYTES:] == CANARY).all()):
        raise EmulationError(f"the kernel wrote past the end of {name}")


class EmulatedKernels:
    """The C ABI of one emulated build, on CPU tensors (the emulation's "device memory" is host memory).

    Every buffer is followed by a guard (``GUARD_BYTES``): poison after inputs, a canary after outputs that
    must survive the call. Mirrors ``kernels/cuda_bindings.cpp``: packed widths padded with zero bytes to a
    multiple of 16, fp32 scales/bias/transform, the workspace the GEMM asks for, and the emulated device's
    opt-in shared memory for the fused-transform check. ``num_sms`` is the SM count the GEMM plans its grid for (split-K appears
    when there are fewer CTAs than SMs)."""

    def __init__(self, path: str):
        self.path = path
        lib = ctypes.CDLL(path)
        c = ctypes
        lib.fc_w4a4_gemm.restype = c.c_int
        lib.fc_w4a4_gemm.argtypes = [c.c_void_p, c.c_void_p, c.c_void_p, c.c_void_p, c.c_void_p, c.c_void_p, c.c_int,
                                     c.c_int64, c.c_int64, c.c_int64, c.c_void_p, c.c_int, c.c_void_p]
        lib.fc_w4a4_gemm_workspace_bytes.restype = c.c_size_t
        lib.fc_w4a4_gemm_workspace_bytes.argtypes = [c.c_int64, c.c_int64, c.c_int64, c.c_int, c.c_int]
        for name in ("fc_w4a8_gemm", "fc_w8a8_gemm"):
            getattr(lib, name).restype = c.c_int
            getattr(lib, name).argtypes = lib.fc_w4a4_gemm.argtypes
            getattr(lib, name + "_workspace_bytes").restype = c.c_size_t
            getattr(lib, name + "_workspace_bytes").argtypes = lib.fc_w4a4_gemm_workspace_bytes.argtypes
        for name in ("fc_quantize_act", "fc_quantize_act_int8"):
            getattr(lib, name).restype = c.c_int
            getattr(lib, name).argtypes = [c.c_void_p, c.c_int, c.c_int64, c.c_int64, c.c_void_p, c.c_void_p,
                                           c.c_int64, c.c_void_p, c.c_int64, c.c_void_p, c.c_void_p, c.c_void_p,
                                           c.c_void_p]
        lib.fc_quantize_act_fused_supported.restype = c.c_int
        lib.fc_quantize_act_fused_supported.argtypes = [c.c_int64, c.c_int64, c.c_int]
        lib.fc_cuda_error_string.restype = c.c_char_p
        lib.fc_cuda_error_string.argtypes = [c.c_int]
        lib.fc_emu_last_message.restype = c.c_char_p
        lib.fc_emu_set_schedule.argtypes = [c.c_int, c.c_ulonglong]
        lib.fc_emu_launch_info.argtypes = [c.c_int, c.c_char_p, c.c_int, c.POINTER(c.c_longlong)]
        lib.fc_emu_counters.argtypes = [c.POINTER(c.c_longlong)]
        self.lib = lib
        self.arch = lib.fc_emu_arch()

    # ------------------------------------------------------------------------------------------ controls
    def set_schedule(self, order: str, seed: int = 0) -> None:
        """Order in which a block's ready threads run (cuda_emu.cpp, fc_emu_set_schedule): ``forward`` /
        ``reverse`` (run-ahead: the lowest / highest ready thread first, warps run ahead of each other up
        to the next block barrier), ``round_robin`` (warps in lockstep) or ``shuffle`` (seeded sweeps)."""
        self.lib.fc_emu_set_schedule({"forward": 0, "reverse": 1, "round_robin": 2, "shuffle": 3}[order], seed)

    def launches(self) -> list[dict]:
        """Launches of the last ``gemm``/``quantize`` call (kernel as written at the launch site, grid, block,
        dynamic shared-memory bytes)."""
        out = []
        name = ctypes.create_string_buffer(256)
        dims = (ctypes.c_longlong * 7)()
        for i in range(self.lib.fc_emu_launch_count()):
            self.lib.fc_emu_launch_info(i, name, 256, dims)
            out.append({"kernel": name.value.decode(), "grid": tuple(dims[0:3]), "block": tuple(dims[3:6]),
                        "smem": dims[6]})
        return out

    def counters(self) -> dict:
        v = (ctypes.c_longlong * 2)()
        self.lib.fc_emu_counters(v)
        return {"switches": v[0], "warp_ops": v[1]}

    def check_layouts(self) -> int:
        return self.lib.fc_emu_check_layouts()

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            msg = self.lib.fc_cuda_error_string(rc).decode()
            raise EmulationError(f"{what} failed: {msg} ({rc}); emulation: {self.lib.fc_emu_last_message().decode()}")

    # ------------------------------------------------------------------------------------------- kernels
    @staticmethod
    def _padded(t: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
        """``t [rows, w ≤ width]`` copied into zeros ``[rows, width]`` (zero codes add nothing)."""
        if t.dtype != dtype or t.dim() != 2:
            raise ValueError(f"operands are 2-D {dtype}, got {t.dtype} with {t.dim()} dims")
        padded = torch.zeros(t.shape[0], width, dtype=dtype)
        padded[:, :t.shape[1]] = t
        return padded

    @classmethod
    def _aligned_packed(cls, t: torch.Tensor) -> torch.Tensor:
        kb = t.shape[1] if t.dim() == 2 else 0
        return cls._padded(t, 16 if kb == 0 else -(-kb // 16) * 16, torch.uint8)

    def _gemm(self, fn: str, xq, sx, wq, sw, bias, out_dtype, num_sms: int, k: int) -> torch.Tensor:
        """Calls ``fn`` (``fc_w4a4_gemm``: ``k`` = packed bytes, else codes) on padded, guarded operands."""
        (_, xq), (_, wq) = _guarded(xq, POISON), _guarded(wq, POISON)
        m, n = xq.shape[0], wq.shape[0]
        self.lib.fc_emu_clear_log()
        code = OUT_CODES[out_dtype]
        f32 = [_guarded(None if t is None else t.float().reshape(-1), POISON)[1] for t in (sx, sw, bias)]
        out_raw, out = _empty_guarded((m, n), out_dtype)
        ws_bytes = getattr(self.lib, fn + "_workspace_bytes")(m, n, k, num_sms, code)
        ws_raw, ws = _empty_guarded((ws_bytes // 4,), torch.int32) if ws_bytes else (None, None)
        rc = getattr(self.lib, fn)(_ptr(xq), _ptr(f32[0]), _ptr(wq), _ptr(f32[1]), _ptr(f32[2]), _ptr(out), code, m,
                                   n, k, _ptr(ws), num_sms, None)
        self._check(rc, fn)
        _check_guard(out_raw, "out")
        _check_guard(ws_raw, "the split-K workspace")
        return out.clone()

    def gemm(self, xq, sx, wq, sw, bias, out_dtype, num_sms: int) -> torch.Tensor:
        """``out [M, N]`` of ``fc_w4a4_gemm`` (packed ``uint8 [M, kb]`` × ``[N, kb]``): int32 accumulators for
        ``out_dtype=torch.int32``, else the fp32 epilogue ``(acc · sx[m]) · sw[n] (+ bias[n])`` cast to
        ``out_dtype``."""
        if xq.shape[1] != wq.shape[1]:
            raise ValueError(f"packed widths differ: {xq.shape[1]} vs {wq.shape[1]}")
        xq, wq = self._aligned_packed(xq), self._aligned_packed(wq)
        return self._gemm("fc_w4a4_gemm", xq, sx, wq, sw, bias, out_dtype, num_sms, xq.shape[1])

    def w4a8_gemm(self, xq, sx, wq, sw, bias, out_dtype, num_sms: int) -> torch.Tensor:
        """``fc_w4a8_gemm``: int8 activations ``xq [M, K]`` × packed int4 weights ``wq uint8 [N, ceil(K/2)]``,
        K zero-padded to a multiple of 32 like the binding; outputs as :meth:`gemm`."""
        k = xq.shape[1]
        if wq.shape[1] != (k + 1) // 2:
            raise ValueError(f"packed weight width {wq.shape[1]} does not match K = {k}")
        k32 = max(32, -(-k // 32) * 32)
        xq, wq = self._padded(xq, k32, torch.int8), self._padded(wq, k32 // 2, torch.uint8)
        return self._gemm("fc_w4a8_gemm", xq, sx, wq, sw, bias, out_dtype, num_sms, k32)

    def w8a8_gemm(self, xq, sx, wq, sw, bias, out_dtype, num_sms: int) -> torch.Tensor:
        """``fc_w8a8_gemm``: int8 ``xq [M, K]`` × int8 ``wq [N, K]``, K zero-padded to a multiple of 16 like the
        binding; outputs as :meth:`gemm`."""
        k = xq.shape[1]
        if wq.shape[1] != k:
            raise ValueError(f"widths differ: {k} vs {wq.shape[1]}")
        k16 = max(16, -(-k // 16) * 16)
        xq, wq = self._padded(xq, k16, torch.int8), self._padded(wq, k16, torch.int8)
        return self._gemm("fc_w8a8_gemm", xq, sx, wq, sw, bias, out_dtype, num_sms, k16)

    def _quantize(self, fn: str, out_shape, out_dtype, x, left, right, diag, clip):
        m, k = x.shape
        x = _guarded(x, POISON)[1]
        a = b = 0
        f32 = [_guarded(None if t is None else t.float(), POISON)[1] for t in (diag, left, right, clip)]
        if left is not None:
            a, b = left.shape[0], right.shape[0]
            if not self.lib.fc_quantize_act_fused_supported(a, b, OPTIN_SMEM[self.arch]):
                raise ValueError(f"factors {a} x {b}: the fused kernel does not handle them (the binding falls back "
                                 "to torch's transform)")
        codes_raw, codes = _empty_guarded(out_shape, out_dtype)
        scale_raw, scale = _empty_guarded((m,), torch.float32)
        self.lib.fc_emu_clear_log()
        rc = getattr(self.lib, fn)(_ptr(x), IN_CODES[x.dtype], m, k, _ptr(f32[0]), _ptr(f32[1]), a, _ptr(f32[2]), b,
                                   _ptr(f32[3]), _ptr(codes), _ptr(scale), None)
        self._check(rc, fn)
        _check_guard(codes_raw, "codes")
        _check_guard(scale_raw, "scale")
        return codes.clone(), scale.clone()

    def quantize(self, x, left=None, right=None, diag=None, clip=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(packed uint8 [M, ceil(K/2)], scale fp32 [M])`` of ``fc_quantize_act`` (fused transform when
        ``left``/``right`` are given; the emulated device must support it, else ``ValueError``)."""
        m, k = x.shape
        return self._quantize("fc_quantize_act", (m, (k + 1) // 2), torch.uint8, x, left, right, diag, clip)

    def quantize_int8(self, x, left=None, right=None, diag=None, clip=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codes int8 [M, K], scale fp32 [M])`` of ``fc_quantize_act_int8`` (as :meth:`quantize`)."""
        return self._quantize("fc_quantize_act_int8", tuple(x.shape), torch.int8, x, left, right, diag, clip)
