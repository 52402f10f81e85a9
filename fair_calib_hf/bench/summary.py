"""``benchmarks/results/summary.json``: the machine-readable summary of quality-benchmark result folders.

    python -m fair_calib_hf.bench summary benchmarks/results/dream-arith benchmarks/results/llada-arith ...

For every model of every folder's ``quality.json`` (written by ``python -m fair_calib_hf.bench quality``), one
entry, keyed by the folder name (``folder/model`` when a folder holds several models):

* ``model``, ``source`` (the ``quality.json`` read) and ``settings`` (calibration, decoding and evaluation
  settings the rows were run with);
* ``window_fraction``: the prior's window (the answer, ``gen_length`` tokens) over the calibration sequence
  length (prompt + answer), with ``window`` and ``seq_len``;
* ``n_test`` (test problems), ``seeds`` (calibration seeds);
* ``accuracy``: mean exact match over seeds per configuration (``fp`` included);
* ``labels``: what an older configuration name meant, where the folder has one;
* ``fair_minus_flat``: :func:`fair_calib_hf.bench.quality.fair_minus_flat`: ``mean``, ``ci_low``, ``ci_high``,
  ``gap_closed`` (and its interval, the per-seed differences, how the interval was obtained). Folders written
  before per-problem outcomes were stored give ``ci_low``/``ci_high`` ``null`` with the reason in ``ci``: no
  number is filled in that was not measured.
"""
from __future__ import annotations

import argparse
import json
import os

from .common import write_text_atomic
from .quality import fair_minus_flat, summarize

SUMMARY_PATH = os.path.join("benchmarks", "results", "summary.json")


def _window(label: str, fp_row: dict) -> tuple[int, int]:
    """``(window, seq_len)`` from the FP row, else from the zoo task of ``label`` (the benchmark's geometry:
    the answer is the window, prompt + answer the calibration sequence)."""
    if "window" in fp_row and "seq_len" in fp_row:
        return int(fp_row["window"]), int(fp_row["seq_len"])
    from ..zoo import family_of, task_of
    from ..zoo.evaluate import calibration_geometry

    task = task_of(f"zoo:{label}")
    if task is None:
        raise ValueError(f"summary: {label!r} is not a zoo model and its FP row has no window/seq_len; rerun it "
                         "with the current quality benchmark")
    geometry = calibration_geometry(task, family_of(f"zoo:{label}"))
    return geometry["prior_window"], geometry["seq_len"]


def summarize_folder(folder: str, n_boot: int | None = None) -> dict:
    """The summary entries of ``folder/quality.json`` (module docstring)."""
    path = os.path.join(folder, "quality.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"summary: {path} does not exist (run `python -m fair_calib_hf.bench quality "
                                f"--out {folder}` first)")
    with open(path) as handle:
        record = json.load(handle)
    settings = record["settings"]
    labels = list(dict.fromkeys(r["model"] for r in record["rows"]))
    name = os.path.basename(os.path.normpath(folder))
    out = {}
    for label in labels:
        rows = [r for r in record["rows"] if r["model"] == label]
        fp = next((r for r in rows if r["config"] == "fp"), None)
        if fp is None:
            raise ValueError(f"summary: {path} has no FP row for {label!r}")
        window, seq_len = _window(label, fp)
        paired = fair_minus_flat(rows, **({"n_boot": n_boot} if n_boot else {}))
        seeds = sorted({r["seed"] for r in rows if r["seed"] is not None})
        out[name if len(labels) == 1 else f"{name}/{label}"] = {
            "model": label, "source": path, "settings": settings,
            "window_fraction": window / seq_len, "window": window, "seq_len": seq_len,
            "n_test": settings["n_eval"], "seeds": seeds,
            "accuracy": {line["config"]: line["accuracy"][0] for line in summarize(label, rows)},
            "fair_minus_flat": paired,
        }
        if any(r["config"] == "quarot" for r in rows):
            out[next(reversed(out))]["labels"] = {"quarot": "QuaRot without its weight clip search (rows written "
                                                            "before the benchmark ran quarot-rtn)"}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fair_calib_hf.bench summary", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="quality-benchmark output folders (each with a quality.json)")
    parser.add_argument("--out", default=SUMMARY_PATH, help=f"the summary file (default {SUMMARY_PATH})")
    args = parser.parse_args(argv)
    summary = {}
    for folder in args.folders:
        summary.update(summarize_folder(folder))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_text_atomic(args.out, json.dumps(summary, indent=1))
    for key, entry in summary.items():
        d = entry["fair_minus_flat"]
        ci = f"[{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]" if d and d["ci_low"] is not None else "n/a"
        print(f"{key}: window {entry['window_fraction']:.0%} of the sequence, n_test {entry['n_test']}, seeds "
              f"{entry['seeds']}; fair_calib - flatquant "
              + (f"{100 * d['mean']:+.1f} points, 95 % CI {ci}" if d else "not run"))
    print(f"wrote {args.out}")
