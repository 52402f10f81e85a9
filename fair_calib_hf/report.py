"""The calibration report written next to a quantized checkpoint: ``fair_calib_report.md`` (Markdown),
``fair_calib_report.json`` (the same numbers, machine-readable) and PNG plots under ``report/``.

Contents: the settings (the serialized ``FairCalibConfig`` plus load options), the calibration cost (wall time,
Stage I time, samples, compute device, peak memory), the reconstruction error per block and per quantized
linear (what :func:`fair_calib_hf.calibration.calibrate` recorded), the Stage I position prior (shape and
plot, ``fair_calib`` only), and, when an evaluation set was available, the frontier diagnostics of the
quantized model against its full-precision teacher (:func:`fair_calib_hf.diagnostics.compare_models`) and
task accuracy.
"""
from __future__ import annotations

import json
import math
import os

from .diagnostics.plots import _pyplot, _save, legend_outside

FULL_PRECISION = "full precision"
QUANTIZED = "quantized"
"""How every human-facing output (report, plots, CLI) names the two models; the JSON keeps the keys
``teacher`` (full precision) and ``student`` (quantized) of :class:`~fair_calib_hf.diagnostics.FrontierReport`."""
REPORT_MD = "fair_calib_report.md"
REPORT_JSON = "fair_calib_report.json"
PLOTS_DIR = "report"


def plot_block_errors(blocks: list[dict], path: str) -> str:
    """Bar chart of the relative reconstruction error of every block (log scale)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(blocks) + 2), 3.2))
    ax.bar(range(len(blocks)), [b["rel_mse"] for b in blocks], color="tab:blue")
    ax.set_xticks(range(len(blocks)))
    ax.set_yscale("log")
    ax.set_xlabel("block")
    ax.set_ylabel("relative output MSE")
    ax.set_title("Block reconstruction error")
    return _save(fig, path)


def plot_layer_errors(blocks: list[dict], path: str) -> str:
    """One line per linear name (q/k/v/o/gate/up/down ...) across blocks (log scale)."""
    plt = _pyplot()
    names = sorted({n for b in blocks for n in b["layers"]})
    fig, ax = plt.subplots(figsize=(max(5.5, 0.35 * len(blocks) + 4), 3.4))  # room for the legend
    for name in names:
        ax.plot(range(len(blocks)), [b["layers"].get(name, float("nan")) for b in blocks], marker="o", label=name)
    ax.set_xticks(range(len(blocks)))  # whole blocks only
    ax.set_yscale("log")
    ax.set_xlabel("block")
    ax.set_ylabel("relative output MSE")
    ax.set_title("Per-linear reconstruction error")
    legend_outside(ax, fontsize=7)
    return _save(fig, path)


def plot_prior(weights: list[float], window: int, path: str) -> str:
    """The Stage I position prior over the calibration sequence, the probe window shaded."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.0))
    ax.plot(range(len(weights)), weights, color="tab:red")
    if window:
        ax.axvspan(len(weights) - window, len(weights) - 1, color="tab:red", alpha=0.08, label="probe window")
        ax.legend(fontsize=8)
    ax.set_xlabel("position in the calibration sequence")
    ax.set_ylabel("weight (mean 1)")
    ax.set_title("Stage I position prior")
    return _save(fig, path)


def display_names(per_model: dict) -> dict:
    """``{"teacher": x, "student": y}`` → ``{"full precision": x, "quantized": y}`` (other keys unchanged)."""
    names = {"teacher": FULL_PRECISION, "student": QUANTIZED}
    return {names.get(k, k): v for k, v in per_model.items()}


def _mb(n: float | None) -> str:
    return "n/a" if not n else f"{n / 2**20:,.1f} MiB"


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def amplification_value(frontier: dict) -> str:
    """The mean amplification of a ``FrontierReport.to_dict()`` as text, or ``"n/a (no false commit)"`` when no
    prompt had a false commit (the mean is then undefined, NaN)."""
    value = frontier["amplification_mean"]
    if frontier["false_commit_rate"] == 0 or value != value:
        return "n/a (no false commit)"
    return f"{value:.3e}"


def headline(frontier: dict | None, accuracy: dict | None, calibration: dict) -> str:
    """One line of the report's main numbers: task accuracy of both models (n, 95 % interval) and the
    frontier flip rate when measured, else the largest block reconstruction error, else the packed count."""
    parts = []
    if accuracy:
        from .zoo.evaluate import describe_accuracy

        parts += [f"{QUANTIZED} {describe_accuracy(accuracy['student'])}",
                  f"{FULL_PRECISION} {describe_accuracy(accuracy['teacher'])}"]
    if frontier:
        parts.append(f"frontier flip rate {frontier['flip_rate']:.4f}")
    if not parts and calibration["blocks"]:
        worst = max(calibration["blocks"], key=lambda b: b["rel_mse"])
        parts.append(f"largest block reconstruction error {_fmt(worst['rel_mse'])} ({worst['name']})")
    return ", ".join(parts) or f"{calibration['converted_linears']} linears packed (data-free, nothing measured)"


def _gptq_lines(blocks: list[dict]) -> list[str]:
    """The report line on GPTQ rounding: on how many linears its weighted reconstruction error on the calibration
    inputs is below round-to-nearest's on the same grid, and the median ratio (none without GPTQ)."""
    pairs = [tuple(v) for b in blocks for v in b.get("gptq_weighted_error", {}).values()]
    if not pairs:
        return []
    ratios = sorted(g / r for g, r in pairs if r > 0)
    median = ratios[len(ratios) // 2] if ratios else float("nan")
    return [f"- GPTQ weight rounding: weighted reconstruction error on the calibration inputs below round-to-nearest's "
            f"on {sum(g < r for g, r in pairs)} of {len(pairs)} linears (median GPTQ/RTN ratio {median:.3f})"]


def calibration_summary(report) -> dict:
    """The JSON-clean numbers of a :class:`~fair_calib_hf.calibration.CalibrationReport`."""
    from .calibration.states import describe as describe_states

    blocks = [{"name": b.name, "rel_mse": b.rel_mse, "layers": dict(b.layers), "rescaled": list(b.rescaled),
               **({"epoch_losses": b.extra["epoch_losses"]} if "epoch_losses" in b.extra else {}),
               **({"gptq_weighted_error": {n: list(v) for n, v in b.extra["gptq_weighted_error"].items()}}
                  if "gptq_weighted_error" in b.extra else {})}
              for b in report.blocks]
    prior = None
    if report.prior is not None:
        prior = {"positions": int(report.prior.weights.numel()), "window": int(report.prior.frontier.numel()),
                 "weights": [float(x) for x in report.prior.weights], "metadata": report.prior.metadata}
    return {"method": report.method, "num_samples": report.num_samples,
            "converted_linears": len(report.converted_modules), "seconds": report.seconds,
            "stage1_seconds": report.stage1_seconds, "device": getattr(report, "device", "cpu"),
            "peak_memory": dict(getattr(report, "peak_memory", {})), "blocks": blocks, "prior": prior,
            "states": describe_states(getattr(report, "states", None))}


def write_report(folder: str, *, model: str, config: dict, calibration: dict, load_settings: dict | None = None,
                 sizes: dict | None = None, frontier: dict | None = None, accuracy: dict | None = None,
                 eval_source: str | None = None, data_source: str | None = None) -> str:
    """Write the Markdown + JSON report and the plots into ``folder``; returns the Markdown path.

    ``calibration`` is :func:`calibration_summary`'s dict; ``frontier`` a ``FrontierReport.to_dict()``;
    ``accuracy`` ``{"student": result, "teacher": result}`` of :func:`fair_calib_hf.zoo.evaluate.evaluate`;
    ``data_source`` describes the calibration data used (a ``calibration data`` row of the settings). Data given
    in memory (not a dataset name or path, e.g. a zoo task's calibration split) was not loaded by
    ``calibration_dataset`` / ``dataset_config`` / ``dataset_split``: those rows are left out, and so are
    ``dataset_text_column`` / ``apply_chat_template`` at their defaults."""
    from .config import applicable_fields
    from .diagnostics.plots import (plot_amplification, plot_flip_rate, plot_lag_ccdf,
                                    plot_teacher_forced_prob_mse)

    plots = os.path.join(folder, PLOTS_DIR)
    lines = [f"# FAIR-Calib quantization report: `{model}`", ""]
    applied = applicable_fields(config.get("method", ""), calibration["num_samples"] > 0,
                                config.get("calibration_states", "observed"))
    lines += ["## Settings", "", f"The settings that applied to method `{config.get('method')}`"
              + ("" if calibration["num_samples"] else " without calibration data")
              + " (`config.json` holds every field, defaults included).", "",
              "| setting | value |", "|---|---|"]
    unused = set()
    if calibration["num_samples"] and not isinstance(config.get("calibration_dataset"), str):
        unused = {"calibration_dataset", "dataset_config", "dataset_split"}  # in-memory data: not loaded by name
        unused |= {k for k, default in (("dataset_text_column", "text"), ("apply_chat_template", False))
                   if config.get(k) == default}  # at their defaults they did nothing to data given in memory
    if data_source and calibration["num_samples"]:
        lines.append(f"| calibration data | {data_source} |")
    for key in sorted(config):
        if key in ("quant_method",) or key not in applied or key in unused:
            continue
        lines.append(f"| `{key}` | `{json.dumps(config[key])}` |")
    for key, value in sorted((load_settings or {}).items()):
        lines.append(f"| load `{key}` | `{value}` |")
    c = calibration
    lines += ["", "## Calibration cost", "",
              f"- method `{c['method']}` at W{config.get('w_bits', 4)}A{config.get('a_bits', 4)}, "
              f"{c['num_samples']} calibration sequences, {c['converted_linears']} linears "
              f"packed, compute device `{c['device']}`",
              f"- wall time {c['seconds']:.2f} s" + (f" (Stage I probing {c['stage1_seconds']:.2f} s)"
                                                     if c.get("prior") else ""),
              *_gptq_lines(c["blocks"]),
              *([f"- Stage II states `{c['states']['kind']}`: {c['states']['count']} states "
                 f"({c['states']['seconds']:.2f} s to produce)"] if c.get("states", {}).get("count") else []),
              f"- peak memory: process RSS {_mb(c['peak_memory'].get('cpu_rss_bytes'))}"
              + (f", CUDA allocated {_mb(c['peak_memory']['cuda_allocated_bytes'])}"
                 if "cuda_allocated_bytes" in c["peak_memory"] else "")]
    if sizes:
        lines.append(f"- checkpoint size on disk {_mb(sizes.get('disk_bytes'))} vs float "
                     f"{_mb(sizes.get('float_bytes'))}")
    lines += ["", "## Reconstruction error", ""]
    if c["blocks"]:
        plot_block_errors(c["blocks"], os.path.join(plots, "block_error.png"))
        names = sorted({n for b in c["blocks"] for n in b["layers"]})
        lines += ["Relative output MSE `Σ‖h_q − h_fp‖² / Σ‖h_fp‖²` of every block on the calibration inputs, "
                  "and of every quantized linear inside it (against a float copy of the block on the same "
                  "inputs; errors of earlier linears of the block propagate to later ones"
                  + ("; `*`: compared after undoing a folded per-channel output scale" if any(
                      b["rescaled"] for b in c["blocks"]) else "") + ").", "",
                  "![block error](report/block_error.png)", ""]
        if names:
            plot_layer_errors(c["blocks"], os.path.join(plots, "layer_error.png"))
            lines += ["![per-linear error](report/layer_error.png)", ""]
        lines += ["| block | block error | " + " | ".join(f"`{n}`" for n in names) + " |",
                  "|---|---|" + "---|" * len(names)]
        for b in c["blocks"]:
            cells = [_fmt(b["layers"].get(n, float("nan"))) + ("*" if n in b["rescaled"] else "") for n in names]
            lines.append(f"| `{b['name']}` | {_fmt(b['rel_mse'])} | " + " | ".join(cells) + " |")
    else:
        lines.append("Data-free calibration: no calibration inputs, so no reconstruction error was measured.")
    lines += ["", "## Stage I position prior", ""]
    if c.get("prior"):
        p = c["prior"]
        plot_prior(p["weights"], p["window"], os.path.join(plots, "prior.png"))
        meta = p.get("metadata", {})
        lines += [f"- one weight per position of a calibration sequence ({p['positions']} positions, mean 1), "
                  f"used by Stage II's loss; the probe window is the last {p['window']} positions, which Stage I "
                  f"rollouts of the full-precision model decode ({', '.join(f'{k}={meta[k]}' for k in sorted(meta))})",
                  "- stored in the checkpoint's safetensors header and as `fair_calib_prior.safetensors` "
                  "(reuse with `--prior` / `FairCalibConfig(prior_path=...)`)", "", "![prior](report/prior.png)"]
    else:
        lines.append(f"None (method `{c['method']}` does not probe).")
    lines += ["", "## Frontier diagnostics vs full precision", ""]
    if frontier:
        plot_flip_rate({QUANTIZED: frontier["flip_rate_per_step"]}, os.path.join(plots, "flip_rate.png"))
        plot_amplification({QUANTIZED: frontier["amplification_curve"]}, os.path.join(plots, "amplification.png"))
        plot_teacher_forced_prob_mse({QUANTIZED: frontier["teacher_forced_prob_mse_curve"]},
                                     os.path.join(plots, "prob_mse.png"))
        plot_lag_ccdf(display_names(frontier["lags"]), os.path.join(plots, "lag_ccdf.png"))
        mm = frontier["mismatch"]
        k = mm["teacher"].get("remask_positions")
        remasked = (f"; each committed position read with itself re-masked{f', {k} per prompt' if k else ''}"
                    if mm["teacher"].get("remasked") else "")
        lines += [f"Evaluation prompts: {eval_source or 'n/a'}; decoding {json.dumps(frontier['settings'])}. "
                  f"Two models: the **{FULL_PRECISION}** model (the teacher; `teacher` in the JSON) and the "
                  f"**{QUANTIZED}** model (`student` in the JSON). The frontier of a step is the set of "
                  "positions committed at that step. Definitions: `fair_calib_hf/diagnostics/metrics.py`.", "",
                  f"| metric | {FULL_PRECISION} | {QUANTIZED} | definition |", "|---|---|---|---|",
                  f"| frontier flip rate | 0 | {_fmt(frontier['flip_rate'])} | replaying the {FULL_PRECISION} "
                  f"model's decoding (teacher-forced): fraction of each step's frontier where the {QUANTIZED} "
                  "model's top-1 token differs (mean over sequences and steps) |",
                  f"| probability MSE, teacher-forced | 0 | {_fmt(frontier['teacher_forced_prob_mse_mean'])} | "
                  "Σ_v (p_quantized(v) − p_fp(v))² per window position (0 to 2), mean along the same replay |",
                  f"| prompts with a false commit | 0 | {_fmt(frontier['false_commit_rate'])} | the {QUANTIZED} "
                  f"model decoding on its own: fraction of prompts where it commits a token the {FULL_PRECISION} "
                  "model's output does not have at that position |",
                  f"| amplification | 0 | {amplification_value(frontier)} | on the {QUANTIZED} model's "
                  "own states after its first false commit: Σ_v (p_quantized(v) − p_fp(v))² over still-masked "
                  "positions, mean over the later steps |",
                  f"| post-commit mismatch (mean disagree) | {_fmt(mm['teacher']['mean_disagree'])} | "
                  f"{_fmt(mm['student']['mean_disagree'])} | each model decoding on its own: per committed "
                  "position, the fraction of later steps at which its top-1 differs from the token it committed "
                  f"(mean over {mm['teacher']['positions']} / {mm['student']['positions']} positions{remasked}) |",
                  f"| post-commit mismatch (never agree) | {_fmt(mm['teacher']['never_agree'])} | "
                  f"{_fmt(mm['student']['never_agree'])} | fraction of committed positions whose top-1 never "
                  f"agrees again with the committed token{remasked} |",
                  f"| stability lag p90 (steps) | {_fmt(frontier['lag_p90']['teacher'])} | "
                  f"{_fmt(frontier['lag_p90']['student'])} | steps from a position's commit until the model's "
                  "top-1 agrees with the committed token for good; 90th percentile |",
                  f"| token agreement | 1 | {_fmt(frontier['token_agreement'])} | fraction of decoded tokens "
                  f"equal to the {FULL_PRECISION} model's |",
                  f"| sequence agreement | 1 | {_fmt(frontier['sequence_agreement'])} | fraction of sequences "
                  f"decoded identically to the {FULL_PRECISION} model |"]
        if accuracy:
            lines.append(f"| task accuracy ({accuracy['student']['task']}, {accuracy['student']['split']}, "
                         f"n={accuracy['student']['n']}) | {_fmt(accuracy['teacher']['accuracy'])} | "
                         f"{_fmt(accuracy['student']['accuracy'])} | exact match of the task's answer "
                         "(`fair_calib_hf/zoo/tasks.py`) |")
        lines += ["", "![flip rate](report/flip_rate.png) ![amplification](report/amplification.png) "
                  "![teacher-forced probability MSE](report/prob_mse.png) ![lag CCDF](report/lag_ccdf.png)"]
    else:
        lines.append("Not measured: no evaluation set (a zoo model's task, or `--eval-prompts FILE`).")
    md = os.path.join(folder, REPORT_MD)
    with open(md, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(folder, REPORT_JSON), "w") as f:
        json.dump({"model": model, "config": config, "load_settings": load_settings or {}, "calibration": c,
                   "sizes": sizes or {}, "frontier": frontier, "accuracy": accuracy, "eval_source": eval_source,
                   "data_source": data_source},
                  f, indent=1, sort_keys=True, default=str)
    return md
