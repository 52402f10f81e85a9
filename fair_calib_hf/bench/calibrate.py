"""Calibration cost: wall time of Stage I and of the whole calibration, and peak memory, per method.

Each (family, method) runs in a fresh subprocess so that its peak resident memory is its own: the reported
peak is ``ru_maxrss`` after calibration minus the resident size just before ``from_pretrained`` with the
quantization config (the float model is already loaded once in the subprocess to warm up imports).
Models: the bundled tiny random reference architectures (``save_tiny``); the numbers measure the
machinery's cost, not quality.

**Stage II against its arithmetic** (FlatQuant and FAIR-Calib rows): ``Stage II s`` is the summed wall time of
the blocks' optimization loops; ``FLOP-bound s`` is the FLOP count of those steps (:func:`stage2_flops`) at
the fp32 GEMM rate measured in the same process (``torch.mm`` of two 1024 × 1024 matrices, best of 3), and
``x FLOP-bound`` their ratio (1 = every FLOP at the GEMM rate).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

from .common import report, rss_mb

METHODS = ("rtn", "quarot", "flatquant", "fair_calib")
SETTINGS = dict(num_samples=16, seq_len=128, pack_samples=True, n_probe=32, prior_window=64, probe_steps=32)


def _texts() -> list[str]:
    """Calibration text that exists offline on every machine: torch's own module sources."""
    root = os.path.join(os.path.dirname(torch.__file__), "nn", "modules")
    return [open(os.path.join(root, f)).read() for f in sorted(os.listdir(root)) if f.endswith(".py")][:12]


def gemm_rate(n: int = 1024, repeats: int = 3) -> float:
    """fp32 FLOP/s of ``torch.mm`` on two ``n × n`` matrices (best of ``repeats`` after a warm-up)."""
    from .common import best_time

    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / best_time(lambda: a @ b, repeats)


def stage2_flops(model, samples: int, seq_len: int, epochs: int, steps_per_block: int) -> float:
    """FLOPs of Stage II on the float ``model``, summed over its blocks: forward + backward (3 × the forward)
    of the block on ``samples × seq_len`` tokens per epoch — its linears (2 FLOP per weight per
    token), attention (``4·seq_len·d`` per token: scores and weighted sum) and the online Kronecker transform
    of every linear's input (``2·in·(a + b)`` per token; counted per linear, an upper bound when linears
    share an input) — plus the weight transforms rebuilt once per step (``2·out·in·(a + b)`` per linear).
    Elementwise work (fake quantization, norms, activations) is not counted."""
    from fair_calib_hf.architectures import get_adapter
    from fair_calib_hf.calibration.transforms import kronecker_factors

    total = 0.0
    for block in get_adapter(model).blocks(model):
        linears = [m for m in block.modules() if isinstance(m, torch.nn.Linear)]
        d_model = model.get_input_embeddings().weight.shape[1]
        per_token = 4 * seq_len * d_model
        weight_side = 0.0
        for lin in linears:
            a, b = kronecker_factors(lin.in_features)
            per_token += 2 * lin.weight.numel() + 2 * lin.in_features * (a + b)
            weight_side += 2 * lin.weight.numel() * (a + b)
        total += 3 * (epochs * samples * seq_len * per_token + steps_per_block * weight_side)
    return total


def run_one(family: str, method: str) -> dict:
    import resource

    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from fair_calib_hf import FairCalibConfig
    from fair_calib_hf.reference_models import save_tiny

    hf_logging.disable_progress_bar()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as root:
        path = save_tiny(family, os.path.join(root, family))
        float_model = AutoModel.from_pretrained(path, trust_remote_code=True)
        cfg = FairCalibConfig(method=method, calibration_dataset=_texts(), **SETTINGS)
        before = rss_mb()
        model = AutoModel.from_pretrained(path, trust_remote_code=True, quantization_config=cfg)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r = model.hf_quantizer.calibration_report
    row = {"family": family, "method": method, "samples": r.num_samples, "stage1_s": round(r.stage1_seconds, 2),
           "total_s": round(r.seconds, 2), "peak_mb_over_loaded": round(max(peak - before, 0.0), 1),
           "block_rel_mse": [round(b.rel_mse, 4) for b in r.blocks]}
    if all("fit_seconds" in b.extra for b in r.blocks) and r.blocks:
        steps = r.blocks[0].extra["steps"]
        flops = stage2_flops(float_model, r.num_samples, cfg.seq_len, cfg.epochs, steps)
        rate = gemm_rate()
        fit = sum(b.extra["fit_seconds"] for b in r.blocks)
        row.update(stage2_s=round(fit, 2), stage2_gflop=round(flops / 1e9, 2), gemm_gflops=round(rate / 1e9, 1),
                   flop_bound_s=round(flops / rate, 3), stage2_over_flop_bound=round(fit * rate / flops, 1))
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fair_calib_hf.bench calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", nargs=2, metavar=("FAMILY", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(*args.one)))
        return
    rows = []
    for family in ("llada", "dream"):
        for method in METHODS:
            out = subprocess.run([sys.executable, "-m", "fair_calib_hf.bench", "calibrate", "--one", family, method],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    report(f"calibration cost, tiny reference models; settings {SETTINGS}, other options at their defaults "
           f"(Stage II: 15 epochs, batch 4); torch {torch.__version__}, {torch.get_num_threads()} threads",
           {"family": lambda r: r["family"], "method": lambda r: r["method"], "samples": lambda r: r["samples"],
            "Stage I s": lambda r: r["stage1_s"], "total s": lambda r: r["total_s"],
            "peak MB over loaded model": lambda r: r["peak_mb_over_loaded"],
            "Stage II s": lambda r: r.get("stage2_s", "-"), "FLOP-bound s": lambda r: r.get("flop_bound_s", "-"),
            "x FLOP-bound": lambda r: r.get("stage2_over_flop_bound", "-"),
            "block rel. MSE": lambda r: ", ".join(map(str, r["block_rel_mse"]))}, rows, args.json)
