"""Frontier diagnostics between a full-precision teacher and a quantized student, and their plots."""
from .frontier import (
    AmplificationResult,
    FrontierReport,
    compare_models,
    decode_windows,
    own_diagnostics,
    read_post_commit,
    student_amplification,
    teacher_forced_replay,
)
from .metrics import (
    aligned_amplification,
    exact_match,
    first_false_commit,
    flip_rate,
    lag_ccdf,
    lag_quantile,
    output_agreement,
    post_commit_mismatch,
    probability_mse,
    stability_lags,
)
from .plots import plot_amplification, plot_flip_rate, plot_lag_ccdf, plot_teacher_forced_prob_mse

__all__ = ["AmplificationResult", "FrontierReport", "compare_models", "decode_windows", "own_diagnostics",
           "read_post_commit", "student_amplification", "teacher_forced_replay", "aligned_amplification",
           "exact_match", "first_false_commit", "flip_rate", "lag_ccdf", "lag_quantile", "output_agreement",
           "post_commit_mismatch", "probability_mse", "stability_lags", "plot_amplification", "plot_flip_rate",
           "plot_lag_ccdf", "plot_teacher_forced_prob_mse"]
