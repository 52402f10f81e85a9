"""CPU W4A4 kernel speed against torch fp32 ``F.linear``, measured in one process.

For each weight shape ``N × K`` and token count ``M``: the fp32 baseline ``F.linear(x, W)``; the W4A4 GEMM
alone (packed activations × packed weights, fp32 epilogue); and the whole W4A4 layer (per-token
quantization + packing + GEMM). Best of ``--repeats`` after a warm-up; the same torch thread count for both.
Ratios > 1 mean W4A4 is faster. Inputs are random (never zeros). ``--isa`` times several GEMM instruction
sets (e.g. ``avx512vnni avx2``) in the same process, one row each.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from .common import best_time, report

SHAPES = {  # name: (N, K)
    "4096x4096": (4096, 4096),
    "14336x4096": (14336, 4096),
    "4096x14336": (4096, 14336),
    "dream 18944x3584": (18944, 3584),
    "llada 4096x12288": (4096, 12288),
}


def run(shapes, ms, repeats, isas=(None,)) -> list[dict]:
    from fair_calib_hf import ops
    from fair_calib_hf.ops import cpu
    from fair_calib_hf.packing import quantize_weight_per_channel

    rows = []
    for name in shapes:
        n, k = SHAPES[name]
        g = torch.Generator().manual_seed(0)
        w = torch.randn(n, k, generator=g)
        wp, ws = quantize_weight_per_channel(w)
        for m in ms:
            x = torch.randn(m, k, generator=g)
            xp, sx = ops.quantize_act_int4(x, None, None, None, None)
            t_fp = best_time(lambda: F.linear(x, w), repeats)
            for isa in isas:
                previous = cpu.set_isa(isa) if isa else None
                try:
                    t_gemm = best_time(lambda: ops.w4a4_gemm(xp, sx, wp, ws, None, k, torch.float32), repeats)

                    def layer():
                        p, s = ops.quantize_act_int4(x, None, None, None, None)
                        return ops.w4a4_gemm(p, s, wp, ws, None, k, torch.float32)

                    t_all = best_time(layer, repeats)
                    rows.append({"shape": name, "M": m, "isa": ops.active_backend("cpu"),
                                 "fp32_ms": round(t_fp * 1e3, 3), "w4a4_gemm_ms": round(t_gemm * 1e3, 3),
                                 "w4a4_total_ms": round(t_all * 1e3, 3), "ratio_gemm": round(t_fp / t_gemm, 2),
                                 "ratio_total": round(t_fp / t_all, 2)})
                finally:
                    if previous is not None:
                        cpu.set_isa(previous)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fair_calib_hf.bench kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--m", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--isa", nargs="+", default=None,
                        help="GEMM instruction sets to time (default: the active one), e.g. avx512vnni avx2")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from fair_calib_hf import ops

    rows = run(args.shapes, args.m, args.repeats, tuple(args.isa) if args.isa else (None,))
    report(f"CPU W4A4 vs fp32 F.linear; backend {ops.active_backend('cpu')}; torch {torch.__version__}, "
           f"{torch.get_num_threads()} threads",
           {"N×K": lambda r: r["shape"], "M": lambda r: r["M"], "ISA": lambda r: r["isa"],
            "fp32 ms": lambda r: r["fp32_ms"],
            "W4A4 GEMM ms": lambda r: r["w4a4_gemm_ms"], "W4A4 quant+GEMM ms": lambda r: r["w4a4_total_ms"],
            "fp32/GEMM": lambda r: r["ratio_gemm"], "fp32/total": lambda r: r["ratio_total"]}, rows, args.json)
