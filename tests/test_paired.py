"""The paired bootstrap of the quality benchmark on synthetic data with known answers."""
import math

import numpy as np
import pytest

from fair_calib_hf.bench.paired import paired_bootstrap


def test_problem_variance_only_matches_the_binomial_standard_error():
    """Identical seeds; the treatment solves every problem, the control a fixed 70 %: the difference is 0.3 and
    only the problem draw varies, so the 95 % interval is 0.3 ± 1.96·√(0.3·0.7/N) (normal approximation)."""
    n = 2000
    control = np.tile((np.arange(n) % 10 < 7).astype(float), (5, 1))
    treatment = np.ones_like(control)
    reference = np.ones(n)
    r = paired_bootstrap(treatment, control, reference, n_boot=4000, seed=1)
    half = 1.96 * math.sqrt(0.3 * 0.7 / n)
    assert r["mean"] == pytest.approx(0.3) and r["per_seed"] == pytest.approx([0.3] * 5)
    assert r["ci_low"] == pytest.approx(0.3 - half, abs=0.1 * half)
    assert r["ci_high"] == pytest.approx(0.3 + half, abs=0.1 * half)
    assert r["gap_closed"] == pytest.approx(1.0)  # the treatment reaches the reference on every problem
    assert r["gap_closed_ci_low"] == pytest.approx(1.0) and r["gap_closed_ci_high"] == pytest.approx(1.0)
    assert (r["n_seeds"], r["n_test"]) == (5, n)


def test_seed_variance_only_has_the_exact_bootstrap_quantiles():
    """The difference is the same on every problem and 1 on one seed of five, 0 on the others: a replicate's
    mean is k/5 with k ~ Binomial(5, 0.2), whose 2.5 % and 97.5 % quantiles are 0 and 3/5."""
    n = 50
    diff = np.zeros((5, n))
    diff[4] = 1.0
    r = paired_bootstrap(diff, np.zeros((5, n)), n_boot=20000, seed=3)
    assert r["mean"] == pytest.approx(0.2) and r["per_seed"] == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert r["ci_low"] == 0.0 and r["ci_high"] == pytest.approx(0.6)
    assert r["gap_closed"] is None  # no reference


def test_interval_covers_the_true_difference_at_the_stated_rate():
    """Independent Bernoulli problems (p = 0.75 vs 0.70, a seed effect of ±2 points): over repeated synthetic
    benchmarks the 95 % interval contains the true difference 0.05 close to 95 % of the time."""
    rng = np.random.default_rng(0)
    hits, runs = 0, 200
    for _ in range(runs):
        shift = rng.normal(0, 0.02, size=(5, 1))
        t = (rng.random((5, 400)) < 0.75 + shift).astype(float)
        c = (rng.random((5, 400)) < 0.70).astype(float)
        r = paired_bootstrap(t, c, n_boot=1000, seed=int(rng.integers(1 << 30)))
        hits += r["ci_low"] <= 0.05 <= r["ci_high"]
    assert 0.88 <= hits / runs <= 0.99


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="same"):
        paired_bootstrap(np.ones((3, 10)), np.ones((2, 10)))
    with pytest.raises(ValueError, match="one score per problem"):
        paired_bootstrap(np.ones((3, 10)), np.ones((3, 10)), reference=np.ones(9))
    with pytest.raises(ValueError, match="matrix"):
        paired_bootstrap(np.ones(10), np.ones(10))
    with pytest.raises(ValueError, match="n_boot"):
        paired_bootstrap(np.ones((1, 2)), np.ones((1, 2)), n_boot=0)
