"""Calibration cost: wall time of Stage I and of the whole calibration, and peak memory, per method.

Each (family, method) runs in a fresh subprocess so that its peak resident memory is its own: the reported
peak is ``ru_maxrss`` after calibration minus the resident size just before ``from_pretrained`` with the
quantization config (the float model is already loaded once in the subprocess to warm up imports).
Models: the bundled tiny random reference architectures (``save_tiny``); the numbers measure the
machinery's cost, not quality.
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
        AutoModel.from_pretrained(path, trust_remote_code=True)
        cfg = FairCalibConfig(method=method, calibration_dataset=_texts(), **SETTINGS)
        before = rss_mb()
        model = AutoModel.from_pretrained(path, trust_remote_code=True, quantization_config=cfg)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r = model.hf_quantizer.calibration_report
    return {"family": family, "method": method, "samples": r.num_samples, "stage1_s": round(r.stage1_seconds, 2),
            "total_s": round(r.seconds, 2), "peak_mb_over_loaded": round(max(peak - before, 0.0), 1),
            "block_rel_mse": [round(b.rel_mse, 4) for b in r.blocks]}


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
            "block rel. MSE": lambda r: ", ".join(map(str, r["block_rel_mse"]))}, rows, args.json)
