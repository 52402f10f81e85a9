"""Quantization quality on the trained zoo models: task accuracy and frontier diagnostics per method.

For each zoo model (``fair_calib_hf.zoo``): the full-precision (FP) model, then every configuration of
:data:`CONFIGS` (``rtn``, ``quarot``, ``flatquant``, ``fair_calib`` and the Stage I ablations of ``fair_calib``)
calibrated on the task's **calibration split** with each calibration seed (the seed draws the calibration
sequences and drives the method's own randomness), and scored on the **test split**:

* ``accuracy``: exact match over ``n_eval`` test problems (mean ± std over seeds);
* frontier diagnostics on the first ``n_diag`` test prompts (:func:`fair_calib_hf.diagnostics.compare_models`):
  flip rate (teacher-forced replay), post-commit mismatch (mean-disagree, never-agree) of the student's own
  trajectory, p90 of the student's stability lag, and the probability MSE along the teacher's trajectory;
* ``log_lik``: Monte-Carlo masked log-likelihood of the reference answers of the same ``n_diag`` test problems,
  nats per answer token (:func:`fair_calib_hf.zoo.evaluate.answer_log_likelihood`, ``MC_NUM`` draws each);
* calibration wall time (s) and peak resident memory over the loaded float model (MB).

``rtn`` has no randomness and no data: it runs once (std 0). The ``uniform``-prior ablation of ``fair_calib`` *is*
``flatquant`` (same Stage II, unweighted MSE), so it is not run twice. Each (model, configuration) runs in a
fresh subprocess so that its peak memory is its own.

Also reported per model: the activation-outlier ratio at the MLP down-projection input (largest |x| over the
median |x|, on the calibration sequences, the largest over the blocks), the FP model's test accuracy, and the
checkpoint sizes. Output: a Markdown table printed and written to ``OUT/quality.md``, ``OUT/quality.json``, and
per model the plots ``OUT/<model>-flip_rate.png``, ``-amplification.png``, ``-lag_ccdf.png`` (seed 0 of each
configuration). ``--quick`` runs one seed and small evaluation sets (a smoke test of the whole pipeline).
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

from .common import rss_mb

# name -> (method, FairCalibConfig overrides)
CONFIGS = {
    "rtn": ("rtn", {}),
    "quarot": ("quarot", {}),
    "flatquant": ("flatquant", {}),
    "fair_calib": ("fair_calib", {}),
    "fair_calib/frontier-only": ("fair_calib", {"prior_terms": "frontier"}),
    "fair_calib/reliability-only": ("fair_calib", {"prior_terms": "reliability"}),
    "fair_calib/flat-schedule": ("fair_calib", {"prior_schedule": "flat"}),
}
MAIN_CONFIGS = ("rtn", "quarot", "flatquant", "fair_calib")
CALIBRATION = dict(num_samples=64, epochs=10, n_probe=64, probe_batch_size=16, batch_size=4)
MC_NUM = 16
FULL = dict(seeds=(0, 1, 2), n_eval=256, n_diag=64, calibration=CALIBRATION)
QUICK = dict(seeds=(0,), n_eval=32, n_diag=16,
             calibration=dict(num_samples=16, epochs=2, n_probe=16, probe_batch_size=16, batch_size=4))


def _load(path, dtype: str = "float32"):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(path, trust_remote_code=True, dtype=getattr(torch, dtype)).eval()
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


def _task_inputs(task, tokenizer, n_eval):
    examples = task.examples("test", n_eval, seed=0)
    prompts, _ = task.encode(examples, tokenizer)
    return examples, prompts


def run_config(model_path: str, name: str, seeds, n_eval: int, n_diag: int, calibration: dict,
               tokens_per_step: int = 1, dtype: str = "float32") -> list[dict]:
    """Calibrate ``name`` for each seed and score it (FP when ``name == "fp"``); rows as in the module doc.
    ``tokens_per_step`` commits that many tokens per decoding step (``steps = gen_length / tokens_per_step``);
    ``dtype`` (``"float32"``, ``"bfloat16"``, ``"float16"``) is the load dtype of the teacher and the student
    (calibration runs on the model loaded in that dtype, as a user's ``from_pretrained(..., dtype=...)``)."""
    import resource

    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from fair_calib_hf import FairCalibConfig
    from fair_calib_hf.architectures import get_adapter
    from fair_calib_hf.diagnostics import compare_models
    from fair_calib_hf.zoo import task_of
    from fair_calib_hf.zoo.evaluate import (answer_log_likelihood, calibration_geometry, decode_settings,
                                            default_decode_config, generate_answers)

    hf_logging.disable_progress_bar()
    teacher, tokenizer = _load(model_path, dtype)
    task = task_of(model_path)
    family = get_adapter(teacher).family
    examples, prompts = _task_inputs(task, tokenizer, n_eval)
    if task.gen_length % tokens_per_step:
        raise ValueError(f"tokens_per_step={tokens_per_step} does not divide gen_length={task.gen_length}")
    steps = task.gen_length // tokens_per_step
    plain = default_decode_config(task, family, record=False, steps=steps)
    recorded = default_decode_config(task, family, record=True, steps=steps)
    if name == "fp":
        texts, _ = generate_answers(teacher, tokenizer, task, examples, plain)
        calib = torch.tensor(task.calibration_sequences(tokenizer, calibration["num_samples"], seed=0))
        return [{"config": "fp", "seed": None, "accuracy": task.accuracy(texts, examples),
                 "log_lik": answer_log_likelihood(teacher, tokenizer, task, examples[:n_diag], mc_num=MC_NUM),
                 "outlier_ratio": outlier_ratio(teacher, calib), "decoding": decode_settings(plain),
                 "parameters": sum(p.numel() for p in teacher.parameters())}]
    method, overrides = CONFIGS[name]
    teacher_result = None
    rows = []
    for seed in seeds:
        data = task.calibration_sequences(tokenizer, calibration["num_samples"], seed=seed)
        # Stage I probes with the deployment sampler's block length (LLaDA's blocks of 8 here; the whole window
        # for Dream) and number of steps
        cfg = FairCalibConfig(method=method, calibration_dataset=data, seed=seed,
                              **calibration_geometry(task, family, steps=steps), **calibration, **overrides)
        before = rss_mb()
        started = time.perf_counter()
        student = AutoModel.from_pretrained(model_path, trust_remote_code=True, quantization_config=cfg,
                                            dtype=getattr(torch, dtype)).eval()
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        texts, _ = generate_answers(student, tokenizer, task, examples, plain)
        if teacher_result is None:
            from fair_calib_hf.decoding import diffusion_generate

            teacher_result = diffusion_generate(teacher, prompts[:n_diag], config=recorded)
        rep = compare_models(teacher, student, prompts[:n_diag], config=recorded, teacher_result=teacher_result)
        report = student.hf_quantizer.calibration_report
        rows.append({
            "config": name, "seed": seed, "accuracy": task.accuracy(texts, examples),
            "log_lik": answer_log_likelihood(student, tokenizer, task, examples[:n_diag], mc_num=MC_NUM),
            "flip_rate": rep.flip_rate, "mean_disagree": rep.mismatch["student"]["mean_disagree"],
            "never_agree": rep.mismatch["student"]["never_agree"], "lag_p90": rep.lag_p90["student"],
            "prob_mse": rep.prob_mse_mean, "calib_seconds": round(seconds, 2),
            "stage1_seconds": round(report.stage1_seconds, 2), "probe_block_length": cfg.probe_block_length,
            "peak_mb": round(max(peak - before, 0.0), 1),
            "block_rel_mse": [round(b.rel_mse, 5) for b in report.blocks],
            "flip_rate_per_step": rep.flip_rate_per_step, "prob_mse_curve": rep.prob_mse_curve,
            "lags": rep.lags["student"], "teacher_lags": rep.lags["teacher"],
        })
        if method == "rtn":  # no data, no randomness: one run
            break
        del student
    return rows


def _mean_std(values):
    values = [v for v in values if v is not None and v == v]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(model: str, rows: list[dict]) -> list[dict]:
    """One line per configuration: mean ± std over seeds of every metric."""
    out = []
    fp = next(r for r in rows if r["config"] == "fp")
    out.append({"model": model, "config": "fp", "seeds": 0, "accuracy": (fp["accuracy"], 0.0),
                "log_lik": (fp.get("log_lik", float("nan")), 0.0)})
    for name in CONFIGS:
        group = [r for r in rows if r["config"] == name]
        if not group:
            continue
        line = {"model": model, "config": name, "seeds": len(group)}
        for key in ("accuracy", "log_lik", "flip_rate", "mean_disagree", "never_agree", "lag_p90", "prob_mse",
                    "calib_seconds", "peak_mb"):
            line[key] = _mean_std([r.get(key) for r in group])
        out.append(line)
    return out


def _fmt(pair, scale=1.0, digits=1):
    mean, std = pair
    if mean != mean:
        return "–"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def markdown(summary: list[dict], meta: dict) -> str:
    """The results table (accuracy and rates in %)."""
    head = ("| model | config | seeds | accuracy % | log-lik nats/tok | flip rate % | mean-disagree % | "
            "never-agree % | lag p90 | prob. MSE ×1e3 | calib. s | peak MB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in summary:
        if s["config"] == "fp":
            lines.append(f"| {s['model']} | FP | – | {_fmt(s['accuracy'], 100)} | {_fmt(s['log_lik'], 1, 3)} "
                         "| – | – | – | – | – | – | – |")
            continue
        lines.append(" | ".join([
            f"| {s['model']}", s["config"], str(s["seeds"]), _fmt(s["accuracy"], 100), _fmt(s["log_lik"], 1, 3),
            _fmt(s["flip_rate"], 100, 2),
            _fmt(s["mean_disagree"], 100, 2), _fmt(s["never_agree"], 100, 2), _fmt(s["lag_p90"], 1, 1),
            _fmt(s["prob_mse"], 1e3, 2), _fmt(s["calib_seconds"], 1, 0), _fmt(s["peak_mb"], 1, 0)]) + " |")
    notes = [f"- **{m}**: {d}" for m, d in meta.items()]
    return "\n".join(lines + [""] + notes) + "\n"


def gap_closed(summary: list[dict], model: str) -> float | None:
    """Fraction of FlatQuant's accuracy gap to FP that ``fair_calib`` closes (None without both)."""
    acc = {s["config"]: s["accuracy"][0] for s in summary if s["model"] == model}
    if not {"fp", "flatquant", "fair_calib"} <= set(acc) or acc["fp"] == acc["flatquant"]:
        return None
    return (acc["fair_calib"] - acc["flatquant"]) / (acc["fp"] - acc["flatquant"])


def _plots(model: str, rows: list[dict], out_dir: str) -> list[str]:
    from fair_calib_hf.diagnostics.plots import plot_amplification, plot_flip_rate, plot_lag_ccdf

    first = {}
    for r in rows:
        if r["config"] != "fp" and r["config"] not in first:
            first[r["config"]] = r
    if not first:
        return []
    base = os.path.join(out_dir, model)
    lags = {"FP": next(iter(first.values()))["teacher_lags"], **{n: r["lags"] for n, r in first.items()}}
    return [plot_flip_rate({n: r["flip_rate_per_step"] for n, r in first.items()}, base + "-flip_rate.png"),
            plot_amplification({n: r["prob_mse_curve"] for n, r in first.items()}, base + "-amplification.png"),
            plot_lag_ccdf(lags, base + "-lag_ccdf.png", title=f"Stability lag CCDF ({model})")]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fair_calib_hf.bench quality", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, small evaluation sets (smoke test)")
    parser.add_argument("--json", default=None, help="also write every row to this JSON file")
    parser.add_argument("--models", nargs="+", help="zoo names or checkpoint folders (default: every zoo model)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), help="subset of configurations")
    parser.add_argument("--seeds", type=int, help="number of calibration seeds (default 3; 1 with --quick)")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"), help="output folder")
    parser.add_argument("--threads", type=int, help="torch threads per run (default: torch's)")
    parser.add_argument("--tokens-per-step", type=int, default=1,
                        help="tokens committed per decoding step (default 1: steps = answer length)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="load dtype of the FP teacher and of the model calibrated (default float32)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows of OUT/quality.json (same settings, same model weights) and run only "
                             "the missing (model, configuration) pairs")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    if args.seeds:
        settings["seeds"] = tuple(range(args.seeds))
    if args.tokens_per_step != 1:
        settings["tokens_per_step"] = args.tokens_per_step
    if args.dtype != "float32":
        settings["dtype"] = args.dtype
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
    rows, meta = _previous_rows(args.out, settings) if args.resume else ([], {})
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
        for name in configs:
            if any(r["model"] == label and r["config"] == name for r in rows):
                print(f"[quality] {label} {name}: kept from {args.out}/quality.json", flush=True)
                continue
            started = time.time()
            command = [sys.executable, "-m", "fair_calib_hf.bench", "quality", "--one", path, name,
                       "--settings", json.dumps(settings)] + (["--threads", str(args.threads)] if args.threads else [])
            proc = subprocess.run(command, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{label} / {name} failed:\n{proc.stderr[-3000:]}")
            got = [json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")]
            for r in got:
                r["model"], r["weights"] = label, fingerprint
            rows.extend(got)
            if name == "fp":
                fp = got[0]
                meta[label] = (f"decoding {fp['decoding']}; {fp['parameters']:,} parameters; down-proj input "
                               f"outlier ratio (max/median |x|) {fp['outlier_ratio']:.1f}")
            print(f"[quality] {label} {name}: " + ", ".join(f"{r['accuracy']:.3f}" for r in got)
                  + f" ({time.time() - started:.0f} s)", flush=True)
            table = write_results(args.out, args.json, settings, rows, meta)  # after each: a killed run keeps its rows
        _plots(label, [r for r in rows if r["model"] == label], args.out)
    print(table or write_results(args.out, args.json, settings, rows, meta))


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
    meta = {k: v.split("; fair_calib closes")[0] for k, v in record.get("meta", {}).items() if k != "settings"}
    return record["rows"], meta


def write_results(out: str, json_path: str | None, settings: dict, rows: list[dict], meta: dict) -> str:
    """Write ``out/quality.md`` and ``out/quality.json`` (and ``json_path``) for the rows so far; return the
    Markdown table."""
    meta = dict(meta)
    summary = [line for model in dict.fromkeys(r["model"] for r in rows)
               for line in summarize(model, [r for r in rows if r["model"] == model])]
    for model in dict.fromkeys(r["model"] for r in rows):
        closed = gap_closed(summary, model)
        if closed is not None and model in meta:
            meta[model] += f"; fair_calib closes {100 * closed:.0f} % of flatquant's accuracy gap to FP"
    meta["settings"] = (f"calibration {settings['calibration']} on the calibration split; seeds {list(settings['seeds'])}; "
                        f"accuracy on {settings['n_eval']} test problems, diagnostics and log-likelihood on "
                        f"{settings['n_diag']}; load dtype {settings.get('dtype', 'float32')}; torch {torch.__version__}, "
                        f"{torch.get_num_threads()} threads")
    table = markdown(summary, meta)
    record = {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
              "summary": summary, "rows": rows, "meta": meta}
    writes = [(os.path.join(out, "quality.md"), table)]
    writes += [(path, json.dumps(record, indent=1)) for path in [os.path.join(out, "quality.json")]
               + ([json_path] if json_path else [])]
    for path, text in writes:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    return table
