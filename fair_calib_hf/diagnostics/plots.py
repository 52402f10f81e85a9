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


def _curves(curves: dict, path: str, ylabel: str, title: str, xlabel: str = "decoding step t") -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, values in curves.items():
        ax.plot(range(len(values)), [float(v) for v in values], label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def plot_amplification(curves: dict, path: str) -> str:
    """``curves``: ``{student name: probability MSE at offset k from the first false commit, on the student's
    own trajectory, over still-masked positions}`` (``FrontierReport.amplification_curve``; NaN offsets, where
    no prompt contributes, are left as gaps)."""
    return _curves(curves, path, "Σ_v (p_student − p_teacher)², still-masked positions",
                   "Amplification after the first false commit",
                   xlabel="steps k after the first false commit (k = 0: the state it was made on)")


def plot_teacher_forced_prob_mse(curves: dict, path: str) -> str:
    """``curves``: ``{student name: per-step probability MSE on the teacher's states, every window position}``
    (``FrontierReport.teacher_forced_prob_mse_curve``)."""
    return _curves(curves, path, "Σ_v (p_student − p_teacher)²", "Probability MSE, teacher-forced")


def plot_flip_rate(curves: dict, path: str) -> str:
    """``curves``: ``{student name: per-step frontier flip rate}``."""
    return _curves(curves, path, "frontier flip rate", "Frontier decision flips per step")
