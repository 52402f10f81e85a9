"""Teacher (full precision) vs student (quantized) frontier diagnostics on the same prompts.

* Teacher-forced replay: the student (and the teacher) are run on the teacher's states ``S_t``; this gives
  the frontier flip rate and the **teacher-forced** probability-MSE curve (over every window position, on
  states where the student never made a false commit).
* Amplification (the paper's reading): on the student's own trajectory, each prompt is aligned at the
  student's first false commit (the first committed token that differs from the teacher's token at that
  position); the probability MSE between student and teacher, both evaluated on the student's states, is
  averaged over the still-masked positions at each step after it (:func:`student_amplification`).
* Each model's own free-running trajectory gives its post-commit mismatch and stability lags. For a model
  without logit shift (LLaDA-style) a committed position is read with that position re-masked
  (:func:`read_post_commit`), the only state in which its output was trained.
* The two final outputs give the output agreement (and exact match against references, if given).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..architectures import get_adapter
from ..decoding.samplers import DecodeConfig, WindowLogits, diffusion_generate
from ..decoding.trajectory import Trajectory
from .metrics import (
    aligned_amplification,
    exact_match,
    first_false_commit,
    flip_rate,
    lag_quantile,
    output_agreement,
    post_commit_mismatch,
    probability_mse,
    stability_lags,
)


@dataclass
class ReplayResult:
    """Observations of teacher and student on the teacher's states: argmax ``[O, B, G]`` each, and the
    per-observation teacher-forced probability-MSE curve ``[O]`` (mean over sequences and window positions)."""

    teacher_argmax: torch.Tensor
    student_argmax: torch.Tensor
    prob_mse: torch.Tensor


@torch.no_grad()
def teacher_forced_replay(teacher, student, trajectory: Trajectory) -> ReplayResult:
    """Replay ``trajectory`` (made by ``teacher``) on both models, one forward per model and observation."""
    t_arg, s_arg, mse = [], [], []
    for lt, ls in _logits_on_states(teacher, student, trajectory):
        t_arg.append(lt.argmax(-1).cpu())
        s_arg.append(ls.argmax(-1).cpu())
        mse.append(probability_mse(lt.softmax(-1), ls.softmax(-1)).mean().cpu())
    return ReplayResult(torch.stack(t_arg), torch.stack(s_arg), torch.stack(mse))


def _logits_on_states(teacher, student, trajectory: Trajectory):
    """Per observation ``t`` of ``trajectory``, the fp32 window logits ``[B, G, V]`` of ``teacher`` and
    ``student`` on the same state ``S_t`` (one forward each; the student's moved to the teacher's device)."""
    mask_id = trajectory.settings["mask_token_id"]
    device_t = teacher.get_input_embeddings().weight.device
    device_s = student.get_input_embeddings().weight.device
    run_t, run_s = _window_logits(teacher, trajectory), _window_logits(student, trajectory)
    for t in range(trajectory.argmax.shape[0]):
        canvas = trajectory.canvas(t, mask_id)
        lt = run_t(canvas.to(device_t)).float()
        yield lt, run_s(canvas.to(device_s)).float().to(lt.device)


def _window_logits(model, trajectory: Trajectory, attention_mask=None) -> WindowLogits:
    """A :class:`WindowLogits` for ``model`` on ``trajectory``'s canvas (``attention_mask``: rows of the
    trajectory's mask, default all of it)."""
    mask = trajectory.attention_mask if attention_mask is None else attention_mask
    device = model.get_input_embeddings().weight.device
    return WindowLogits(model, get_adapter(model), trajectory.prompt_ids.shape[1], trajectory.gen_length,
                        None if mask is None else mask.to(device), trajectory.settings["mask_token_id"],
                        trajectory.settings.get("cfg_scale", 0.0))


@torch.no_grad()
def read_post_commit(model, trajectory: Trajectory, max_rows: int = 512,
                     positions: torch.Tensor | None = None) -> torch.Tensor:
    """``model``'s top-1 at every window position and observation of ``trajectory`` (made by ``model``), with
    each committed position read *re-masked*.

    At observation ``t`` (state ``S_t``) a position ``i`` with ``τ_i < t`` is read from the canvas ``S_t``
    with only position ``i`` set back to the mask token (leave-one-out): the state in which a model without
    logit shift was trained to predict ``i``. Still-masked positions, and positions outside ``positions``
    (``[B, G]`` bool, default all), keep the recorded top-1. Cost: per observation, one extra batched forward
    over one canvas per committed position read (``Σ_t #read(t)`` rows: about ``B·G·O/2`` for every position,
    ``B·k·O`` at most for ``k`` positions per sequence; at most ``max_rows`` rows per forward call).
    Returns int64 ``[O, B, G]``.
    """
    mask_id = trajectory.settings["mask_token_id"]
    p = trajectory.prompt_ids.shape[1]
    device = model.get_input_embeddings().weight.device
    out = trajectory.argmax.clone()
    for t in range(out.shape[0]):
        committed = (trajectory.commit_step >= 0) & (trajectory.commit_step < t)
        if positions is not None:
            committed &= positions
        rows, cols = torch.nonzero(committed, as_tuple=True)
        if rows.numel() == 0:
            continue
        canvas = trajectory.canvas(t, mask_id)
        for lo in range(0, rows.numel(), max_rows):
            b, i = rows[lo:lo + max_rows], cols[lo:lo + max_rows]
            x = canvas[b].clone()
            x[torch.arange(b.numel()), p + i] = mask_id
            mask = trajectory.attention_mask[b] if trajectory.attention_mask is not None else None
            logits = _window_logits(model, trajectory, mask)(x.to(device))
            out[t, b, i] = logits[torch.arange(b.numel(), device=logits.device), i.to(logits.device)].argmax(-1).cpu()
    return out


def sample_positions(commit_step: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """``[B, G]`` bool: per sequence, ``k`` committed positions drawn uniformly without replacement (all of
    them when fewer are committed). ``k`` must be positive."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"remask_positions must be None or a positive integer, got {k!r}")
    gen = torch.Generator().manual_seed(seed)
    score = torch.rand(commit_step.shape, generator=gen).masked_fill(commit_step < 0, 2.0)
    rank = score.argsort(-1).argsort(-1)
    return (rank < k) & (commit_step >= 0)


def own_diagnostics(model, trajectory: Trajectory, remask: bool | None = None,
                    remask_positions: int | None = None, seed: int = 0) -> dict:
    """Post-commit mismatch and stability lags of ``model`` on its own ``trajectory``.

    ``remask``: read committed positions re-masked (:func:`read_post_commit`); ``None``: for a model without
    logit shift (LLaDA-style) only (a Dream-style model predicts token ``i`` at ``i − 1`` and reads its
    committed positions from the recorded outputs). ``remask_positions``: with ``remask``, measure only ``k``
    committed positions per sequence, drawn uniformly (:func:`sample_positions`, ``seed``), each read
    re-masked at every post-commit observation: the per-position definitions stay exact and the averages over
    positions are unbiased, at ``k`` extra rows per sequence and step (``k = 1``: one extra forward of the batch
    per step) instead of about ``G/2``; ``None``: every position. Returns ``{"mean_disagree", "never_agree",
    "positions" (measured), "lags" (list), "lag_p90", "remasked", "remask_positions"}`` (definitions in
    :mod:`.metrics`).
    """
    if remask is None:
        remask = get_adapter(model).logits_shift == 0
    commit_step = trajectory.commit_step
    argmax = trajectory.argmax
    if remask:
        chosen = sample_positions(commit_step, remask_positions, seed) if remask_positions is not None else None
        argmax = read_post_commit(model, trajectory, positions=chosen)
        if chosen is not None:
            commit_step = commit_step.masked_fill(~chosen, -1)  # metrics ignore positions marked never committed
    md, na, n = post_commit_mismatch(argmax, trajectory.tokens, commit_step)
    lags = stability_lags(argmax, trajectory.tokens, commit_step)[0]
    return {"mean_disagree": md, "never_agree": na, "positions": n, "lags": lags.tolist(),
            "lag_p90": lag_quantile(lags, 0.9), "remasked": bool(remask),
            "remask_positions": remask_positions if remask else None}


@dataclass
class AmplificationResult:
    """:func:`student_amplification`: ``curve [O]`` and ``counts [O]`` per offset from the first false commit
    (:func:`.metrics.aligned_amplification`), ``first_false [B]`` (step, ``-1``: none) and
    ``false_commit_rate`` (fraction of prompts with a false commit)."""

    curve: torch.Tensor
    counts: torch.Tensor
    first_false: torch.Tensor
    false_commit_rate: float

    @property
    def mean_after(self) -> float:
        """Mean probability MSE over every (prompt, offset ``k ≥ 1``) pair: the states after the false commit
        (NaN when there are none)."""
        c = self.counts[1:].double()
        return float((self.curve[1:].nan_to_num(0.0) * c).sum() / c.sum()) if float(c.sum()) > 0 else float("nan")


@torch.no_grad()
def student_amplification(teacher, student, student_trajectory: Trajectory,
                          teacher_tokens: torch.Tensor) -> AmplificationResult:
    """Probability-MSE amplification after false commits, on the student's own trajectory.

    A prompt's first false commit is the earliest student commit whose token differs from the teacher's token
    at that position (``teacher_tokens [B, G]``, the teacher's decoded window with the same decoding settings).
    Both models are evaluated on every student state ``S_t`` (one forward each per observation); the
    per-position :func:`.metrics.probability_mse` is averaged over the positions still masked in ``S_t`` and
    aligned at the first false commit (:func:`.metrics.aligned_amplification`).
    """
    traj = student_trajectory
    mse = torch.stack([probability_mse(lt.softmax(-1), ls.softmax(-1)).cpu()
                       for lt, ls in _logits_on_states(teacher, student, traj)])
    obs = torch.arange(mse.shape[0])[:, None, None]
    masked = (traj.commit_step[None] < 0) | (traj.commit_step[None] >= obs)
    first = first_false_commit(traj.commit_step, traj.tokens, teacher_tokens.to(traj.tokens))
    curve, counts = aligned_amplification(mse, masked, first)
    return AmplificationResult(curve, counts, first, float((first >= 0).double().mean()))


@dataclass
class FrontierReport:
    """Diagnostics of one student against the teacher (definitions in :mod:`.metrics` and this module).

    ``teacher_forced_prob_mse_*``: probability MSE on the teacher's states, over every window position.
    ``amplification_*``: probability MSE after the student's first false commit, on its own states, over the
    still-masked positions (offset ``k`` from the false commit; ``amplification_counts[k]`` prompts each;
    ``amplification_mean`` over offsets ``k ≥ 1``). ``mismatch`` / ``lag_p90`` / ``lags``: each model on its own
    trajectory, committed positions read re-masked for LLaDA-style models (``mismatch[...]["remasked"]``).
    """

    settings: dict
    flip_rate: float
    flip_rate_per_step: list[float]
    teacher_forced_prob_mse_mean: float
    teacher_forced_prob_mse_curve: list[float]
    mismatch: dict  # {"teacher"/"student": {"mean_disagree", "never_agree", "positions", "remasked",
    #                                         "remask_positions"}}
    lag_p90: dict  # {"teacher"/"student": p90 of persistent stability lag}
    lags: dict = field(default_factory=dict)  # {"teacher"/"student": list of lags}
    amplification_curve: list[float] = field(default_factory=list)
    amplification_counts: list[int] = field(default_factory=list)
    amplification_mean: float = float("nan")
    false_commit_rate: float = float("nan")
    sequence_agreement: float = float("nan")
    token_agreement: float = float("nan")
    exact_match: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@torch.no_grad()
def compare_models(teacher, student, input_ids, attention_mask=None, config: DecodeConfig | None = None,
                   teacher_result=None, references: list[str] | None = None, tokenizer=None,
                   remask: bool | None = None, remask_positions: int | None = None,
                   teacher_diagnostics: dict | None = None) -> FrontierReport:
    """Decode with both models (or reuse ``teacher_result``), replay the teacher's trajectory on the student,
    evaluate both on the student's trajectory, and compute every diagnostic (``remask``, ``remask_positions``:
    see :func:`own_diagnostics`; ``teacher_diagnostics``: its result for the teacher on ``teacher_result``, reused
    instead of recomputed). With ``references`` and ``tokenizer``, exact match of the decoded windows (cut at
    the first EOS or end-of-turn token) is reported for both models."""
    config = config or DecodeConfig()
    if not config.record:
        raise ValueError("compare_models needs recorded trajectories (DecodeConfig(record=True))")
    t_res = teacher_result or diffusion_generate(teacher, input_ids, attention_mask, config)
    s_res = diffusion_generate(student, input_ids, attention_mask, config)
    tt, st = t_res.trajectory, s_res.trajectory
    replay = teacher_forced_replay(teacher, student, tt)
    rate, per_step = flip_rate(replay.teacher_argmax, replay.student_argmax, tt.commit_step)
    own = {"teacher": teacher_diagnostics or own_diagnostics(teacher, tt, remask, remask_positions),
           "student": own_diagnostics(student, st, remask, remask_positions)}
    amp = student_amplification(teacher, student, st, tt.tokens)
    seq_agree, tok_agree = output_agreement(tt.tokens, st.tokens)
    em = {}
    if references is not None:
        if tokenizer is None:
            raise ValueError("compare_models: exact match needs the tokenizer to decode the outputs")
        for name, tr in (("teacher", tt), ("student", st)):
            em[name] = exact_match(decode_windows(tr.tokens, tokenizer, get_adapter(teacher).stop_token_ids(
                teacher.config, tokenizer)), references)
    return FrontierReport(
        settings={k: tt.settings[k] for k in ("policy", "gen_length", "steps", "block_length", "temperature",
                                              "cfg_scale", "threshold", "alg_temp", "seed")},
        flip_rate=rate,
        flip_rate_per_step=[float(x) for x in per_step],
        teacher_forced_prob_mse_mean=float(replay.prob_mse.mean()),
        teacher_forced_prob_mse_curve=[float(x) for x in replay.prob_mse],
        mismatch={name: {k: d.get(k) for k in ("mean_disagree", "never_agree", "positions", "remasked",
                                               "remask_positions")} for name, d in own.items()},
        lag_p90={name: d["lag_p90"] for name, d in own.items()},
        lags={name: d["lags"] for name, d in own.items()},
        amplification_curve=[float(x) for x in amp.curve],
        amplification_counts=[int(x) for x in amp.counts],
        amplification_mean=amp.mean_after,
        false_commit_rate=amp.false_commit_rate,
        sequence_agreement=seq_agree,
        token_agreement=tok_agree,
        exact_match=em,
    )


def decode_windows(tokens: torch.Tensor, tokenizer, stop_token_ids=None) -> list[str]:
    """Decode each window ``[B, G]`` to text, cut at the first stop token (default: the tokenizer's EOS)."""
    stops = set(stop_token_ids if stop_token_ids is not None else [tokenizer.eos_token_id]) - {None}
    out = []
    for row in tokens.tolist():
        cut = next((i for i, tok in enumerate(row) if tok in stops), len(row))
        out.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    return out
