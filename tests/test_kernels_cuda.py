"""CUDA kernels: W4A4, W4A8 and W8A8 GEMMs, int4 and int8 activation quantization.

(a) Build checks that need no GPU: the ``.cu`` sources compile with nvcc, called directly (no torch), for
    sm_80, sm_86, sm_89 and sm_90; the generated PTX of the W4A4 GEMM uses int4 ``mma`` on sm_80 and only
    int8 ``mma`` on sm_90, the W4A8/W8A8 GEMMs only int8 ``mma`` everywhere; the ``.cu`` files include no torch
    headers; the C ABI header is valid C; the toolkit lookup resolves an ``nvcc`` wrapper script to the real
    toolkit root. Skipped, with the reason, when no nvcc is found.
(b) Exactness against the reference ops on a GPU: skipped when ``torch.cuda.is_available()`` is false.
    With a GPU and FAIR_CALIB_REQUIRE_EXT=1, an extension built without its CUDA kernels is an error.
"""
import importlib.util
import os
import re
import shutil
import subprocess

import pytest
import torch

from fair_calib_hf import W4A4Linear, ops
from fair_calib_hf.ops import cuda, reference
from fair_calib_hf.ops.exactness import assert_quantize_act_close
from fair_calib_hf.packing import pack_int4

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_DIR = os.path.join(ROOT, "kernels", "cuda")
CU_FILES = sorted(f for f in os.listdir(CUDA_DIR) if f.endswith(".cu"))

_spec = importlib.util.spec_from_file_location("_fair_calib_toolkit", os.path.join(ROOT, "kernels", "toolkit.py"))
toolkit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toolkit)

NVCC = toolkit.nvcc_path()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="no CUDA toolkit found (nvcc not on PATH, CUDA_HOME unset)")


def _nvcc(args, timeout=600):
    out = subprocess.run([NVCC, "-std=c++17", "-O3", *args], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"nvcc {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out


# ------------------------------------------------------------------------------------------------- (a)
def test_sources_exist():
    assert CU_FILES == ["a8_gemm.cu", "w4a4_gemm.cu", "w4a4_quant.cu"]


@pytest.mark.parametrize("name", CU_FILES)
def test_cu_sources_include_no_torch_headers(name):
    with open(os.path.join(CUDA_DIR, name)) as f:
        includes = re.findall(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', f.read(), re.M)
    assert includes and not [h for h in includes if h.startswith(("torch", "ATen", "c10"))], includes


@needs_nvcc
@pytest.mark.parametrize("arch", toolkit.ARCHS)
@pytest.mark.parametrize("name", CU_FILES)
def test_cu_compiles_with_nvcc(name, arch, tmp_path):
    obj = tmp_path / f"{name}.sm{arch}.o"
    _nvcc(["--threads", "2", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-c", os.path.join(CUDA_DIR, name),
           "-o", str(obj)])
    assert obj.stat().st_size > 0


@needs_nvcc
@pytest.mark.parametrize("name,arch,present,absent", [
    ("w4a4_gemm.cu", "80", "m16n8k64.row.col.s32.s4.s4.s32", "s8.s8"),
    ("w4a4_gemm.cu", "90", "m16n8k32.row.col.s32.s8.s8.s32", ".s4.s4"),
    ("a8_gemm.cu", "80", "m16n8k32.row.col.s32.s8.s8.s32", ".s4.s4"),
])
def test_gemm_uses_int4_mma_before_hopper_and_int8_mma_on_hopper(name, arch, present, absent, tmp_path):
    """W4A4: int4 mma on sm_80, int8 on sm_90; W4A8/W8A8: int8 mma (activations are 8-bit) on sm_80 too."""
    ptx = tmp_path / f"gemm{arch}.ptx"
    _nvcc([f"-gencode=arch=compute_{arch},code=compute_{arch}", "-ptx", os.path.join(CUDA_DIR, name),
           "-o", str(ptx)])
    text = ptx.read_text()
    assert f"mma.sync.aligned.{present}" in text
    assert not re.search(r"mma\.sync\S*" + re.escape(absent), text)


@needs_nvcc
@pytest.mark.skipif(shutil.which("cuobjdump") is None or shutil.which("nvdisasm") is None,
                    reason="cuobjdump/nvdisasm not on PATH (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
@pytest.mark.parametrize("arch", toolkit.ARCHS)
@pytest.mark.parametrize("name,precisions", [("w4a4_gemm.cu", 1), ("a8_gemm.cu", 2)])
def test_gemm_sass(arch, name, precisions, tmp_path):
    """W4A4: native IMMA.16864.S4 on sm_80/86/89; on sm_90 only IMMA.16832.S8 and no call into an s4 emulation
    routine (what `mma ... s4` compiles to on Hopper) inside the GEMM kernels. W4A8/W8A8: only IMMA.16832.S8 on
    every arch. No spills anywhere."""
    obj = tmp_path / f"gemm{arch}.o"
    _nvcc([f"-gencode=arch=compute_{arch},code=sm_{arch}", "-c", os.path.join(CUDA_DIR, name), "-o", str(obj)])
    sass = subprocess.run(["cuobjdump", "-sass", str(obj)], capture_output=True, text=True, check=True).stdout
    functions = re.split(r"\n\s*Function : ", sass)[1:]
    gemm = [f for f in functions if "gemm_tiled" in f.split("\n", 1)[0] or "gemm_small_m" in f.split("\n", 1)[0]]
    assert len(gemm) == precisions * 3 * 4  # precisions x (tiled 2x2, tiled 4x2, small-M) x 4 output types
    for body in gemm:
        assert not re.search(r"\b(STL|LDL)\b", body)  # no register spills to local memory
        if arch == "90" or name == "a8_gemm.cu":
            assert "IMMA.16832.S8.S8" in body and "IMMA.16864" not in body and not _subroutine_calls(body)
        else:
            assert "IMMA.16864.S4.S4" in body


def _subroutine_calls(sass: str) -> list[str]:
    """The ``CALL`` instructions of a SASS listing other than ptxas's loop exit ``@P CALL.REL.NOINC`` over the
    loop's back branch (``@P CALL.REL.NOINC L; BRA top; L:``): calls into a subroutine, e.g. an s4 ``mma``
    emulation routine."""
    code = dict(re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass))
    calls = []
    for addr, ins in code.items():
        m = re.search(r"\bCALL\S*\s+(\S+)", ins)
        if not m:
            continue
        a = int(addr, 16)
        nxt = code.get(f"{a + 0x10:04x}", "")
        if not (m.group(1) == hex(a + 0x20) and re.match(r"\s*BRA\b", nxt)):
            calls.append(f"{addr}: {ins.strip()}")
    return calls


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) on PATH")
def test_c_abi_header_is_plain_c(tmp_path):
    src = tmp_path / "abi.c"
    src.write_text('#include "cuda/w4a4_cuda.h"\nint main(void) { return FC_OUT_I32 + FC_IN_F16; }\n')
    out = subprocess.run(["cc", "-std=c99", "-Wall", "-Werror", "-fsyntax-only", "-I", os.path.join(ROOT, "kernels"),
                          str(src)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_toolkit_resolves_an_nvcc_wrapper_script(tmp_path, monkeypatch):
    real = tmp_path / "opt" / "cuda-99.1"
    (real / "bin").mkdir(parents=True)
    (real / "include").mkdir()
    (real / "bin" / "nvcc").write_text("#!/bin/sh\nexit 0\n")
    (real / "bin" / "nvcc").chmod(0o755)
    (real / "include" / "cuda_runtime.h").write_text("")
    wrapper_dir = tmp_path / "usr" / "bin"
    wrapper_dir.mkdir(parents=True)
    (wrapper_dir / "nvcc").write_text(f'#!/bin/sh\nexec {real}/bin/nvcc "$@"\n')
    (wrapper_dir / "nvcc").chmod(0o755)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(wrapper_dir))
    assert toolkit.find_cuda_home() == str(real)
    # CUDA_HOME pointing at the wrapper's parent (what torch would infer) is corrected too
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "usr"))
    assert toolkit.find_cuda_home() == str(real)
    # a symlinked nvcc
    (wrapper_dir / "nvcc").unlink()
    (wrapper_dir / "nvcc").symlink_to(real / "bin" / "nvcc")
    monkeypatch.delenv("CUDA_HOME")
    assert toolkit.find_cuda_home() == str(real)


@needs_nvcc
def test_toolkit_root_is_the_real_one():
    home = toolkit.find_cuda_home()
    assert os.path.isfile(os.path.join(home, "include", "cuda_runtime.h"))
    assert os.path.isdir(os.path.join(home, "lib64")) or os.path.isdir(os.path.join(home, "lib"))


# ------------------------------------------------------------------------------------------------- (b)
HAS_GPU = torch.cuda.is_available()
if HAS_GPU and not cuda.BUILT and os.environ.get("FAIR_CALIB_REQUIRE_EXT") == "1":
    raise RuntimeError("FAIR_CALIB_REQUIRE_EXT=1, a GPU is visible, but fair_calib_hf._C has no CUDA kernels")
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="torch.cuda.is_available() is false (no GPU)")
_NO_KERNELS_REASON = ("torch.cuda.is_available() is false (no GPU)" if not HAS_GPU else
                      "fair_calib_hf._C was built without CUDA kernels" if not cuda.BUILT else
                      "FAIR_CALIB_BACKEND=reference" if not cuda.ENABLED else "GPU below compute capability 8.0")
needs_kernels = pytest.mark.skipif(not (HAS_GPU and cuda.device_supported()), reason=_NO_KERNELS_REASON)

# (M, N, K): small-M kernel (M <= 16), tiled 64-row and 128-row kernels, with and without split-K, ragged M
# and N, K with tails (odd, not a multiple of 32 so the binding pads) and the real widths.
GEMM_SHAPES = [(1, 1, 1), (1, 7, 64), (3, 5, 7), (16, 130, 200), (8, 4096, 4096), (1, 3584, 18944),
               (17, 9, 64), (33, 130, 257), (64, 256, 4096), (65, 300, 1000), (129, 77, 4096), (257, 1030, 4096),
               (300, 4096, 14336), (2048, 512, 3584), (5, 33, 257), (12, 18, 4226)]


def _codes(shape, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-8, 8, shape, generator=g, dtype=torch.int8).to(device)


@needs_kernels
@pytest.mark.parametrize("m,n,k", GEMM_SHAPES)
def test_cuda_int32_accumulators_identical(m, n, k):
    xp, wp = pack_int4(_codes((m, k), k)), pack_int4(_codes((n, k), k + 1))
    got = cuda.int4_matmul_int32(xp.cuda(), wp.cuda()).cpu()
    assert torch.equal(got, reference.int4_matmul_int32(xp, wp, k))


@needs_kernels
@pytest.mark.parametrize("m", [1, 16, 64, 200])
@pytest.mark.parametrize("value", [-8, 7])
def test_cuda_extreme_tiles(m, value):
    k = 18944
    x = torch.full((m, k), value, dtype=torch.int8)
    w = torch.full((40, k), -8, dtype=torch.int8)
    w[1::2] = 7
    got = cuda.int4_matmul_int32(pack_int4(x).cuda(), pack_int4(w).cuda()).cpu()
    assert torch.equal(got, reference.int4_matmul_int32(pack_int4(x), pack_int4(w), k))
    assert int(got[0, 0]) == value * -8 * k


def _epilogue_operands(g, m, n, dtype, with_bias):
    """The GEMM epilogue's operands drawn from ``g``: scales sx [m] and sw [n, 1] (positive), a bias [n] in ``dtype``
    or None."""
    sx, sw = torch.rand(m, generator=g) + 1e-3, torch.rand(n, 1, generator=g) + 1e-3
    bias = torch.randn(n, generator=g).to(dtype) if with_bias else None
    return sx, sw, bias


def _on_cuda(*tensors):
    return [t.cuda() if t is not None else None for t in tensors]


def _assert_identical_on_cuda(got, ref, dtype):
    assert got.is_cuda and got.dtype == dtype
    assert torch.equal(got.cpu(), ref)


def _identity_inputs(m, k, dtype):
    """x [m, k] over a wide range in ``dtype`` with a zero first row (scale 1), and a diagonal near 1."""
    g = torch.Generator().manual_seed(m * k)
    x = (torch.randn(m, k, generator=g) * torch.logspace(-2, 2, k)[None]).to(dtype)
    x[0] = 0.0  # zero row: scale 1
    return x, torch.rand(k, generator=g) + 0.5


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("m,n,k", [(1, 7, 64), (16, 4096, 4096), (33, 130, 200), (100, 1000, 4096),
                                   (300, 257, 512)])
def test_cuda_gemm_output_identical(dtype, with_bias, m, n, k):
    g = torch.Generator().manual_seed(m + n + k)
    xp, wp = pack_int4(_codes((m, k), 1)), pack_int4(_codes((n, k), 2))
    sx, sw, bias = _epilogue_operands(g, m, n, dtype, with_bias)
    ref = reference.w4a4_gemm_reference(xp, sx, wp, sw, bias, k, dtype)
    dev = _on_cuda(xp, sx, wp, sw, bias)
    got = ops.w4a4_gemm(*dev, k, dtype)
    _assert_identical_on_cuda(got, ref, dtype)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,k", [(1, 1), (5, 13), (64, 96), (7, 4097), (300, 4096), (3, 18944)])
def test_cuda_quantize_identity_identical(dtype, m, k):
    x, diag = _identity_inputs(m, k, dtype)
    clip = torch.tensor(0.93)
    for d in (None, diag):
        ref = reference.quantize_act_reference(x, None, None, d, clip)
        got = ops.quantize_act_int4(x.cuda(), None, None, None if d is None else d.cuda(), clip.cuda())
        assert torch.equal(got[0].cpu(), ref[0]) and torch.equal(got[1].cpu(), ref[1])
    got = ops.quantize_act_int4(x.cuda(), None, None, None, None)
    ref = reference.quantize_act_reference(x, None, None, None, None)
    assert torch.equal(got[0].cpu(), ref[0]) and torch.equal(got[1].cpu(), ref[1])


@needs_kernels
@pytest.mark.parametrize("a,b,m", [(8, 8, 5), (64, 64, 33), (96, 128, 17), (128, 148, 9), (112, 128, 4), (2, 300, 6)])
def test_cuda_quantize_with_transform(a, b, m):
    """The fused transform sums in another order than torch's matmul: it meets the reference within the
    tolerance stated in ops/reference.py (one check for every backend: ops.exactness). Factors above 256 use
    the reference's torch transform on the same device, so that path is bit-identical."""
    k = a * b
    g = torch.Generator().manual_seed(k + m)
    x = (torch.randn(m, k, generator=g) * torch.logspace(-1, 1, k)[None]).cuda()
    left, right = torch.randn(a, a, generator=g).cuda() / a ** 0.5, torch.randn(b, b, generator=g).cuda() / b ** 0.5
    diag = (torch.rand(k, generator=g) + 0.5).cuda()
    clip = torch.tensor(0.9).cuda()
    got_p, got_s = ops.quantize_act_int4(x, left, right, diag, clip)
    if max(a, b) > 256:
        ref_p, ref_s = reference.quantize_act_reference(x, left, right, diag, clip)
        assert torch.equal(got_p, ref_p) and torch.equal(got_s, ref_s)
        return
    assert_quantize_act_close((got_p, got_s), x, left, right, diag, clip)


@needs_kernels
def test_cuda_packed_linear_matches_reference():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4096, 512, bias=True)
    q = W4A4Linear.from_linear(lin, input_clip=0.9)
    x = torch.randn(3, 11, 4096)
    xp, sx = reference.quantize_act_reference(x.reshape(-1, 4096), None, None, None, q.input_clip)
    ref = reference.w4a4_gemm_reference(xp, sx, q.weight_packed, q.weight_scale, q.bias, 4096, x.dtype)
    qc = q.cuda()
    assert torch.equal(qc(x.cuda()).reshape(-1, 512).cpu(), ref)
    assert ops.active_backend("cuda") in ("cuda-int4-mma", "cuda-int8-mma")


@needs_kernels
@pytest.mark.parametrize("m", [1, 16])
def test_cuda_graph_capture_small_m(m):
    """The benchmark captures quant + GEMM in a CUDA graph for M <= 16: no host syncs or allocations that
    break capture, and the replay gives the eager result."""
    k, n = 4096, 4096
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    wp, ws = pack_int4(_codes((n, k), 3)).cuda(), (torch.rand(n, 1) + 0.01).cuda()

    def layer():
        p, s = ops.quantize_act_int4(x, None, None, None, None)
        return ops.w4a4_gemm(p, s, wp, ws, None, k, torch.bfloat16)

    eager = layer()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        layer()  # warm-up on the side stream (allocator pools, function attributes)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = layer()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)


# --- 8-bit activations (W4A8, W8A8): the same shapes and checks
A8_WBITS = {"w4a8": 4, "w8a8": 8}


def _a8_operands(precision, m, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    lim = 1 << (A8_WBITS[precision] - 1)
    w = torch.randint(-lim, lim, (n, k), generator=g, dtype=torch.int8)
    return x, w, (pack_int4(w) if precision == "w4a8" else w)


@needs_kernels
@pytest.mark.parametrize("precision", list(A8_WBITS))
@pytest.mark.parametrize("m,n,k", GEMM_SHAPES)
def test_cuda_a8_int32_accumulators_identical(precision, m, n, k):
    x, w, stored = _a8_operands(precision, m, n, k, k)
    got = cuda.a8_matmul_int32(x.cuda(), stored.cuda(), A8_WBITS[precision]).cpu()
    assert torch.equal(got, reference.int_matmul_int32(x, w, 8, A8_WBITS[precision]))


@needs_kernels
@pytest.mark.parametrize("m", [1, 16, 64, 200])
@pytest.mark.parametrize("precision,xv,wv", [("w4a8", -128, -8), ("w4a8", 127, 7), ("w8a8", -128, -128),
                                             ("w8a8", 127, -128)])
def test_cuda_a8_extreme_tiles(m, precision, xv, wv):
    k = 18944 if precision == "w4a8" else 4096
    x = torch.full((m, k), xv, dtype=torch.int8)
    w = torch.full((40, k), wv, dtype=torch.int8)
    w[1::2] = 7 if precision == "w4a8" else 127
    stored = pack_int4(w) if precision == "w4a8" else w
    got = cuda.a8_matmul_int32(x.cuda(), stored.cuda(), A8_WBITS[precision]).cpu()
    assert torch.equal(got, reference.int_matmul_int32(x, w, 8, A8_WBITS[precision]))
    assert int(got[0, 0]) == xv * wv * k


@needs_kernels
@pytest.mark.parametrize("precision", list(A8_WBITS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("m,n,k", [(1, 7, 64), (16, 4096, 4096), (33, 130, 200), (100, 1000, 4096),
                                   (300, 257, 512)])
def test_cuda_a8_gemm_output_identical(precision, dtype, with_bias, m, n, k):
    g = torch.Generator().manual_seed(m + n + k)
    x, _, stored = _a8_operands(precision, m, n, k, 1)
    sx, sw, bias = _epilogue_operands(g, m, n, dtype, with_bias)
    dev = _on_cuda(x, sx, stored, sw, bias)
    if precision == "w4a8":
        ref = reference.w4a8_gemm_reference(x, sx, stored, sw, bias, k, dtype)
        got = ops.w4a8_gemm(*dev, k, dtype)
    else:
        ref = reference.w8a8_gemm_reference(x, sx, stored, sw, bias, dtype)
        got = ops.w8a8_gemm(*dev, dtype)
    _assert_identical_on_cuda(got, ref, dtype)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,k", [(1, 1), (5, 13), (64, 96), (7, 4097), (300, 4096), (3, 18944)])
def test_cuda_quantize_int8_identity_identical(dtype, m, k):
    x, diag = _identity_inputs(m, k, dtype)
    for d, c in ((None, None), (None, torch.tensor(0.93)), (diag, torch.tensor(0.93))):
        ref = reference.quantize_act_int8_reference(x, None, None, d, c)
        got = ops.quantize_act_int8(x.cuda(), None, None, None if d is None else d.cuda(),
                                    None if c is None else c.cuda())
        assert got[0].dtype == torch.int8 and torch.equal(got[0].cpu(), ref[0]) and torch.equal(got[1].cpu(), ref[1])


@needs_kernels
@pytest.mark.parametrize("a,b,m", [(8, 8, 5), (64, 64, 33), (96, 128, 17), (2, 300, 6)])
def test_cuda_quantize_int8_with_transform(a, b, m):
    """Scales within 1e-5, codes within one step where x̃/s sits on a rounding tie (factors above 256: the
    reference's torch transform, bit-identical)."""
    k = a * b
    g = torch.Generator().manual_seed(k + m)
    x = (torch.randn(m, k, generator=g) * torch.logspace(-1, 1, k)[None]).cuda()
    left, right = torch.randn(a, a, generator=g).cuda() / a ** 0.5, torch.randn(b, b, generator=g).cuda() / b ** 0.5
    diag, clip = (torch.rand(k, generator=g) + 0.5).cuda(), torch.tensor(0.9).cuda()
    codes, scale = ops.quantize_act_int8(x, left, right, diag, clip)
    ref_codes, ref_scale = reference.quantize_act_int8_reference(x, left, right, diag, clip)
    if max(a, b) > 256:
        assert torch.equal(codes, ref_codes) and torch.equal(scale, ref_scale)
        return
    assert float(((scale - ref_scale).abs() / ref_scale).max()) <= 1e-5
    diff = (codes.int() - ref_codes.int()).abs()
    assert int(diff.max()) <= 1 and int((diff > 0).sum()) <= max(1, diff.numel() // 1000)


@needs_kernels
@pytest.mark.parametrize("cls_name", ["W4A8Linear", "W8A8Linear"])
def test_cuda_a8_linear_matches_reference(cls_name):
    from fair_calib_hf import modules

    torch.manual_seed(0)
    lin = torch.nn.Linear(4096, 512, bias=True)
    q = getattr(modules, cls_name).from_linear(lin, input_clip=0.9)
    x = torch.randn(3, 11, 4096)
    xq, sx = reference.quantize_act_int8_reference(x.reshape(-1, 4096), None, None, None, q.input_clip)
    if cls_name == "W4A8Linear":
        ref = reference.w4a8_gemm_reference(xq, sx, q.weight_packed, q.weight_scale, q.bias, 4096, x.dtype)
    else:
        ref = reference.w8a8_gemm_reference(xq, sx, q.weight_int8, q.weight_scale, q.bias, x.dtype)
    assert torch.equal(q.cuda()(x.cuda()).reshape(-1, 512).cpu(), ref)


@needs_kernels
@pytest.mark.parametrize("precision", list(A8_WBITS))
def test_cuda_a8_graph_capture_small_m(precision):
    """The benchmark captures int8 quant + GEMM in a CUDA graph for M <= 16."""
    m, k, n = 4, 4096, 4096
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    _, _, stored = _a8_operands(precision, 1, n, k, 3)
    stored, ws = stored.cuda(), (torch.rand(n, 1) + 0.01).cuda()

    def layer():
        q, s = ops.quantize_act_int8(x, None, None, None, None)
        if precision == "w4a8":
            return ops.w4a8_gemm(q, s, stored, ws, None, k, torch.bfloat16)
        return ops.w8a8_gemm(q, s, stored, ws, None, torch.bfloat16)

    eager = layer()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        layer()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = layer()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)


@needs_gpu
def test_cuda_backend_is_named():
    name = ops.active_backend("cuda")
    if cuda.device_supported():
        major = torch.cuda.get_device_capability()[0]
        assert name == ("cuda-int8-mma" if major >= 9 else "cuda-int4-mma")
    else:
        assert name == "reference"


def test_cuda_module_without_gpu_is_reference():
    if not HAS_GPU:
        assert ops.active_backend("cuda") == "reference"
        assert not cuda.device_supported()
    assert cuda.BUILT == bool(getattr(cuda._C, "with_cuda", False))
    if cuda.BUILT:  # CUDA kernels can only have been built against a CUDA build of torch
        assert torch.version.cuda is not None

