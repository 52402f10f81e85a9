"""Diagnostic plots (matplotlib, Agg backend, PNG files)."""
from __future__ import annotations

import os

import torch

from .metrics import lag_ccdf


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def plot_lag_ccdf(lags: dict, path: str, title: str = "Stability lag CCDF") -> str:
    """``lags``: ``{model name: 1-D lags}``; plots ``P(lag ≥ d)`` (log y) for each model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, values in lags.items():
        d, p = lag_ccdf(torch.as_tensor(values, dtype=torch.long))
        ax.step(d.numpy(), p.numpy(), where="post", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("lag d (steps from commit to persistent agreement)")
    ax.set_ylabel("P(lag ≥ d)")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def _curves(curves: dict, path: str, ylabel: str, title: str, top: float,
            xlabel: str = "decoding step t") -> str:
    """Curves of non-negative per-step values; the y axis starts at 0 and, when every value is 0 (or NaN),
    spans ``[0, top]`` with an "all zero" note instead of matplotlib's meaningless ±0.04 around 0. NaN values
    (steps no sequence contributes to) are left as gaps."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    peak = 0.0
    for name, values in curves.items():
        values = [float(v) for v in values]
        peak = max([peak] + [v for v in values if v == v])
        ax.plot(range(len(values)), values, label=name)
    if peak == 0.0:
        ax.set_ylim(0, top)
        ax.text(0.5, 0.5, "all zero", transform=ax.transAxes, ha="center", va="center", color="gray")
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def plot_amplification(curves: dict, path: str) -> str:
    """``curves``: ``{quantized model name: probability MSE at offset k from the first false commit, on the
    quantized model's own trajectory, over still-masked positions}`` (``FrontierReport.amplification_curve``,
    each value in [0, 2]; NaN offsets, where no prompt contributes, are left as gaps)."""
    return _curves(curves, path, "Σ_v (p_quantized − p_full precision)², still masked",
                   "Amplification after the first false commit", 2.0,
                   xlabel="steps k after the first false commit (k = 0: the state it was made on)")


def plot_teacher_forced_prob_mse(curves: dict, path: str) -> str:
    """``curves``: ``{quantized model name: per-step probability MSE on the full-precision model's states,
    every window position}`` (``FrontierReport.teacher_forced_prob_mse_curve``, each value in [0, 2])."""
    return _curves(curves, path, "Σ_v (p_quantized − p_full precision)²", "Probability MSE, teacher-forced", 2.0)


def plot_flip_rate(curves: dict, path: str) -> str:
    """``curves``: ``{quantized model name: per-step frontier flip rate}`` (each in [0, 1])."""
    return _curves(curves, path, "frontier flip rate", "Frontier decision flips per step", 1.0)
