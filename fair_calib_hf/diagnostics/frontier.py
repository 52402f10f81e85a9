"""Teacher (full precision) vs student (quantized) frontier diagnostics on the same prompts.

* Teacher-forced replay: the student (and the teacher) are run on the teacher's states ``S_t``; this gives
  the frontier flip rate and the probability-MSE amplification curve.
* Each model's own free-running trajectory gives its post-commit mismatch and stability lags.
* The two final outputs give the output agreement (and exact match against references, if given).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..architectures import get_adapter
from ..decoding.samplers import DecodeConfig, WindowLogits, diffusion_generate
from ..decoding.trajectory import Trajectory
from .metrics import (
    exact_match,
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
    per-observation probability-MSE curve ``[O]`` (mean over sequences and window positions)."""

    teacher_argmax: torch.Tensor
    student_argmax: torch.Tensor
    prob_mse: torch.Tensor


@torch.no_grad()
def teacher_forced_replay(teacher, student, trajectory: Trajectory) -> ReplayResult:
    """Replay ``trajectory`` (made by ``teacher``) on both models, one forward per model and observation."""
    adapter = get_adapter(teacher)
    mask_id = trajectory.settings["mask_token_id"]
    p, g = trajectory.prompt_ids.shape[1], trajectory.gen_length
    cfg_scale = trajectory.settings.get("cfg_scale", 0.0)
    device_t = teacher.get_input_embeddings().weight.device
    device_s = student.get_input_embeddings().weight.device
    mask = trajectory.attention_mask
    run_t = WindowLogits(teacher, adapter, p, g, None if mask is None else mask.to(device_t), mask_id, cfg_scale)
    run_s = WindowLogits(student, get_adapter(student), p, g, None if mask is None else mask.to(device_s), mask_id,
                         cfg_scale)
    t_arg, s_arg, mse = [], [], []
    for t in range(trajectory.argmax.shape[0]):
        canvas = trajectory.canvas(t, mask_id)
        lt = run_t(canvas.to(device_t)).float()
        ls = run_s(canvas.to(device_s)).float().to(lt.device)
        t_arg.append(lt.argmax(-1).cpu())
        s_arg.append(ls.argmax(-1).cpu())
        mse.append(probability_mse(lt.softmax(-1), ls.softmax(-1)).mean().cpu())
    return ReplayResult(torch.stack(t_arg), torch.stack(s_arg), torch.stack(mse))


@dataclass
class FrontierReport:
    """Diagnostics of one student against the teacher (definitions in :mod:`.metrics`)."""

    settings: dict
    flip_rate: float
    flip_rate_per_step: list[float]
    prob_mse_mean: float
    prob_mse_curve: list[float]
    mismatch: dict  # {"teacher"/"student": {"mean_disagree", "never_agree"}}
    lag_p90: dict  # {"teacher"/"student": p90 of persistent stability lag}
    lags: dict = field(default_factory=dict)  # {"teacher"/"student": list of lags}
    sequence_agreement: float = float("nan")
    token_agreement: float = float("nan")
    exact_match: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _mismatch(traj: Trajectory) -> dict:
    md, na, n = post_commit_mismatch(traj.argmax, traj.tokens, traj.commit_step)
    return {"mean_disagree": md, "never_agree": na, "positions": n}


@torch.no_grad()
def compare_models(teacher, student, input_ids, attention_mask=None, config: DecodeConfig | None = None,
                   teacher_result=None, references: list[str] | None = None, tokenizer=None) -> FrontierReport:
    """Decode with both models (or reuse ``teacher_result``), replay the teacher's trajectory on the student
    and compute every diagnostic. With ``references`` and ``tokenizer``, exact match of the decoded windows
    (cut at the first EOS or end-of-turn token) is reported for both models."""
    config = config or DecodeConfig()
    if not config.record:
        raise ValueError("compare_models needs recorded trajectories (DecodeConfig(record=True))")
    t_res = teacher_result or diffusion_generate(teacher, input_ids, attention_mask, config)
    s_res = diffusion_generate(student, input_ids, attention_mask, config)
    tt, st = t_res.trajectory, s_res.trajectory
    replay = teacher_forced_replay(teacher, student, tt)
    rate, per_step = flip_rate(replay.teacher_argmax, replay.student_argmax, tt.commit_step)
    lags = {name: stability_lags(tr.argmax, tr.tokens, tr.commit_step)[0] for name, tr in
            (("teacher", tt), ("student", st))}
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
        prob_mse_mean=float(replay.prob_mse.mean()),
        prob_mse_curve=[float(x) for x in replay.prob_mse],
        mismatch={"teacher": _mismatch(tt), "student": _mismatch(st)},
        lag_p90={name: lag_quantile(v, 0.9) for name, v in lags.items()},
        lags={name: v.tolist() for name, v in lags.items()},
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
