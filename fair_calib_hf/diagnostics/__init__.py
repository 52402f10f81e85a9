"""Frontier diagnostics between a full-precision teacher and a quantized student, and their plots."""
from .frontier import FrontierReport, compare_models, decode_windows, teacher_forced_replay
from .metrics import (
    exact_match,
    flip_rate,
    lag_ccdf,
    lag_quantile,
    output_agreement,
    post_commit_mismatch,
    probability_mse,
    stability_lags,
)
from .plots import plot_amplification, plot_flip_rate, plot_lag_ccdf

__all__ = ["FrontierReport", "compare_models", "decode_windows", "teacher_forced_replay", "exact_match",
           "flip_rate", "lag_ccdf", "lag_quantile", "output_agreement", "post_commit_mismatch", "probability_mse",
           "stability_lags", "plot_amplification", "plot_flip_rate", "plot_lag_ccdf"]
