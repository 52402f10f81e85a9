"""GPU check of the CUDA kernels (W4A4, W4A8, W8A8), one command on a machine with an NVIDIA GPU:

    python -m fair_calib_hf.bench gpu [--out gpu_check]

1. **Build** the extension in the source checkout on that machine (``python setup.py build_ext --inplace``,
   ``MAX_JOBS`` = CPU count; log in ``OUT/build.log``). An extension built elsewhere does not load against
   another torch. ``--no-build`` skips this.
2. **Exactness** against the reference ops (random inputs, never zeros, plus all-extreme tiles), for W4A4 and
   for the 8-bit-activation ops (W4A8, W8A8, int8 quantization): identical int32 accumulators over ragged M
   (1…257), ragged N and K ∈ {64, 4096, 14336, 18944} plus odd K; identical outputs in fp32/bf16/fp16 with
   and without bias; identical quantization codes and scales without a transform; with a Kronecker
   transform, scales within 1e-5 and codes within one step (rounding ties).
3. **Timing** against torch bf16 ``F.linear`` in the same process, interleaved per shape: CUDA events,
   warm-up, median; weight copies rotated so their total exceeds twice the L2 cache (every call reads its
   weight from HBM); for M ≤ 16 the rotated calls are captured in a CUDA graph and the graph is replayed
   (launch overhead would otherwise dominate). W4A4 columns: bf16, activation quantization alone, GEMM alone,
   quant+GEMM, quant (with a Kronecker transform) + GEMM, the ratios bf16 / W4A4, and the achieved int4 TOPS.
   8-bit-activation columns (``--precisions`` w4a8 / w8a8): int8 quantization alone, W4A8 and W8A8 GEMM alone
   and quant+GEMM with their ratios bf16 / total, and W8A8 through PyTorch's ``torch._int_mm`` (cuBLASLt,
   where its shape rules allow: M > 16, K and N multiples of 8) plus the reference epilogue, the alternative
   to the project's W8A8 kernel. Prints Markdown tables and writes ``OUT/gpu_check.json`` and
   ``OUT/gpu_check.md``. The default shapes include the LLaDA-8B (4096 / 12288) and Dream-7B (3584 / 18944)
   layers at M = 1, 16, 64, 256, 1024, 2048.

Exit status: 0 when every exactness check passed (the timing never fails the run), 1 otherwise. Without a
visible GPU it stops before building (the host emulation, ``pytest tests/test_kernels_cuda_emu.py``, runs
the kernels without one). The wall time of each phase (build, exactness, timing) is printed and stored in
the JSON: the whole run is meant to fit in 8 minutes on an H100/H200, build included (the W4A4 timing alone; the
8-bit precisions roughly double it: trim with ``--precisions``, ``--shapes``, ``--m`` or ``--iters``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

SHAPES = {  # name: (N, K) of y[M, N] = x[M, K] · W[N, K]ᵀ
    "4096x4096": (4096, 4096),
    "14336x4096": (14336, 4096),
    "4096x14336": (4096, 14336),
    "llada-12288x4096": (12288, 4096),
    "llada-4096x12288": (4096, 12288),
    "dream-18944x3584": (18944, 3584),
    "dream-3584x18944": (3584, 18944),
}
MS = (1, 16, 64, 256, 1024, 2048)
PRECISIONS = ("w4a4", "w4a8", "w8a8")


def _source_root() -> str:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.isfile(os.path.join(root, "setup.py")) or not os.path.isdir(os.path.join(root, "kernels")):
        raise SystemExit("fair_calib_hf.bench gpu builds the extension from a source checkout; run it from one "
                         "(pip install -e . or PYTHONPATH=<checkout>)")
    return root


BUDGET_S = 480  # the run is sized for a 15-minute GPU loan: 8 minutes including the build
BUILD_TIME_ENV = "FAIR_CALIB_GPU_BUILD_S"  # build seconds, handed from the building process to the checking one


def build(out_dir: str) -> float:
    """Build the extension in the source checkout; returns the wall seconds."""
    root = _source_root()
    log_path = os.path.join(out_dir, "build.log")
    env = dict(os.environ, MAX_JOBS=os.environ.get("MAX_JOBS", str(os.cpu_count() or 4)), PYTHONUNBUFFERED="1")
    print(f"[build] {sys.executable} setup.py build_ext --inplace  (in {root}, log {log_path})", flush=True)
    start = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=root, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            if line.startswith("fair_calib_hf:") or "error" in line.lower():
                print("  " + line.rstrip(), flush=True)
        rc = proc.wait()
    seconds = time.time() - start
    print(f"[build] exit {rc} after {seconds:.0f} s", flush=True)
    if rc != 0:
        raise SystemExit(f"build failed, see {log_path}")
    return seconds


# --------------------------------------------------------------------------------------------- exactness
def check_exactness(torch, ops, cuda, reference, pack_int4, unpack_int4, precisions=PRECISIONS) -> list[dict]:
    dev = "cuda"
    g = torch.Generator().manual_seed(0)
    results = []

    def record(name, ok, detail=""):
        results.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"  [{'ok' if ok else 'FAIL'}] {name} {detail}", flush=True)

    def codes(shape):
        return torch.randint(-8, 8, shape, generator=g, dtype=torch.int8)

    for k in (64, 257, 4096, 14336, 18944):
        for m, n in ((1, 4096), (7, 130), (16, 1000), (17, 77), (64, 4096), (100, 300), (257, 1030)):
            xp, wp = pack_int4(codes((m, k))).to(dev), pack_int4(codes((n, k))).to(dev)
            ref = reference.int4_matmul_int32(xp, wp, k)  # fp32 GEMMs over exact chunks (no TF32)
            got = cuda.int4_matmul_int32(xp, wp)
            record(f"int32 acc M={m} N={n} K={k}", torch.equal(got, ref))
    for value in (-8, 7):
        k = 18944
        x = torch.full((33, k), value, dtype=torch.int8)
        w = torch.full((24, k), -8, dtype=torch.int8)
        w[1::2] = 7
        xp, wp = pack_int4(x).to(dev), pack_int4(w).to(dev)
        got = cuda.int4_matmul_int32(xp, wp)
        record(f"extreme tile {value}x(-8|7) K={k}",
               torch.equal(got, reference.int4_matmul_int32(xp, wp, k)) and int(got[0, 0]) == -8 * value * k)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for m, n, k in ((1, 4096, 4096), (16, 3584, 18944), (64, 1000, 4096), (300, 4096, 14336)):
            xp, wp = pack_int4(codes((m, k))).to(dev), pack_int4(codes((n, k))).to(dev)
            sx, sw = (torch.rand(m, generator=g) + 1e-3).to(dev), (torch.rand(n, 1, generator=g) + 1e-3).to(dev)
            bias = torch.randn(n, generator=g).to(dtype).to(dev)
            for b in (None, bias):
                got = ops.w4a4_gemm(xp, sx, wp, sw, b, k, dtype)
                ref = reference.w4a4_gemm_reference(xp.cpu(), sx.cpu(), wp.cpu(), sw.cpu(),
                                                    None if b is None else b.cpu(), k, dtype)
                record(f"gemm {str(dtype)[6:]} bias={b is not None} M={m} N={n} K={k}", torch.equal(got.cpu(), ref))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for m, k in ((1, 4096), (33, 4097), (256, 18944)):
            x = (torch.randn(m, k, generator=g) * torch.logspace(-2, 2, k)[None]).to(dtype)
            diag, clip = torch.rand(k, generator=g) + 0.5, torch.tensor(0.93)
            got = ops.quantize_act_int4(x.to(dev), None, None, diag.to(dev), clip.to(dev))
            ref = reference.quantize_act_reference(x, None, None, diag, clip)
            record(f"quant identity {str(dtype)[6:]} M={m} K={k}",
                   torch.equal(got[0].cpu(), ref[0]) and torch.equal(got[1].cpu(), ref[1]))
    for a, b in ((64, 64), (128, 148), (96, 128), (64, 224)):
        m, k = 64, a * b
        x = (torch.randn(m, k, generator=g) * torch.logspace(-1, 1, k)[None]).to(dev, torch.bfloat16)
        left = (torch.randn(a, a, generator=g) / a ** 0.5).to(dev)
        right = (torch.randn(b, b, generator=g) / b ** 0.5).to(dev)
        diag, clip = (torch.rand(k, generator=g) + 0.5).to(dev), torch.tensor(0.9).to(dev)
        gp, gs = ops.quantize_act_int4(x, left, right, diag, clip)
        rp, rs = reference.quantize_act_reference(x, left, right, diag, clip)
        diff = (unpack_int4(gp, k).int() - unpack_int4(rp, k).int()).abs()
        rel = float(((gs - rs).abs() / rs).max())
        ok = rel <= 1e-5 and int(diff.max()) <= 1 and int((diff > 0).sum()) <= max(1, diff.numel() // 1000)
        record(f"quant kron {a}x{b} M={m}", ok, f"(scale rel err {rel:.1e}, codes off by one: {int((diff > 0).sum())})")
    a8 = [p for p in precisions if p != "w4a4"]
    if a8:
        check_exactness_a8(torch, ops, cuda, reference, pack_int4, record, g, a8)
    return results


def check_exactness_a8(torch, ops, cuda, reference, pack_int4, record, g, precisions) -> None:
    """The checks of :func:`check_exactness` for ``precisions`` (``"w4a8"``, ``"w8a8"``) and the int8 quantizer,
    each reported through ``record(name, ok, detail)``; ``g`` the CPU generator of the inputs."""
    dev = "cuda"
    w_bits = {"w4a8": 4, "w8a8": 8}

    def operands(precision, m, n, k):
        x = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
        lim = 1 << (w_bits[precision] - 1)
        w = torch.randint(-lim, lim, (n, k), generator=g, dtype=torch.int8)
        return x, w, (pack_int4(w) if precision == "w4a8" else w)

    for precision in precisions:
        for k in (64, 257, 4096, 14336, 18944):
            for m, n in ((1, 4096), (7, 130), (16, 1000), (17, 77), (64, 4096), (100, 300), (257, 1030)):
                x, w, stored = operands(precision, m, n, k)
                got = cuda.a8_matmul_int32(x.to(dev), stored.to(dev), w_bits[precision]).cpu()
                ref = reference.int_matmul_int32(x, w, 8, w_bits[precision])
                record(f"{precision} int32 acc M={m} N={n} K={k}", torch.equal(got, ref))
        top = 7 if precision == "w4a8" else 127
        for xv, wv in ((-128, -(top + 1)), (127, top)):
            k = 18944 if precision == "w4a8" else 8192
            x = torch.full((33, k), xv, dtype=torch.int8)
            w = torch.full((24, k), wv, dtype=torch.int8)
            w[1::2] = -(top + 1)
            stored = pack_int4(w) if precision == "w4a8" else w
            got = cuda.a8_matmul_int32(x.to(dev), stored.to(dev), w_bits[precision]).cpu()
            record(f"{precision} extreme tile {xv}x({wv}|{-(top + 1)}) K={k}",
                   torch.equal(got, reference.int_matmul_int32(x, w, 8, w_bits[precision]))
                   and int(got[0, 0]) == xv * wv * k)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for m, n, k in ((1, 4096, 4096), (16, 3584, 18944), (64, 1000, 4096), (300, 4096, 14336)):
                x, _, stored = operands(precision, m, n, k)
                sx, sw = torch.rand(m, generator=g) + 1e-3, torch.rand(n, 1, generator=g) + 1e-3
                bias = torch.randn(n, generator=g).to(dtype)
                for b in (None, bias):
                    args = [t.to(dev) if t is not None else None for t in (x, sx, stored, sw, b)]
                    if precision == "w4a8":
                        got = ops.w4a8_gemm(*args, k, dtype)
                        ref = reference.w4a8_gemm_reference(x, sx, stored, sw, b, k, dtype)
                    else:
                        got = ops.w8a8_gemm(*args, dtype)
                        ref = reference.w8a8_gemm_reference(x, sx, stored, sw, b, dtype)
                    record(f"{precision} gemm {str(dtype)[6:]} bias={b is not None} M={m} N={n} K={k}",
                           torch.equal(got.cpu(), ref))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for m, k in ((1, 4096), (33, 4097), (256, 18944)):
            x = (torch.randn(m, k, generator=g) * torch.logspace(-2, 2, k)[None]).to(dtype)
            diag, clip = torch.rand(k, generator=g) + 0.5, torch.tensor(0.93)
            got = ops.quantize_act_int8(x.to(dev), None, None, diag.to(dev), clip.to(dev))
            ref = reference.quantize_act_int8_reference(x, None, None, diag, clip)
            record(f"quant int8 identity {str(dtype)[6:]} M={m} K={k}",
                   torch.equal(got[0].cpu(), ref[0]) and torch.equal(got[1].cpu(), ref[1]))
    for a, b in ((64, 64), (128, 148), (64, 224)):
        m, k = 64, a * b
        x = (torch.randn(m, k, generator=g) * torch.logspace(-1, 1, k)[None]).to(dev, torch.bfloat16)
        left = (torch.randn(a, a, generator=g) / a ** 0.5).to(dev)
        right = (torch.randn(b, b, generator=g) / b ** 0.5).to(dev)
        diag, clip = (torch.rand(k, generator=g) + 0.5).to(dev), torch.tensor(0.9).to(dev)
        gq, gs = ops.quantize_act_int8(x, left, right, diag, clip)
        rq, rs = reference.quantize_act_int8_reference(x, left, right, diag, clip)
        diff = (gq.int() - rq.int()).abs()
        rel = float(((gs - rs).abs() / rs).max())
        ok = rel <= 1e-5 and int(diff.max()) <= 1 and int((diff > 0).sum()) <= max(1, diff.numel() // 1000)
        record(f"quant int8 kron {a}x{b} M={m}", ok,
               f"(scale rel err {rel:.1e}, codes off by one: {int((diff > 0).sum())})")


# ------------------------------------------------------------------------------------------------ timing
def _median_ms(torch, fn, reps, iters, graph):
    """Median milliseconds of one call, from ``iters`` timed runs of ``reps`` rotated calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    if graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        run = g.replay
    else:
        run = fn
    for _ in range(10):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / reps)
    return statistics.median(times)


def _copies(nbytes, l2):
    return max(2, -(-2 * l2 // nbytes) + 1)


def time_shapes(torch, ops, pack_int4, shapes, ms, iters, precisions=PRECISIONS) -> list[dict]:
    """One row per (shape, M): the timings in µs and the ratios of the ``precisions`` (module docstring)."""
    import torch.nn.functional as F

    dev = "cuda"
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    rows = []
    for name in shapes:
        n, k = SHAPES[name]
        g = torch.Generator(device=dev).manual_seed(0)
        r16 = _copies(2 * n * k, l2)
        r4 = _copies(n * k // 2 + 4 * n, l2)
        r8 = _copies(n * k + 4 * n, l2)
        w16 = [torch.randn(n, k, device=dev, generator=g, dtype=torch.bfloat16) for _ in range(r16)]
        w4 = [pack_int4(torch.randint(-8, 8, (n, k), device=dev, generator=g, dtype=torch.int8)) for _ in range(r4)]
        s4 = [torch.rand(n, 1, device=dev, generator=g) + 1e-3 for _ in range(r4)]
        w8 = [torch.randint(-128, 128, (n, k), device=dev, generator=g, dtype=torch.int8)
              for _ in range(r8 if "w8a8" in precisions else 0)]
        s8 = [torch.rand(n, 1, device=dev, generator=g) + 1e-3 for _ in range(len(w8))]
        a = 1 << (max(k.bit_length() - 1, 0) // 2)
        while k % a:
            a //= 2
        left = torch.randn(a, a, device=dev, generator=g) / a ** 0.5
        right = torch.randn(k // a, k // a, device=dev, generator=g) / (k // a) ** 0.5
        diag = torch.rand(k, device=dev, generator=g) + 0.5
        for m in ms:
            x = torch.randn(m, k, device=dev, generator=g, dtype=torch.bfloat16)
            graph = m <= 16
            xp, xs = ops.quantize_act_int4(x, None, None, None, None)
            xq8, xs8 = ops.quantize_act_int8(x, None, None, None, None)

            def bf16():
                for w in w16:
                    F.linear(x, w)

            def quant():
                for _ in range(r4):
                    ops.quantize_act_int4(x, None, None, None, None)

            def gemm():
                for w, s in zip(w4, s4):
                    ops.w4a4_gemm(xp, xs, w, s, None, k, torch.bfloat16)

            def total():
                for w, s in zip(w4, s4):
                    p, sc = ops.quantize_act_int4(x, None, None, None, None)
                    ops.w4a4_gemm(p, sc, w, s, None, k, torch.bfloat16)

            def total_kron():
                for w, s in zip(w4, s4):
                    p, sc = ops.quantize_act_int4(x, left, right, diag, None)
                    ops.w4a4_gemm(p, sc, w, s, None, k, torch.bfloat16)

            def quant8():
                for _ in range(r4):
                    ops.quantize_act_int8(x, None, None, None, None)

            def w4a8_gemm():
                for w, s in zip(w4, s4):
                    ops.w4a8_gemm(xq8, xs8, w, s, None, k, torch.bfloat16)

            def w4a8_total():
                for w, s in zip(w4, s4):
                    q, sc = ops.quantize_act_int8(x, None, None, None, None)
                    ops.w4a8_gemm(q, sc, w, s, None, k, torch.bfloat16)

            def w8a8_gemm():
                for w, s in zip(w8, s8):
                    ops.w8a8_gemm(xq8, xs8, w, s, None, torch.bfloat16)

            def w8a8_total():
                for w, s in zip(w8, s8):
                    q, sc = ops.quantize_act_int8(x, None, None, None, None)
                    ops.w8a8_gemm(q, sc, w, s, None, torch.bfloat16)

            def w8a8_int_mm_total():  # torch's cuBLASLt int8 GEMM + the reference epilogue
                for w, s in zip(w8, s8):
                    q, sc = ops.quantize_act_int8(x, None, None, None, None)
                    acc = torch._int_mm(q, w.t())
                    ((acc.float() * sc[:, None]) * s.reshape(1, -1)).to(torch.bfloat16)

            plan = {"bf16": (bf16, r16)}
            if "w4a4" in precisions:
                plan.update(quant=(quant, r4), gemm=(gemm, r4), total=(total, r4), total_kron=(total_kron, r4))
            if "w4a8" in precisions or "w8a8" in precisions:
                plan["quant8"] = (quant8, r4)
            if "w4a8" in precisions:
                plan.update(w4a8_gemm=(w4a8_gemm, r4), w4a8_total=(w4a8_total, r4))
            if "w8a8" in precisions:
                plan.update(w8a8_gemm=(w8a8_gemm, r8), w8a8_total=(w8a8_total, r8))
                if hasattr(torch, "_int_mm") and m > 16 and k % 8 == 0 and n % 8 == 0:
                    plan["w8a8_int_mm_total"] = (w8a8_int_mm_total, r8)
            t = {}
            for key, (fn, reps) in plan.items():
                try:
                    t[key] = _median_ms(torch, fn, reps, iters, graph)
                except RuntimeError as err:  # torch._int_mm refusing a shape must not end the run
                    if key != "w8a8_int_mm_total":
                        raise
                    print(f"  [skip] {key} at M={m}: {err}", flush=True)
            row = {"shape": name, "N": n, "K": k, "M": m, "graph": graph, "weight_copies_bf16": r16,
                   "weight_copies_w4": r4, "weight_copies_w8": len(w8), "kron": f"{a}x{k // a}",
                   **{f"{key}_us": round(v * 1e3, 2) for key, v in t.items()},
                   "bf16_tflops": round(2 * m * n * k / (t["bf16"] * 1e-3) / 1e12, 1)}
            if "w4a4" in precisions:
                row.update(ratio_gemm=round(t["bf16"] / t["gemm"], 2), ratio_total=round(t["bf16"] / t["total"], 2),
                           ratio_total_kron=round(t["bf16"] / t["total_kron"], 2),
                           w4_gemm_tops=round(2 * m * n * k / (t["gemm"] * 1e-3) / 1e12, 1))
            for key in ("w4a8_gemm", "w4a8_total", "w8a8_gemm", "w8a8_total", "w8a8_int_mm_total"):
                if key in t:
                    row[f"ratio_{key}"] = round(t["bf16"] / t[key], 2)
            rows.append(row)
            print(f"  {name:>18} M={m:<5} bf16 {row['bf16_us']:>9} us | "
                  + " | ".join(f"{key} {row[f'{key}_us']}" for key in t if key != "bf16"), flush=True)
        del w16, w4, s4, w8, s8
        torch.cuda.empty_cache()
    return rows


def _versions(torch) -> dict:
    info = {"gpu": torch.cuda.get_device_name(0), "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "python": platform.python_version()}
    for cmd, key in ((["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], "driver"),
                     (["nvcc", "--version"], "nvcc")):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
            info[key] = out.splitlines()[-1] if out else "?"
        except (OSError, subprocess.SubprocessError):
            info[key] = "?"
    return info


def run_checks(args) -> int:
    import torch

    from fair_calib_hf import ops
    from fair_calib_hf.ops import cuda, reference
    from fair_calib_hf.packing import pack_int4, unpack_int4

    if not torch.cuda.is_available():
        raise SystemExit("no GPU visible (torch.cuda.is_available() is false)")
    if not cuda.BUILT:
        raise SystemExit("fair_calib_hf._C has no CUDA kernels (see the build log)")
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference's exact fp32 chunks must stay fp32
    info = _versions(torch)
    info["backend"] = ops.active_backend("cuda")
    print("[env] " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    wall = {"build": float(os.environ.get(BUILD_TIME_ENV, "nan"))}
    print("[exactness]", flush=True)
    start = time.time()
    checks = check_exactness(torch, ops, cuda, reference, pack_int4, unpack_int4, args.precisions)
    wall["exactness"] = time.time() - start
    failed = [c for c in checks if not c["ok"]]
    print(f"[exactness] {len(checks) - len(failed)}/{len(checks)} passed in {wall['exactness']:.0f} s", flush=True)
    rows = []
    if not args.skip_timing:
        print("[timing]", flush=True)
        start = time.time()
        rows = time_shapes(torch, ops, pack_int4, args.shapes, args.m, args.iters, args.precisions)
        wall["timing"] = time.time() - start
        print(f"[timing] {wall['timing']:.0f} s", flush=True)
    total = sum(v for v in wall.values() if v == v)
    print(f"[wall] {', '.join(f'{k} {v:.0f} s' for k, v in wall.items())}; total {total:.0f} s"
          + (f" (over the {BUDGET_S} s budget: trim --precisions/--shapes/--m/--iters)" if total > BUDGET_S else ""),
          flush=True)
    from .common import report

    setup = (f"on {info['gpu']} (sm {info['capability']}), torch {info['torch']}, driver {info.get('driver')}; median "
             f"of {args.iters} CUDA-event timings, weights rotated beyond 2x L2, CUDA graphs for M <= 16")
    get = (lambda key: lambda r: r.get(key, "–"))
    tables = []
    if "w4a4" in args.precisions:
        tables.append((f"W4A4 (CUDA kernels, backend {info['backend']}) vs torch bf16 F.linear {setup}", {
            "N×K": get("shape"), "M": get("M"), "bf16 µs": get("bf16_us"), "quant µs": get("quant_us"),
            "GEMM µs": get("gemm_us"), "quant+GEMM µs": get("total_us"), "kron quant+GEMM µs": get("total_kron_us"),
            "bf16/GEMM": get("ratio_gemm"), "bf16/total": get("ratio_total"),
            "bf16/kron total": get("ratio_total_kron"), "W4 TOPS": get("w4_gemm_tops"),
            "bf16 TFLOPS": get("bf16_tflops")}))
    a8 = [p for p in args.precisions if p != "w4a4"]
    if a8:
        cols = {"N×K": get("shape"), "M": get("M"), "bf16 µs": get("bf16_us"), "int8 quant µs": get("quant8_us")}
        for p in a8:
            name = p.upper()
            cols.update({f"{name} GEMM µs": get(f"{p}_gemm_us"), f"{name} quant+GEMM µs": get(f"{p}_total_us"),
                         f"bf16/{name} GEMM": get(f"ratio_{p}_gemm"), f"bf16/{name} total": get(f"ratio_{p}_total")})
        if "w8a8" in a8:
            cols.update({"W8A8 torch._int_mm quant+GEMM µs": get("w8a8_int_mm_total_us"),
                         "bf16/_int_mm total": get("ratio_w8a8_int_mm_total")})
        tables.append((f"8-bit activations ({', '.join(p.upper() for p in a8)}; CUDA kernels, int8 mma.sync) vs "
                       f"torch bf16 F.linear {setup}; torch._int_mm only where cuBLASLt takes the shape (M > 16)",
                       cols))
    for title, cols in tables:
        report(title, cols, rows)
    md_path = os.path.join(args.out, "gpu_check.md")
    json_path = os.path.join(args.out, "gpu_check.json")
    with open(json_path, "w") as f:
        json.dump({"env": info, "wall_s": {k: round(v, 1) for k, v in wall.items()}, "checks": checks, "rows": rows},
                  f, indent=2)
    with open(md_path, "w") as f:
        for title, cols in tables:
            f.write(title + "\n\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n")
            for r in rows:
                f.write("| " + " | ".join(str(c(r)) for c in cols.values()) + " |\n")
            f.write("\n")
    print(f"[done] {json_path}, {md_path}; exactness {'PASSED' if not failed else 'FAILED'}", flush=True)
    return 1 if failed else 0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fair_calib_hf.bench gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check", help="output folder (build log, JSON, Markdown)")
    parser.add_argument("--no-build", action="store_true", help="use the extension as it is")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--m", type=int, nargs="+", default=list(MS))
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS),
                        help="which kernels to check and time (default: all)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():  # before the minutes of building
        raise SystemExit("no GPU visible (torch.cuda.is_available() is false): nothing to check here; "
                         "`pytest tests/test_kernels_cuda_emu.py` runs the kernels in the host emulation")
    os.makedirs(args.out, exist_ok=True)
    if not args.no_build:
        seconds = build(args.out)
        # a fresh interpreter, so the freshly built extension is the one imported
        cmd = [sys.executable, "-m", "fair_calib_hf.bench", "gpu", "--no-build", *(argv if argv is not None else sys.argv[2:])]
        raise SystemExit(subprocess.call(cmd, cwd=os.getcwd(), env=dict(
            os.environ, PYTHONPATH=os.pathsep.join([_source_root(), os.environ.get("PYTHONPATH", "")]),
            **{BUILD_TIME_ENV: f"{seconds:.1f}"})))
    raise SystemExit(run_checks(args))
