"""Quantization quality on the trained zoo models: task accuracy and frontier diagnostics per method.

For each zoo model (``fair_calib_hf.zoo``): the full-precision (FP) model, then every configuration of
:data:`CONFIGS` (``rtn``, ``quarot-rtn``, ``flatquant``, ``fair_calib`` and the Stage I ablations of
``fair_calib``) calibrated on the task's **calibration split** with each calibration seed (the seed draws the
calibration sequences and drives the method's own randomness), and scored on the **test split**:

* ``accuracy``: exact match over ``n_eval`` test problems (1024 by default, 5 seeds; mean ± std over seeds);
  every row keeps the per-problem outcome (``correct``, 1/0 per test problem) for the paired statistics;
* ``fair_calib − flatquant``: the paired difference per seed, its mean with a 95 % confidence interval and the
  share of flatquant's gap to FP it closes with its interval, by a bootstrap over test problems and seeds
  (:func:`fair_calib_hf.bench.paired.paired_bootstrap`);
* frontier diagnostics on the first ``n_diag`` test prompts (:func:`fair_calib_hf.diagnostics.compare_models`):
  flip rate (teacher-forced replay), post-commit mismatch (mean-disagree, never-agree) and p90 of the stability
  lag of each model on its own trajectory (LLaDA-style: committed positions read re-masked; the FP row shows
  the teacher's own values, the floor), the share of prompts with a false commit and the amplification (the
  probability MSE on the student's own states after its first false commit, over still-masked positions), and
  the teacher-forced probability MSE (the teacher's states, every window position);
* ``log_lik``: Monte-Carlo masked log-likelihood of the reference answers of the same ``n_diag`` test problems,
  nats per answer token (:func:`fair_calib_hf.zoo.evaluate.answer_log_likelihood`, ``MC_NUM`` draws each);
* calibration wall time (s) and peak resident memory over the loaded float model (MB).

``rtn`` has no randomness and no data: it runs once (std 0). The ``uniform``-prior ablation of ``fair_calib`` *is*
``flatquant`` (same Stage II, unweighted MSE), so it is not run twice. Each (model, configuration, seed) runs in
a fresh subprocess so that its peak memory is its own, seed by seed (:func:`run_order`), and ``--resume``
continues an interrupted benchmark run by run.

Also reported per model: the activation-outlier ratio at the MLP down-projection input (largest |x| over the
median |x|, on the calibration sequences, the largest over the blocks), the FP model's test accuracy, and the
checkpoint sizes. Output: a Markdown table printed and, with ``--out OUT`` (no default: nothing is written into
the tracked ``benchmarks/results/`` unless asked), written to ``OUT/quality.md``, ``OUT/quality.json``, and
per model the plots ``OUT/<model>-flip_rate.png``, ``-amplification.png``, ``-tf_prob_mse.png``,
``-lag_ccdf.png`` (seed 0 of each configuration); ``--json FILE`` writes the rows to FILE too (or alone, without
``--out``). Calibration: the paper's ``n_probe`` 512 and FlatQuant's 15
epochs unless ``--n-probe`` / ``--epochs`` / ``--num-samples`` reduce them (recorded in the results' settings).
``--quick`` runs one seed and small evaluation sets (a smoke test of the whole pipeline).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from ..dtypes import float_dtype
from .common import rss_mb, write_text_atomic

# name -> (method, FairCalibConfig overrides). QuaRot as its own recipe runs it: RTN weights with a per-channel
# clip ratio searched for the weight quantization error (QuaRot's --w_clip), activations unclipped.
CONFIGS = {
    "rtn": ("rtn", {}),
    "quarot-rtn": ("quarot", {"w_clip_search": True}),
    "flatquant": ("flatquant", {}),
    "fair_calib": ("fair_calib", {}),
    "fair_calib/frontier-only": ("fair_calib", {"prior_terms": "frontier"}),
    "fair_calib/reliability-only": ("fair_calib", {"prior_terms": "reliability"}),
    "fair_calib/flat-schedule": ("fair_calib", {"prior_schedule": "flat"}),
    # GPTQ weight rounding (issue 28): W4A4 with each method's weights rounded by GPTQ (fair_calib: the prior in the
    # Hessian), and weight-only 4-bit (group size 128 and per channel) and 8-bit
    "gptq": ("gptq", {}),
    "quarot-gptq": ("quarot", {"w_clip_search": True, "weight_rounding": "gptq"}),
    "flatquant-gptq": ("flatquant", {"weight_rounding": "gptq"}),
    "fair_calib-gptq": ("fair_calib", {"weight_rounding": "gptq"}),
    "w4a16-g128-rtn": ("rtn", {"a_bits": 16, "group_size": 128}),
    "w4a16-g128-gptq": ("gptq", {"a_bits": 16, "group_size": 128}),
    "w4a16-g128-gptq-prior": ("gptq", {"a_bits": 16, "group_size": 128, "gptq_position_weights": "prior"}),
    "w4a16-rtn": ("rtn", {"a_bits": 16}),
    "w4a16-gptq": ("gptq", {"a_bits": 16}),
    "w4a16-gptq-prior": ("gptq", {"a_bits": 16, "gptq_position_weights": "prior"}),
    "w8a16-rtn": ("rtn", {"w_bits": 8, "a_bits": 16}),
    # Stage II states (issue 27): masked answer windows, the FP teacher's decoding states (its deployed sampler, or
    # Stage I's random commits), and FAIR-Calib's per-state frontier weights on those states
    "flatquant/masked": ("flatquant", {"calibration_states": "masked"}),
    "flatquant/trajectory": ("flatquant", {"calibration_states": "trajectory"}),
    "flatquant/trajectory-random": ("flatquant", {"calibration_states": "trajectory", "trajectory_policy": "random"}),
    "fair_calib/masked": ("fair_calib", {"calibration_states": "masked"}),
    "fair_calib/trajectory": ("fair_calib", {"calibration_states": "trajectory"}),
    "fair_calib/trajectory-frontier": ("fair_calib", {"calibration_states": "trajectory",
                                                      "state_weights": "frontier"}),
    "fair_calib/trajectory-random-frontier": ("fair_calib", {"calibration_states": "trajectory",
                                                             "trajectory_policy": "random",
                                                             "state_weights": "frontier"}),
}
# 8-bit activations (issue 29): the four main recipes at W4A8 and W8A8
ACT8_CONFIGS = {f"w{w}a8-{name}": (method, dict(overrides, w_bits=w, a_bits=8))
                for w in (4, 8) for name, (method, overrides) in
                (("rtn", CONFIGS["rtn"]), ("quarot-rtn", CONFIGS["quarot-rtn"]), ("flatquant", CONFIGS["flatquant"]),
                 ("fair_calib", CONFIGS["fair_calib"]))}
# W4A8 with GPTQ-rounded weights: what W4A8 still loses on the LLaDA-style testbed is the 4-bit weights
ACT8_CONFIGS.update({f"w4a8-{name}": (method, dict(overrides, w_bits=4, a_bits=8)) for name, (method, overrides) in
                     (("flatquant-gptq", CONFIGS["flatquant-gptq"]), ("fair_calib-gptq", CONFIGS["fair_calib-gptq"]))})
CONFIGS.update(ACT8_CONFIGS)
STATES_CONFIGS = tuple(name for name in CONFIGS if "/masked" in name or "/trajectory" in name)
"""The issue-27 variants: each is compared with FlatQuant on observed states and with its own method on them."""
PAIRS = (("fair_calib", "flatquant"), ("quarot-gptq", "quarot-rtn"), ("flatquant-gptq", "flatquant"),
         ("fair_calib-gptq", "fair_calib"), ("fair_calib-gptq", "flatquant-gptq"),
         ("w4a16-g128-gptq", "w4a16-g128-rtn"), ("w4a16-g128-gptq-prior", "w4a16-g128-gptq"),
         ("w4a16-gptq", "w4a16-rtn"), ("w4a16-gptq-prior", "w4a16-gptq")) + tuple(
    pair for name in STATES_CONFIGS for pair in dict.fromkeys([(name, "flatquant"), (name, CONFIGS[name][0])])) + (
    ("w4a8-fair_calib", "w4a8-flatquant"), ("w8a8-fair_calib", "w8a8-flatquant"), ("w4a8-flatquant", "flatquant"),
    ("w4a8-fair_calib", "fair_calib"), ("w4a8-flatquant-gptq", "w4a8-flatquant"),
    ("w4a8-fair_calib-gptq", "w4a8-fair_calib"), ("w4a8-fair_calib-gptq", "w4a8-flatquant-gptq"))
"""Paired comparisons ``a − b`` reported whenever both configurations have rows."""
MAIN_CONFIGS = ("rtn", "quarot-rtn", "flatquant", "fair_calib")
# The paper's probe budget (512 rollouts, "saturating at 512-1024") and FlatQuant's 15 epochs; --n-probe,
# --epochs and --num-samples reduce them (the settings are recorded with the results).
CALIBRATION = dict(num_samples=64, epochs=15, n_probe=512, probe_batch_size=16, batch_size=4)
N_BOOT = 10_000
MC_NUM = 16
# power to rank methods: >= 1,000 test problems (standard error about 1.4 points at 70 % accuracy), 5 seeds
FULL = dict(seeds=(0, 1, 2, 3, 4), n_eval=1024, n_diag=64, calibration=CALIBRATION)
QUICK = dict(seeds=(0,), n_eval=32, n_diag=16,
             calibration=dict(num_samples=16, epochs=2, n_probe=16, probe_batch_size=16, batch_size=4))


def _load(path, dtype: str = "float32"):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(path, trust_remote_code=True, dtype=float_dtype(dtype)).eval()
    return model, AutoTokenizer.from_pretrained(path, trust_remote_code=True)


@torch.no_grad()
def outlier_ratio(model, sequences: torch.Tensor) -> float:
    """max over blocks of ``max |x| / median |x|`` at the MLP down-projection input, on ``sequences``."""
    from fair_calib_hf.architectures import get_adapter

    adapter = get_adapter(model)
    down = adapter.up_feeds_down[1]
    ratios, hooks = [], []
    for block in adapter.blocks(model):
        def hook(module, args):
            x = args[0].abs().float().flatten()
            ratios.append(float(x.max() / x.median().clamp_min(1e-12)))
        hooks.append(block.get_submodule(down).register_forward_pre_hook(hook))
    try:
        model(input_ids=sequences)
    finally:
        for h in hooks:
            h.remove()
    return max(ratios)


EVAL_SPLITS = ("test", "calibration-heldout")
HELDOUT_SEED = 1_000_003


def heldout_examples(task, n_eval: int, num_samples: int, seeds) -> list:
    """``n_eval`` problems of the task's **calibration split** that no calibration run of ``seeds`` uses (each
    run calibrates on ``task.examples("calibration", num_samples, seed)``): the held-out part of the calibration
    split, on which settings may be chosen without touching the test split."""
    used = {task.split_key(ex) for seed in seeds for ex in task.examples("calibration", num_samples, seed)}
    drawn = task.examples("calibration", n_eval + len(used), seed=HELDOUT_SEED)
    kept = [ex for ex in drawn if task.split_key(ex) not in used][:n_eval]
    if len(kept) < n_eval:  # pragma: no cover - n_eval + |used| draws leave at least n_eval
        raise AssertionError("held-out draw too small")
    return kept


def _task_inputs(task, tokenizer, n_eval, eval_split: str = "test", calibration: dict | None = None, seeds=()):
    if eval_split == "test":
        examples = task.examples("test", n_eval, seed=0)
    elif eval_split == "calibration-heldout":
        examples = heldout_examples(task, n_eval, calibration["num_samples"], seeds)
    else:
        raise ValueError(f"eval_split={eval_split!r}; allowed: {', '.join(EVAL_SPLITS)}")
    prompts, _ = task.encode(examples, tokenizer)
    return examples, prompts


def run_config(model_path: str, name: str, seeds, n_eval: int, n_diag: int, calibration: dict,
               tokens_per_step: int = 1, dtype: str = "float32", eval_split: str = "test",
               all_seeds=None) -> list[dict]:
    """Calibrate ``name`` for each seed and score it (FP when ``name == "fp"``); rows as in the module doc.
    ``tokens_per_step`` commits that many tokens per decoding step (``steps = gen_length / tokens_per_step``);
    ``dtype`` (``"float32"``, ``"bfloat16"``, ``"float16"``) is the load dtype of the teacher and the student
    (calibration runs on the model loaded in that dtype, as a user's ``from_pretrained(..., dtype=...)``);
    ``eval_split`` scores the ``"test"`` split or ``"calibration-heldout"`` (:func:`heldout_examples`, excluding
    the calibration sequences of every seed of ``all_seeds``: where settings may be chosen)."""
    import resource

    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from fair_calib_hf import FairCalibConfig
    from fair_calib_hf.architectures import get_adapter
    from fair_calib_hf.decoding import diffusion_generate
    from fair_calib_hf.diagnostics import compare_models, own_diagnostics
    from fair_calib_hf.zoo import task_of
    from fair_calib_hf.zoo.evaluate import (answer_log_likelihood, calibration_geometry, decode_settings,
                                            default_decode_config, generate_answers)

    hf_logging.disable_progress_bar()
    teacher, tokenizer = _load(model_path, dtype)
    task = task_of(model_path)
    family = get_adapter(teacher).family
    examples, prompts = _task_inputs(task, tokenizer, n_eval, eval_split, calibration, all_seeds or seeds)
    if task.gen_length % tokens_per_step:
        raise ValueError(f"tokens_per_step={tokens_per_step} does not divide gen_length={task.gen_length}")
    steps = task.gen_length // tokens_per_step
    plain = default_decode_config(task, family, record=False, steps=steps)
    recorded = default_decode_config(task, family, record=True, steps=steps)
    geometry = calibration_geometry(task, family, steps=steps)
    teacher_result = diffusion_generate(teacher, prompts[:n_diag], config=recorded)
    teacher_own = own_diagnostics(teacher, teacher_result.trajectory)
    if name == "fp":
        texts, _ = generate_answers(teacher, tokenizer, task, examples, plain)
        calib = torch.tensor(task.calibration_sequences(tokenizer, calibration["num_samples"], seed=0))
        # the teacher against itself: no flip, no probability gap, no false commit (amplification undefined)
        return [{"config": "fp", "seed": None, "accuracy": task.accuracy(texts, examples),
                 "correct": [int(task.score(t, e)) for t, e in zip(texts, examples)],
                 "log_lik": answer_log_likelihood(teacher, tokenizer, task, examples[:n_diag], mc_num=MC_NUM),
                 "flip_rate": 0.0, "mean_disagree": teacher_own["mean_disagree"],
                 "never_agree": teacher_own["never_agree"], "lag_p90": teacher_own["lag_p90"],
                 "remasked": teacher_own["remasked"], "false_commit_rate": 0.0, "prob_mse": 0.0,
                 "lags": teacher_own["lags"], "outlier_ratio": outlier_ratio(teacher, calib),
                 "window": geometry["prior_window"], "seq_len": geometry["seq_len"],
                 "decoding": decode_settings(plain), "parameters": sum(p.numel() for p in teacher.parameters())}]
    method, overrides = CONFIGS[name]
    rows = []
    for seed in seeds:
        data = task.calibration_sequences(tokenizer, calibration["num_samples"], seed=seed)
        # Stage I probes with the deployment sampler's block length (LLaDA's blocks of 8 here; the whole window
        # for Dream) and number of steps
        cfg = FairCalibConfig(method=method, calibration_dataset=data, seed=seed,
                              **geometry, **calibration, **overrides)
        before = rss_mb()
        started = time.perf_counter()
        student = AutoModel.from_pretrained(model_path, trust_remote_code=True, quantization_config=cfg,
                                            dtype=float_dtype(dtype)).eval()
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        texts, _ = generate_answers(student, tokenizer, task, examples, plain)
        rep = compare_models(teacher, student, prompts[:n_diag], config=recorded, teacher_result=teacher_result,
                             teacher_diagnostics=teacher_own)
        report = student.hf_quantizer.calibration_report
        rows.append({
            "config": name, "seed": seed, "accuracy": task.accuracy(texts, examples),
            "correct": [int(task.score(t, e)) for t, e in zip(texts, examples)],
            "log_lik": answer_log_likelihood(student, tokenizer, task, examples[:n_diag], mc_num=MC_NUM),
            "flip_rate": rep.flip_rate, "mean_disagree": rep.mismatch["student"]["mean_disagree"],
            "never_agree": rep.mismatch["student"]["never_agree"], "lag_p90": rep.lag_p90["student"],
            "remasked": rep.mismatch["student"]["remasked"], "false_commit_rate": rep.false_commit_rate,
            "amplification": rep.amplification_mean, "prob_mse": rep.teacher_forced_prob_mse_mean,
            "calib_seconds": round(seconds, 2),
            "stage1_seconds": round(report.stage1_seconds, 2), "probe_block_length": cfg.probe_block_length,
            "peak_mb": round(max(peak - before, 0.0), 1),
            "block_rel_mse": [round(b.rel_mse, 5) for b in report.blocks],
            "flip_rate_per_step": rep.flip_rate_per_step, "prob_mse_curve": rep.teacher_forced_prob_mse_curve,
            "amplification_curve": rep.amplification_curve, "amplification_counts": rep.amplification_counts,
            "lags": rep.lags["student"], "teacher_lags": rep.lags["teacher"],
        })
        if method == "rtn":  # no data, no randomness: one run (any precision)
            break
        del student
    return rows


METRICS = ("accuracy", "log_lik", "flip_rate", "mean_disagree", "never_agree", "lag_p90", "false_commit_rate",
           "amplification", "prob_mse")


def _mean_std(values):
    values = [v for v in values if v is not None and v == v]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(model: str, rows: list[dict]) -> list[dict]:
    """One line per configuration: mean ± std over seeds of every metric."""
    out = []
    fp = next(r for r in rows if r["config"] == "fp")
    line = {"model": model, "config": "fp", "seeds": 0}
    for key in METRICS:  # the teacher's own values (diagnostics against itself: 0 by definition)
        line[key] = (fp.get(key, float("nan")), 0.0)
    out.append(line)
    for name in dict.fromkeys(r["config"] for r in rows if r["config"] != "fp"):
        group = [r for r in rows if r["config"] == name]
        line = {"model": model, "config": name, "seeds": len(group)}
        for key in METRICS + ("calib_seconds", "peak_mb"):
            line[key] = _mean_std([r.get(key) for r in group])
        out.append(line)
    return out


def _fmt(pair, scale=1.0, digits=1):
    mean, std = pair if pair is not None else (float("nan"), float("nan"))
    if mean != mean:
        return "–"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def markdown(summary: list[dict], meta: dict) -> str:
    """The results table (accuracy and rates in %). The FP row holds the teacher's own values; mismatch and lag
    are each model on its own trajectory (LLaDA-style: committed positions read re-masked)."""
    head = ("| model | config | seeds | accuracy % | log-lik nats/tok | flip rate % | mean-disagree % | "
            "never-agree % | lag p90 | false commits % | amplification ×1e3 | TF prob. MSE ×1e3 | calib. s | "
            "peak MB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in summary:
        fp = s["config"] == "fp"
        lines.append(" | ".join([
            f"| {s['model']}", "FP" if fp else s["config"], "–" if fp else str(s["seeds"]), _fmt(s["accuracy"], 100),
            _fmt(s["log_lik"], 1, 3), _fmt(s["flip_rate"], 100, 2), _fmt(s["mean_disagree"], 100, 2),
            _fmt(s["never_agree"], 100, 2), _fmt(s["lag_p90"], 1, 1), _fmt(s.get("false_commit_rate"), 100, 1),
            _fmt(s.get("amplification"), 1e3, 2), _fmt(s["prob_mse"], 1e3, 2),
            "–" if fp else _fmt(s["calib_seconds"], 1, 0), "–" if fp else _fmt(s["peak_mb"], 1, 0)]) + " |")
    notes = [f"- **{m}**: {d}" for m, d in meta.items()]
    return "\n".join(lines + [""] + notes) + "\n"


def gap_closed(summary: list[dict], model: str) -> float | None:
    """Fraction of FlatQuant's accuracy gap to FP that ``fair_calib`` closes (None without both)."""
    acc = {s["config"]: s["accuracy"][0] for s in summary if s["model"] == model}
    if not {"fp", "flatquant", "fair_calib"} <= set(acc) or acc["fp"] == acc["flatquant"]:
        return None
    return (acc["fair_calib"] - acc["flatquant"]) / (acc["fp"] - acc["flatquant"])


def fair_minus_flat(rows: list[dict], n_boot: int = N_BOOT) -> dict | None:
    """``fair_calib − flatquant`` on one model's rows (:func:`paired_difference`)."""
    return paired_difference(rows, "fair_calib", "flatquant", n_boot)


def _single_run(name: str) -> bool:
    """Configurations that run once (no data, no randomness): their one row pairs with every seed of the other."""
    return name in CONFIGS and CONFIGS[name][0] == "rtn"


def paired_difference(rows: list[dict], a: str, b: str, n_boot: int = N_BOOT) -> dict | None:
    """``a − b`` on one model's rows: the paired bootstrap (:func:`fair_calib_hf.bench.paired.paired_bootstrap`)
    over the seeds both ran and the test problems, with the FP row's problems as the reference; ``None`` without
    both configurations. A configuration that runs once (``rtn`` at any precision) pairs its row with every seed
    of the other. Rows without per-problem outcomes (results written before they were stored) give the mean and
    per-seed differences of the accuracies with ``ci_low``/``ci_high`` ``None`` and the reason in ``ci``."""
    from .paired import paired_bootstrap

    by_seed = {name: {r["seed"]: r for r in rows if r["config"] == name} for name in (a, b)}
    for name, other in ((a, b), (b, a)):
        if _single_run(name) and len(by_seed[name]) == 1 and not _single_run(other):
            only = next(iter(by_seed[name].values()))
            by_seed[name] = {seed: only for seed in by_seed[other]}
    seeds = sorted(set(by_seed[a]) & set(by_seed[b]))
    if not seeds:
        return None
    fair, flat = [by_seed[a][s] for s in seeds], [by_seed[b][s] for s in seeds]
    fp = next((r for r in rows if r["config"] == "fp"), None)
    if all("correct" in r for r in fair + flat):
        result = paired_bootstrap([r["correct"] for r in fair], [r["correct"] for r in flat],
                                  fp["correct"] if fp is not None and "correct" in fp else None, n_boot=n_boot)
        result["ci"] = (f"{int(100 * result['level'])} % percentile bootstrap over test problems and seeds "
                        f"({n_boot} replicates)")
    else:
        per_seed = [a["accuracy"] - b["accuracy"] for a, b in zip(fair, flat)]
        mean = sum(per_seed) / len(per_seed)
        gap = fp["accuracy"] - sum(r["accuracy"] for r in flat) / len(flat) if fp is not None else 0.0
        result = {"mean": mean, "per_seed": per_seed, "ci_low": None, "ci_high": None,
                  "gap_closed": mean / gap if gap > 0 else None, "gap_closed_ci_low": None,
                  "gap_closed_ci_high": None, "n_seeds": len(seeds), "n_test": None,
                  "ci": "not available: these rows have no per-problem outcomes (written before they were stored)"}
    result["seeds"] = seeds
    return result


def _paired_line(model: str, stats: dict, a: str = "fair_calib", b: str = "flatquant") -> str:
    """One Markdown line stating ``a − b`` with its interval (percentage points)."""
    def pts(v):
        return f"{100 * v:+.1f}"

    text = (f"{a} − {b} = {pts(stats['mean'])} points (per seed "
            f"{', '.join(pts(v) for v in stats['per_seed'])}")
    if stats["ci_low"] is not None:
        text += f"; 95 % CI [{pts(stats['ci_low'])}, {pts(stats['ci_high'])}]"
    text += ")"
    if stats["gap_closed"] is not None:
        text += f"; closes {100 * stats['gap_closed']:.0f} % of {b}'s gap to FP"
        if stats["gap_closed_ci_low"] is not None:
            text += f" (95 % CI [{100 * stats['gap_closed_ci_low']:.0f}, {100 * stats['gap_closed_ci_high']:.0f}] %)"
    return f"- **{model}**: {text}; {stats['ci']}"


def _plots(model: str, rows: list[dict], out_dir: str) -> list[str]:
    from fair_calib_hf.diagnostics.plots import (plot_amplification, plot_flip_rate, plot_lag_ccdf,
                                                 plot_teacher_forced_prob_mse)

    first = {}
    for r in rows:
        if r["config"] != "fp" and r["config"] not in first:
            first[r["config"]] = r
    if not first:
        return []
    base = os.path.join(out_dir, model)
    lags = {"FP": next(iter(first.values()))["teacher_lags"], **{n: r["lags"] for n, r in first.items()}}
    paths = [plot_flip_rate({n: r["flip_rate_per_step"] for n, r in first.items()}, base + "-flip_rate.png"),
             plot_teacher_forced_prob_mse({n: r["prob_mse_curve"] for n, r in first.items()},
                                          base + "-tf_prob_mse.png"),
             plot_lag_ccdf(lags, base + "-lag_ccdf.png", title=f"Stability lag CCDF ({model})")]
    amplification = {n: r["amplification_curve"] for n, r in first.items() if "amplification_curve" in r}
    if amplification:
        paths.append(plot_amplification(amplification, base + "-amplification.png"))
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fair_calib_hf.bench quality", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, small evaluation sets (smoke test)")
    parser.add_argument("--json", default=None, help="also write every row to this JSON file")
    parser.add_argument("--models", nargs="+", help="zoo names or checkpoint folders (default: every zoo model)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), help="subset of configurations")
    parser.add_argument("--seeds", type=int, help="number of calibration seeds (default 5; 1 with --quick)")
    parser.add_argument("--out", default=None,
                        help="output folder of the table, quality.json and the plots (e.g. benchmarks/results/NAME); "
                             "without it only --json FILE is written")
    parser.add_argument("--threads", type=int, help="torch threads per run (default: torch's)")
    parser.add_argument("--n-probe", type=int, help="Stage I rollouts (default 512, the paper's; 16 with --quick)")
    parser.add_argument("--epochs", type=int, help="Stage II epochs (default 15, FlatQuant's; 2 with --quick)")
    parser.add_argument("--num-samples", type=int, help="calibration sequences (default 64; 16 with --quick)")
    parser.add_argument("--n-eval", type=int, help="test problems for accuracy (default 1024; 32 with --quick)")
    parser.add_argument("--tokens-per-step", type=int, default=1,
                        help="tokens committed per decoding step (default 1: steps = answer length)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="load dtype of the FP teacher and of the model calibrated (default float32)")
    parser.add_argument("--eval-split", default="test", choices=EVAL_SPLITS,
                        help="score the test split (default) or the calibration split's held-out part (problems no "
                             "calibration run uses): choose settings there, never on the test split")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows of OUT/quality.json (same settings, same model weights) and run only "
                             "the missing (model, configuration, seed) runs")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    if args.seeds:
        settings["seeds"] = tuple(range(args.seeds))
    settings["calibration"] = dict(settings["calibration"])
    for flag, key in (("n_probe", "n_probe"), ("epochs", "epochs"), ("num_samples", "num_samples")):
        if getattr(args, flag) is not None:
            settings["calibration"][key] = getattr(args, flag)
    if args.n_eval is not None:
        settings["n_eval"] = args.n_eval
    if args.tokens_per_step != 1:
        settings["tokens_per_step"] = args.tokens_per_step
    if args.dtype != "float32":
        settings["dtype"] = args.dtype
    if args.eval_split != "test":
        settings["eval_split"] = args.eval_split
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        if args.settings:
            settings = json.loads(args.settings)
        for row in run_config(args.one[0], args.one[1], **settings):
            print("ROW " + json.dumps(row))
        return
    from fair_calib_hf.zoo import available, resolve

    models = args.models or [f"zoo:{n}" for n in available()]
    if not models:
        raise SystemExit("no zoo models in this installation; pass --models PATH ...")
    configs = ["fp"] + (args.configs or list(CONFIGS))
    if args.out is None and (args.resume or not args.json):
        raise SystemExit("--resume continues the runs of an --out folder: pass --out FOLDER" if args.resume else
                         "pass --out FOLDER (the table, quality.json and the plots) or --json FILE (the rows only)")
    rows, meta = _previous_rows(args.out, settings) if args.resume else ([], {})
    if args.out is not None:
        os.makedirs(args.out, exist_ok=True)
    table = None
    for model in models:
        path = resolve(model)
        label = model.split(":", 1)[-1] if model.startswith("zoo:") else os.path.basename(os.path.normpath(model))
        fingerprint = weights_fingerprint(path)
        if any(r["model"] == label and r.get("weights") != fingerprint for r in rows):
            print(f"[quality] {label}: the weights changed since the saved rows; running it again", flush=True)
            rows = [r for r in rows if r["model"] != label]
            meta.pop(label, None)
        for name, seed in run_order(configs, settings["seeds"]):
            if any(r["model"] == label and r["config"] == name and r["seed"] == seed for r in rows):
                print(f"[quality] {label} {name} seed {seed}: kept from {args.out}/quality.json", flush=True)
                continue
            started = time.time()
            one = {**settings, "seeds": [seed], "all_seeds": list(settings["seeds"])}
            command = [sys.executable, "-m", "fair_calib_hf.bench", "quality", "--one", path, name,
                       "--settings", json.dumps(one)] + (["--threads", str(args.threads)] if args.threads else [])
            proc = subprocess.run(command, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{label} / {name} / seed {seed} failed:\n{proc.stderr[-3000:]}")
            got = [json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")]
            for r in got:
                r["model"], r["weights"] = label, fingerprint
            rows.extend(got)
            if name == "fp":
                fp = got[0]
                meta[label] = (f"decoding {fp['decoding']}; {fp['parameters']:,} parameters; down-proj input "
                               f"outlier ratio (max/median |x|) {fp['outlier_ratio']:.1f}")
            print(f"[quality] {label} {name} seed {seed}: " + ", ".join(f"{r['accuracy']:.3f}" for r in got)
                  + f" ({time.time() - started:.0f} s)", flush=True)
            table = write_results(args.out, args.json, settings, rows, meta)  # after each: a killed run keeps its rows
        if args.out is not None:
            _plots(label, [r for r in rows if r["model"] == label], args.out)
    print(table or write_results(args.out, args.json, settings, rows, meta))


def run_order(configs, seeds) -> list[tuple[str, int | None]]:
    """The ``(configuration, seed)`` runs in the order they are made: ``fp`` (seed ``None``) and ``rtn`` (no
    randomness and no data: the first seed only) first, then seed by seed every other configuration, so that an
    interrupted benchmark has complete seeds for the paired statistics (``--resume`` continues run by run)."""
    once = [name for name in configs if name == "fp" or _single_run(name)]
    order = [(name, None if name == "fp" else seeds[0]) for name in once]
    return order + [(name, seed) for seed in seeds for name in configs if name not in once]


def weights_fingerprint(path: str) -> str:
    """First 16 hex digits of the SHA-256 of a checkpoint folder's ``*.safetensors`` files (sorted by name)."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(f for f in os.listdir(path) if f.endswith(".safetensors")):
        with open(os.path.join(path, name), "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _previous_rows(out: str, settings: dict) -> tuple[list[dict], dict]:
    """Rows and per-model notes of ``out/quality.json`` when it was run with ``settings`` (else an error)."""
    path = os.path.join(out, "quality.json")
    if not os.path.isfile(path):
        return [], {}
    with open(path) as handle:
        record = json.load(handle)
    wanted = json.loads(json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}))
    if record.get("settings") != wanted:
        raise SystemExit(f"--resume: {path} was run with other settings ({record.get('settings')}); "
                         "use another --out folder")
    # (results written before the paired statistics appended the gap closed to the model's note)
    meta = {k: v.split("; fair_calib closes")[0] for k, v in record.get("meta", {}).items() if k != "settings"}
    return record["rows"], meta


def write_results(out: str | None, json_path: str | None, settings: dict, rows: list[dict], meta: dict) -> str:
    """Write ``out/quality.md`` and ``out/quality.json`` (when ``out`` is given) and ``json_path`` (when given)
    for the rows so far; return the Markdown table."""
    meta = dict(meta)
    summary = [line for model in dict.fromkeys(r["model"] for r in rows)
               for line in summarize(model, [r for r in rows if r["model"] == model])]
    paired = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        stats = fair_minus_flat([r for r in rows if r["model"] == model])
        if stats is not None:
            paired[model] = stats
    meta["settings"] = (f"calibration {settings['calibration']} on the calibration split; seeds {list(settings['seeds'])}; "
                        f"accuracy on {settings['n_eval']} {settings.get('eval_split', 'test')} problems, diagnostics and log-likelihood on "
                        f"{settings['n_diag']}; load dtype {settings.get('dtype', 'float32')}; torch {torch.__version__}, "
                        f"{torch.get_num_threads()} threads")
    others = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        for a, b in PAIRS[1:]:
            stats = paired_difference([r for r in rows if r["model"] == model], a, b)
            if stats is not None:
                others.setdefault(model, {})[f"{a} − {b}"] = stats
    table = markdown(summary, meta)
    if paired:
        table += "\n" + "\n".join(_paired_line(m, st) for m, st in paired.items()) + "\n"
    if others:
        table += "\n" + "\n".join(_paired_line(m, st, *key.split(" − ")) for m, d in others.items()
                                   for key, st in d.items()) + "\n"
    record = {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
              "summary": summary, "fair_minus_flat": paired, "paired": others, "rows": rows, "meta": meta}
    writes = [(os.path.join(out, "quality.md"), table)] if out is not None else []
    writes += [(path, json.dumps(record, indent=1)) for path in ([os.path.join(out, "quality.json")] if out else [])
               + ([json_path] if json_path else [])]
    for path, text in writes:
        write_text_atomic(path, text)
    return table
