"""Calibration-budget sensitivity: FAIR-Calib against FlatQuant as the budget shrinks (issue 13, item 8).

    python -m fair_calib_hf.bench budget --model zoo:dream-arith --out benchmarks/results/budget-dream-arith

For each budget of the ladder (``--budgets``, each ``n_probe:num_samples:epochs``), the quality benchmark
(:mod:`fair_calib_hf.bench.quality`) runs ``flatquant`` and ``fair_calib`` with the same seeds, scored on the
**held-out part of the calibration split** by default (``--eval-split calibration-heldout``: problems that no
calibration run uses), so that a default chosen from this table (for example a prior shrinkage) is not tuned on
the test split. Each budget is one quality-benchmark folder ``OUT/<budget>`` (resumable, run by run); the table
``OUT/budget.md`` / ``OUT/budget.json`` gives per budget the mean accuracy of both methods and FAIR-Calib −
FlatQuant as a paired difference with its 95 % bootstrap interval over problems and seeds
(:func:`fair_calib_hf.bench.quality.fair_minus_flat`). A difference whose interval contains 0 is a tie.

FlatQuant does not use Stage I, so its row depends on ``num_samples`` and ``epochs`` only; it is rerun per
budget anyway (same seeds, same data: bit-identical when those two agree), which keeps every folder complete.
"""
from __future__ import annotations

import argparse
import json
import os

from . import quality
from .common import write_text_atomic

# (n_probe, num_samples, epochs): from the benchmark's --quick budget up to the paper's probe budget
DEFAULT_BUDGETS = ("16:16:2", "64:16:2", "64:64:5", "512:64:5", "512:64:15")


def parse_budget(text: str) -> dict:
    """``"n_probe:num_samples:epochs"`` → ``{"n_probe", "num_samples", "epochs"}`` (positive integers);
    ``ValueError`` naming the expected form otherwise."""
    parts = text.split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"budget {text!r}: expected n_probe:num_samples:epochs, three positive integers "
                         "(for example 64:16:2)")
    return dict(zip(("n_probe", "num_samples", "epochs"), values))


def budget_rows(out: str, budgets, seeds: int, n_eval: int, eval_split: str, threads: int | None,
                model: str, tokens_per_step: int = 1) -> list[dict]:
    """Run (or resume) every budget's folder and return one line per budget: the budget, both methods' mean
    accuracies and ``fair_minus_flat``. The table is rewritten after each budget (:func:`write_table`), so an
    interrupted study keeps the finished budgets' lines."""
    lines = []
    for text in budgets:
        budget = parse_budget(text)
        folder = os.path.join(out, text.replace(":", "-"))
        argv = ["--models", model, "--configs", "flatquant", "fair_calib", "--seeds", str(seeds),
                "--n-eval", str(n_eval), "--eval-split", eval_split, "--out", folder, "--resume",
                "--n-probe", str(budget["n_probe"]), "--num-samples", str(budget["num_samples"]),
                "--epochs", str(budget["epochs"]), "--tokens-per-step", str(tokens_per_step)]
        argv += ["--threads", str(threads)] if threads else []
        quality.main(argv)
        with open(os.path.join(folder, "quality.json")) as handle:
            record = json.load(handle)
        label = record["rows"][0]["model"]
        rows = [r for r in record["rows"] if r["model"] == label]
        accuracy = {line["config"]: line["accuracy"][0] for line in quality.summarize(label, rows)}
        lines.append({"budget": budget, "folder": folder, "accuracy": accuracy,
                      "fair_minus_flat": quality.fair_minus_flat(rows)})
        write_table(out, lines, model, eval_split)
    return lines


def write_table(out: str, lines: list[dict], model: str, eval_split: str) -> str:
    """Write ``out/budget.md`` and ``out/budget.json`` (each through a temporary file) and return the table."""
    table = markdown(lines, model, eval_split)
    os.makedirs(out, exist_ok=True)
    for name, text in (("budget.md", table), ("budget.json", json.dumps(lines, indent=1))):
        write_text_atomic(os.path.join(out, name), text)
    return table


def markdown(lines: list[dict], model: str, eval_split: str) -> str:
    """The budget table (module docstring)."""
    head = (f"Budget sensitivity of `{model}` ({eval_split} problems; mean exact match over seeds; "
            "FAIR-Calib − FlatQuant paired, 95 % bootstrap interval over problems and seeds)\n\n"
            "| n_probe | samples | epochs | FP % | FlatQuant % | FAIR-Calib % | FAIR − Flat (points) | 95 % CI | reading |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    body = []
    for line in lines:
        b, acc, d = line["budget"], line["accuracy"], line["fair_minus_flat"]
        lo, hi = d["ci_low"], d["ci_high"]
        reading = "tie" if lo <= 0 <= hi else ("FAIR-Calib better" if lo > 0 else "FlatQuant better")
        body.append(f"| {b['n_probe']} | {b['num_samples']} | {b['epochs']} | {100 * acc['fp']:.1f} | "
                    f"{100 * acc['flatquant']:.1f} | {100 * acc['fair_calib']:.1f} | {100 * d['mean']:+.1f} | "
                    f"[{100 * lo:+.1f}, {100 * hi:+.1f}] | {reading} |")
    return head + "\n".join(body) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fair_calib_hf.bench budget", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a zoo: name or a zoo checkpoint folder")
    parser.add_argument("--out", required=True, help="output folder (one quality folder per budget inside)")
    parser.add_argument("--budgets", nargs="+", default=list(DEFAULT_BUDGETS),
                        help=f"n_probe:num_samples:epochs each (default {' '.join(DEFAULT_BUDGETS)})")
    parser.add_argument("--seeds", type=int, default=5, help="calibration seeds per budget (default 5)")
    parser.add_argument("--n-eval", type=int, default=1024, help="problems scored (default 1024)")
    parser.add_argument("--eval-split", default="calibration-heldout", choices=quality.EVAL_SPLITS,
                        help="where the problems come from (default: the calibration split's held-out part)")
    parser.add_argument("--threads", type=int, help="torch threads per run")
    parser.add_argument("--tokens-per-step", type=int, default=1,
                        help="tokens committed per decoding step (default 1), as in `bench quality`")
    args = parser.parse_args(argv)
    try:
        for text in args.budgets:
            parse_budget(text)
    except ValueError as err:
        parser.error(str(err))
    lines = budget_rows(args.out, args.budgets, args.seeds, args.n_eval, args.eval_split, args.threads, args.model,
                        args.tokens_per_step)
    print(markdown(lines, args.model, args.eval_split))
