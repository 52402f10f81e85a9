"""Paired comparison of two calibration methods scored on the same test problems with the same seeds.

Data: ``treatment [S, N]`` and ``control [S, N]``, the per-problem scores (1/0 exact match, or any number) of
the two methods calibrated with seed ``s`` and evaluated on the same ``N`` test problems; optionally
``reference [N]``, the full-precision model's scores on those problems (no seed: it is not calibrated).

* ``per_seed[s] = mean_j (treatment[s, j] − control[s, j])``: the paired difference of seed ``s``;
* ``mean = mean_s per_seed[s]``;
* ``gap_closed = mean / (mean(reference) − mean(control))``: the share of the control's gap to full precision
  that the treatment closes (``None`` when the control is not below the reference);
* 95 % confidence intervals by a **two-way (crossed) bootstrap**: each replicate draws ``S`` seeds and ``N``
  problems with replacement, independently, and recomputes the statistic on the ``S × N`` sub-matrix (the same
  drawn problems for every drawn seed and for the reference, so the pairing is kept). Seeds and problems are
  the two sources of variation: a seed's calibration data and randomness, and which problems were sampled.
  Percentile interval of ``n_boot`` replicates. Reference: Owen (2007), *The pigeonhole bootstrap*, Ann. Appl.
  Stat. 1(2), for resampling both factors of a crossed design.
"""
from __future__ import annotations

import numpy as np


def _as_matrix(name: str, values) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"paired_bootstrap: {name} must be a non-empty [seeds, problems] matrix, got shape "
                         f"{a.shape}")
    return a


def paired_bootstrap(treatment, control, reference=None, n_boot: int = 10_000, level: float = 0.95,
                     seed: int = 0) -> dict:
    """Paired difference ``treatment − control`` with its bootstrap interval (module docstring).

    Args:
        treatment, control: ``[S, N]`` per-problem scores, row ``s`` calibrated with the same seed in both.
        reference: ``[N]`` full-precision scores on the same problems, for ``gap_closed`` (optional).
        n_boot: bootstrap replicates (> 0). level: confidence level in (0, 1). seed: of the resampling.

    Returns ``{"mean", "per_seed" [S], "ci_low", "ci_high", "gap_closed", "gap_closed_ci_low",
    "gap_closed_ci_high", "n_seeds", "n_test", "n_boot", "level"}`` (floats; the ``gap_closed`` entries are
    ``None`` without a reference or when the control is not below it; its interval uses the replicates whose
    control is below the reference).

    Raises ``ValueError`` for shapes that do not pair up or an invalid ``n_boot`` / ``level``.
    """
    t, c = _as_matrix("treatment", treatment), _as_matrix("control", control)
    if t.shape != c.shape:
        raise ValueError(f"paired_bootstrap: treatment {t.shape} and control {c.shape} must have the same "
                         "[seeds, problems] shape (the same seeds on the same test problems)")
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"paired_bootstrap: n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"paired_bootstrap: level must be in (0, 1), got {level!r}")
    s, n = t.shape
    ref = None
    if reference is not None:
        ref = np.asarray(reference, dtype=np.float64)
        if ref.shape != (n,):
            raise ValueError(f"paired_bootstrap: reference must have one score per problem ({n}), got shape "
                             f"{ref.shape}")
    diff = t - c
    rng = np.random.default_rng(seed)
    w_seed = rng.multinomial(s, np.full(s, 1.0 / s), size=n_boot).astype(np.float64)  # [B, S] draw counts
    w_prob = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)  # [B, N]
    boot = ((w_seed @ diff) * w_prob).sum(1) / (s * n)
    alpha = (1 - level) / 2
    out = {"mean": float(diff.mean()), "per_seed": [float(x) for x in diff.mean(1)],
           "ci_low": float(np.quantile(boot, alpha)), "ci_high": float(np.quantile(boot, 1 - alpha)),
           "gap_closed": None, "gap_closed_ci_low": None, "gap_closed_ci_high": None,
           "n_seeds": s, "n_test": n, "n_boot": n_boot, "level": level}
    if ref is not None:
        gap = float(ref.mean() - c.mean())
        if gap > 0:
            out["gap_closed"] = out["mean"] / gap
            boot_gap = w_prob @ ref / n - ((w_seed @ c) * w_prob).sum(1) / (s * n)
            ok = boot_gap > 0
            if ok.any():
                ratio = boot[ok] / boot_gap[ok]
                out["gap_closed_ci_low"] = float(np.quantile(ratio, alpha))
                out["gap_closed_ci_high"] = float(np.quantile(ratio, 1 - alpha))
    return out
