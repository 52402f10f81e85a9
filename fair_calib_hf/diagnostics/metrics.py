"""Frontier diagnostics: pure functions on trajectory arrays (no model calls).

Shapes: ``O`` observations (steps, plus the optional final one), ``B`` sequences, ``G`` window positions.
``argmax [O, B, G]`` is a model's top-1 token at each observation; ``tokens [B, G]`` the committed tokens
``y``; ``commit_step [B, G]`` the commit step ``τ`` of each position (``-1``: never committed, ignored).
"""
from __future__ import annotations

import torch


def _obs_index(argmax: torch.Tensor) -> torch.Tensor:
    return torch.arange(argmax.shape[0], device=argmax.device)[:, None, None]


def flip_rate(teacher_argmax: torch.Tensor, student_argmax: torch.Tensor, commit_step: torch.Tensor):
    """Frontier decision flip rate under teacher-forced commits.

    Both argmax arrays are observed on the teacher's states ``S_t``. For sequence ``b`` and step ``t`` with a
    non-empty frontier ``C_t``: ``r_{b,t} = (1/|C_t|) Σ_{i ∈ C_t} 1{student_argmax ≠ teacher_argmax}``.

    Returns ``(rate, per_step)``: ``rate`` is the mean of ``r_{b,t}`` over all (sequence, step) pairs with a
    non-empty frontier; ``per_step [O]`` is the mean over sequences at each step (NaN where no sequence
    committed anything).
    """
    frontier = commit_step[None] == _obs_index(teacher_argmax)  # [O, B, G]
    flips = (teacher_argmax != student_argmax) & frontier
    size = frontier.sum(-1)  # [O, B]
    has = size > 0
    r = flips.sum(-1).double() / size.clamp(min=1)
    rate = float(r[has].mean()) if bool(has.any()) else float("nan")
    per_step = torch.where(has, r, torch.nan).nanmean(dim=1)
    return rate, per_step


def post_commit_mismatch(argmax: torch.Tensor, tokens: torch.Tensor, commit_step: torch.Tensor):
    """Post-commit mismatch of a model's top-1 with the committed tokens.

    ``argmax`` must hold a *trained* reading of each committed position: for a model without logit shift
    (LLaDA-style) the output at a position is supervised only while that position's input is the mask token,
    so read it with the position re-masked (:func:`fair_calib_hf.diagnostics.frontier.read_post_commit`);
    the raw output there copies nothing it was trained for (the FP teacher itself then "disagrees" about half
    of the time). Post-commit observations of position ``i`` are those with ``t > τ_i``. Over positions with at
    least one:

    * ``mean_disagree``: mean over positions of the fraction of post-commit observations with
      ``argmax_{t,i} ≠ y_i``;
    * ``never_agree``: fraction of positions whose top-1 never equals ``y_i`` after the commit.

    Returns ``(mean_disagree, never_agree, num_positions)`` (NaNs when no position qualifies).
    """
    post = (_obs_index(argmax) > commit_step[None]) & (commit_step[None] >= 0)
    n_post = post.sum(0)
    valid = n_post > 0
    if not bool(valid.any()):
        return float("nan"), float("nan"), 0
    disagree = ((argmax != tokens[None]) & post).sum(0)
    frac = disagree[valid].double() / n_post[valid]
    return float(frac.mean()), float((disagree[valid] == n_post[valid]).double().mean()), int(valid.sum())


def stability_lags(argmax: torch.Tensor, tokens: torch.Tensor, commit_step: torch.Tensor,
                   mode: str = "persistent"):
    """Stability lag ``δ_i = σ_i − τ_i`` of every committed position (``argmax``: a trained reading of the
    committed positions, as for :func:`post_commit_mismatch`).

    ``mode="persistent"``: ``σ_i`` is the first observation ``s ≥ τ_i`` from which the top-1 equals ``y_i``
    at every later observation. ``mode="first"``: the first ``s ≥ τ_i`` with top-1 equal to ``y_i``. If no
    such observation exists, ``σ_i = O`` (one past the last observation) and the lag is censored.

    Returns ``(lags, censored)``: 1-D int64 and bool tensors over committed positions (row-major order).
    """
    if mode not in ("persistent", "first"):
        raise ValueError(f"stability_lags: mode must be 'persistent' or 'first', got {mode!r}")
    o = argmax.shape[0]
    t = _obs_index(argmax)
    agree = argmax == tokens[None]
    if mode == "persistent":
        agree = agree.flip(0).long().cumprod(0).flip(0).bool()  # agree at t and every later observation
    start = torch.where(agree & (t >= commit_step[None]), t, torch.full_like(t, o)).min(0).values  # [B, G]
    committed = commit_step >= 0
    return (start - commit_step)[committed], (start == o)[committed]


def lag_ccdf(lags: torch.Tensor):
    """Complementary CDF of integer lags: ``(d, P(lag ≥ d))`` for ``d = 0 .. max(lags)``."""
    if lags.numel() == 0:
        return torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.float64)
    d = torch.arange(int(lags.max()) + 1)
    return d, (lags[None, :] >= d[:, None]).double().mean(1)


def lag_quantile(lags: torch.Tensor, q: float = 0.9) -> float:
    """The ``q``-quantile of the lags (lower interpolation: an observed lag value)."""
    if lags.numel() == 0:
        return float("nan")
    return float(torch.quantile(lags.double(), q, interpolation="lower"))


def probability_mse(p_teacher: torch.Tensor, p_student: torch.Tensor) -> torch.Tensor:
    """Per-position squared L2 distance between two distributions: ``Σ_v (p_s(v) − p_t(v))²`` over the last
    dim (a Brier-type score in [0, 2])."""
    return (p_student.double() - p_teacher.double()).pow(2).sum(-1)


def output_agreement(tokens_a: torch.Tensor, tokens_b: torch.Tensor):
    """``(sequence_agreement, token_agreement)``: fraction of sequences whose window tokens are all equal,
    and fraction of equal window tokens."""
    same = tokens_a == tokens_b
    return float(same.all(-1).double().mean()), float(same.double().mean())


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Fraction of predictions equal to their reference after stripping surrounding whitespace."""
    if len(predictions) != len(references):
        raise ValueError(f"exact_match: {len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return float("nan")
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / len(predictions)


def first_false_commit(commit_step: torch.Tensor, tokens: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Step of each sequence's first false commit: the earliest ``τ_i`` over window positions whose committed
    token ``tokens[b, i]`` differs from ``reference[b, i]`` (the teacher's token at that position), ``-1`` where
    none. ``commit_step``, ``tokens``, ``reference``: ``[B, G]``; returns int64 ``[B]``."""
    false = (commit_step >= 0) & (tokens != reference)
    big = torch.iinfo(torch.long).max
    first = torch.where(false, commit_step, torch.full_like(commit_step, big)).min(-1).values
    return torch.where(first == big, torch.full_like(first, -1), first)


def aligned_amplification(prob_mse: torch.Tensor, masked: torch.Tensor, first_false: torch.Tensor):
    """Probability MSE aligned at each sequence's first false commit.

    ``prob_mse [O, B, G]``: :func:`probability_mse` between student and teacher evaluated on the same states;
    ``masked [O, B, G]``: positions still masked at each observation; ``first_false [B]``: the step ``t*_b`` of
    the first false commit (``-1``: none; such sequences are left out). Offset ``k`` is observation
    ``t*_b + k``: ``k = 0`` is the state on which the false commit was decided, ``k ≥ 1`` the states after it.
    A sequence's value at offset ``k`` is the mean over its still-masked positions; ``curve[k]`` is the mean over
    sequences that have such positions there (NaN where none), ``counts[k]`` how many. Returns ``(curve [O]
    float64, counts [O] int64)``.
    """
    o = prob_mse.shape[0]
    curve = torch.zeros(o, dtype=torch.float64)
    counts = torch.zeros(o, dtype=torch.long)
    for b in torch.nonzero(first_false >= 0).flatten().tolist():
        start = int(first_false[b])
        for k in range(o - start):
            m = masked[start + k, b]
            if bool(m.any()):
                curve[k] += float(prob_mse[start + k, b][m].double().mean())
                counts[k] += 1
    return torch.where(counts > 0, curve / counts.clamp(min=1), torch.full_like(curve, float("nan"))), counts
