"""Decoding speed: steps per second of the diffusion samplers on the bundled reference architectures.

Each configuration is timed in one process: one warm-up run, then the best of ``--repeats`` runs (these
machines are shared and noisy). Steps/s = decoding steps / wall time of ``diffusion_generate`` with the
trajectory recorded (one model forward per step, plus the final observation).
"""
from __future__ import annotations

import argparse
import os
import tempfile

import torch

from .common import best_time, report

SETTINGS = {  # family: (policy, block_length)
    "llada": ("low_confidence", 32),
    "dream": ("entropy", None),
}


def run(gen_lengths=(64, 256), prompt_len=32, repeats=3, quantized=True) -> list[dict]:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    import fair_calib_hf  # noqa: F401
    from fair_calib_hf import FairCalibConfig
    from fair_calib_hf.decoding import DecodeConfig, diffusion_generate
    from fair_calib_hf.ops import active_backend
    from fair_calib_hf.reference_models import save_tiny

    hf_logging.disable_progress_bar()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for family, (policy, block) in SETTINGS.items():
            path = save_tiny(family, os.path.join(root, family), seed=0)
            variants = {"fp32": AutoModel.from_pretrained(path, trust_remote_code=True)}
            if quantized:
                variants[f"w4a4-rtn ({active_backend('cpu')} ops)"] = AutoModel.from_pretrained(
                    path, trust_remote_code=True, quantization_config=FairCalibConfig(method="rtn"))
            prompt = torch.randint(5, 90, (1, prompt_len), generator=torch.Generator().manual_seed(0))
            for g in gen_lengths:
                cfg = DecodeConfig(gen_length=g, steps=g, block_length=block if block and g % block == 0 else None,
                                   policy=policy)
                for name, model in variants.items():
                    seconds = best_time(lambda: diffusion_generate(model, prompt, config=cfg), repeats)
                    rows.append({"family": family, "model": name, "policy": policy, "prompt_len": prompt_len,
                                 "gen_length": g, "steps": g, "block_length": cfg.block_length or g,
                                 "seconds": round(seconds, 4), "steps_per_s": round(g / seconds, 1)})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fair_calib_hf.bench decode", description=__doc__.splitlines()[0])
    parser.add_argument("--gen-lengths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-quantized", action="store_true", help="time the float models only")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    rows = run(tuple(args.gen_lengths), repeats=args.repeats, quantized=not args.no_quantized)
    report(f"decode speed, tiny reference models, batch 1, prompt 32 tokens; torch {torch.__version__}, "
           f"{torch.get_num_threads()} threads",
           {"family": lambda r: r["family"], "model": lambda r: r["model"], "policy": lambda r: r["policy"],
            "gen_length": lambda r: r["gen_length"], "steps": lambda r: r["steps"],
            "block": lambda r: r["block_length"], "s/run": lambda r: f"{r['seconds']:.3f}",
            "steps/s": lambda r: f"{r['steps_per_s']:.1f}"}, rows, args.json)
