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
    """Lay ``fig`` out (labels and legends inside the image), write it as a PNG to ``path``, close it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def legend_outside(ax, **kwargs) -> None:
    """The legend to the right of the axes, where it cannot cover data (``_save`` keeps it in the image)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)


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
    legend_outside(ax, fontsize=8)
    return _save(fig, path)


def _curves(curves: dict, path: str, ylabel: str, title: str, top: float,
            xlabel: str = "decoding step t", empty: str = "no data") -> str:
    """Curves of non-negative per-step values; the y axis starts at 0 and, when every value is 0 or NaN,
    spans ``[0, top]`` with a note instead of matplotlib's meaningless ±0.04 around 0: "all zero" when some
    value is 0, ``empty`` when every value is NaN (nothing was measured). NaN values (steps no sequence
    contributes to) are left as gaps."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    peak, measured = 0.0, False
    for name, values in curves.items():
        values = [float(v) for v in values]
        measured = measured or any(v == v for v in values)
        peak = max([peak] + [v for v in values if v == v])
        ax.plot(range(len(values)), values, label=name)
    if not measured:  # no data to place the x axis: span the curve's length
        ax.set_xlim(0, max(1, max((len(v) for v in curves.values()), default=1) - 1))
    if peak == 0.0:
        ax.set_ylim(0, top)
        ax.text(0.5, 0.5, "all zero" if measured else empty, transform=ax.transAxes, ha="center", va="center",
                color="gray")
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    legend_outside(ax, fontsize=8)
    return _save(fig, path)


def plot_amplification(curves: dict, path: str) -> str:
    """``curves``: ``{quantized model name: probability MSE at offset k from the first false commit, on the
    quantized model's own trajectory, over still-masked positions}`` (``FrontierReport.amplification_curve``,
    each value in [0, 2]; NaN offsets, where no prompt contributes, are left as gaps; all NaN: no prompt had a
    false commit, which the plot says)."""
    return _curves(curves, path, "Σ_v (p_quantized − p_fp)²\nover still-masked positions",
                   "Amplification after the first false commit", 2.0,
                   xlabel="steps k after the first false commit\n(k = 0: the state it was made on)",
                   empty="no false commit: nothing to amplify")


def plot_teacher_forced_prob_mse(curves: dict, path: str) -> str:
    """``curves``: ``{quantized model name: per-step probability MSE on the full-precision model's states,
    every window position}`` (``FrontierReport.teacher_forced_prob_mse_curve``, each value in [0, 2])."""
    return _curves(curves, path, "Σ_v (p_quantized − p_fp)²", "Probability MSE, teacher-forced", 2.0)


def plot_flip_rate(curves: dict, path: str) -> str:
    """``curves``: ``{quantized model name: per-step frontier flip rate}`` (each in [0, 1])."""
    return _curves(curves, path, "frontier flip rate", "Frontier decision flips per step", 1.0)
