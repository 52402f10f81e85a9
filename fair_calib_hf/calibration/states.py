"""Stage II calibration states: the sequences every block is calibrated on, and per-state loss weights.

``FairCalibConfig.calibration_states`` chooses them (each calibration sequence has ``L`` tokens; its trailing
``K = min(prior_window, L − 1)`` positions are the answer window, the positions before it the prompt, as in
Stage I, :func:`.stage1_prior.probe_geometry`):

* ``"observed"``: the calibration sequences as they are (the paper's Stage II, FlatQuant's): no mask token
  ever reaches a block;
* ``"masked"``: per state, one mask ratio ``r = ε + (1 − ε)·u`` with ``u ~ U[0, 1)`` and ``ε = 1e-3``, and every
  window position independently replaced by the mask token with probability ``r``: the forward corruption of
  LLaDA's pre-training and SFT (``forward_process``: ``t ~ U(0, 1)``, each token masked with probability ``t``),
  no teacher needed;
* ``"trajectory"``: the states ``S_t`` of the full-precision teacher decoding each sequence's prompt
  (:func:`~fair_calib_hf.decoding.samplers.diffusion_generate` with ``trajectory_policy``, ``K`` tokens,
  ``probe_steps`` steps and ``probe_block_length``: Stage I's geometry; ``probe_batch_size`` prompts per
  decoding, seed ``seed · 1_000_003 + 7 + index of the batch's first sequence``): the prompt, the tokens the
  teacher committed before step ``t``, and the mask token at every other window position
  (:meth:`~fair_calib_hf.decoding.trajectory.Trajectory.canvas`). Each family decodes its own way (the adapter
  aligns Dream-style shifted logits), so the states follow the family's sampler.

``states_per_sequence`` states are drawn per sequence (independent maskings, or distinct steps ``t`` drawn
uniformly without replacement from ``0 .. T − 1``), all from one generator seeded by ``seed``. The float targets
are the full-precision blocks on the same states (the block loop computes them from whatever it is given).

Per-state weights (``state_weights="frontier"``, trajectory states, :func:`frontier_weights`): at ``S_t``, the
term the bound of the method (``docs/fair-calib-method.md`` §5: ``Σ_t E_{S_t} Σ_{i ∈ C_t} ‖Δh_i‖²``) puts on the
write frontier ``C_t`` (the positions committed at step ``t``), with Stage I's early boost ``λ0(t)``
(:func:`.stage1_prior.lambda0`), and the masked-stage reliability of Stage I (§3) at the positions still masked
in ``S_t``; both combined, floored and shifted as the static prior is (:func:`.stage1_prior.combine_prior`,
over all states together so that early states keep their boost).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers.utils import logging as hf_logging

from ..architectures import get_adapter
from ..decoding.samplers import DREAM_POLICIES, DecodeConfig, diffusion_generate
from .stage1_prior import _reliability, _rownorm, combine_prior, lambda0, probe_geometry

MASK_EPS = 1e-3
"""Smallest mask ratio of a ``"masked"`` state (LLaDA's ``eps``)."""
DEPLOYED_POLICY = {"llada": "low_confidence", "dream": "maskgit_plus"}
"""The teacher's sampler for trajectory states when ``trajectory_policy`` is ``None``: each family's deployed
sampler (the zoo's :func:`~fair_calib_hf.zoo.evaluate.default_decode_config`)."""
TRAJECTORY_SEED_OFFSET = 7
"""Added to Stage I's seed formula, so that ``trajectory_policy="random"`` draws other commits than Stage I."""


@dataclass
class CalibrationStates:
    """What Stage II calibrates on.

    Attributes:
        sequences: the states, 1-D int64 token ids of ``L`` tokens each, ``states_per_sequence`` consecutive
            states per calibration sequence.
        weights: per-state loss weights float32 ``[len(sequences), L]`` (``state_weights="frontier"``), or
            ``None``: the static weights (the Stage I prior, or uniform) apply to every state.
        kind: ``calibration_states``.
        seconds: wall time spent producing the states (the teacher's decoding for ``"trajectory"``).
        metadata: how they were drawn (window, steps, block length, policy, the step ``t`` of each trajectory
            state, the mask ratio of each masked state).
    """

    sequences: list
    weights: torch.Tensor | None
    kind: str
    seconds: float = 0.0
    metadata: dict = field(default_factory=dict)


def trajectory_decode_config(config, family: str, seq_len: int) -> DecodeConfig:
    """The teacher's decoding for trajectory states (module docstring), seed of the first batch; ``ValueError``
    for a geometry that does not fit (:func:`.stage1_prior.probe_geometry`) or a Dream-style policy with blocks."""
    k, steps, block = probe_geometry(config, family, seq_len, what="calibration_states='trajectory'")
    policy = config.trajectory_policy or DEPLOYED_POLICY[family]
    if policy in DREAM_POLICIES and block != k:
        raise ValueError(f"calibration_states='trajectory': trajectory_policy={policy!r} decodes without blocks, but "
                         f"the probe block length is {block} (window K={k}); set probe_block_length=None or {k}, or "
                         "choose a block policy (low_confidence, random)")
    return DecodeConfig(gen_length=k, steps=steps, block_length=block, policy=policy,
                        seed=config.seed * 1_000_003 + TRAJECTORY_SEED_OFFSET, final_observation=False)


def check_states(config, family: str, seq_len: int) -> None:
    """``ValueError`` before any long work for states that cannot be drawn: a window or teacher decoding that
    does not fit, or more states per sequence than decoding steps."""
    if config.calibration_states == "observed":
        return
    if config.calibration_states == "masked":
        probe_geometry(config, family, seq_len, what="calibration_states='masked'")
        return
    steps = trajectory_decode_config(config, family, seq_len).steps
    if config.states_per_sequence > steps:
        raise ValueError(f"calibration_states='trajectory': states_per_sequence={config.states_per_sequence} "
                         f"exceeds the {steps} decoding steps (probe_steps capped at the window); draw at most "
                         f"{steps} distinct steps per sequence")


def masked_states(sequences: torch.Tensor, window: int, mask_token_id: int, per_sequence: int,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(states [N·S, L], ratios [N·S])``: for each of the ``N`` sequences of ``sequences [N, L]``, ``S =
    per_sequence`` copies with the trailing ``window`` positions masked independently with probability
    ``r = ε + (1 − ε)·u`` (one ``u ~ U[0, 1)`` per copy; module docstring). Deterministic for the generator."""
    n, seq_len = sequences.shape
    states = sequences.repeat_interleave(per_sequence, 0).clone()
    ratios = MASK_EPS + (1 - MASK_EPS) * torch.rand(n * per_sequence, generator=generator, dtype=torch.float64)
    hit = torch.rand(n * per_sequence, window, generator=generator, dtype=torch.float64) < ratios[:, None]
    states[:, seq_len - window:] = states[:, seq_len - window:].masked_fill(hit, mask_token_id)
    return states, ratios


def frontier_weights(commit_step: torch.Tensor, step: torch.Tensor, reliability: torch.Tensor, lam0: torch.Tensor,
                     seq_len: int, terms: str = "both", floor: float = 0.1, logits_shift: int = 0) -> torch.Tensor:
    """Per-state weights ``[S, seq_len]`` float32 (mean 1 over all states and positions) of ``S`` trajectory
    states ``S_t`` (module docstring).

    ``commit_step [S, K]``: the step (0-based) at which the teacher committed each window position of the
    state's decoding (``-1``: never); ``step [S]``: the state's ``t``; ``reliability [S, K]``: the teacher's raw
    ``c̃`` on the state (its output on ``S_t``); ``lam0 [T]``: :func:`.stage1_prior.lambda0`. Window terms per
    state: frontier ``F_i = λ0(t)·1{commit_step_i = t}``; reliability ``R_i = c̃_i`` min–max normalised over the
    positions still masked in ``S_t`` (``commit_step_i ≥ t`` or never), 0 elsewhere (a row whose values are all
    equal gives 1). Then :func:`.stage1_prior.combine_prior` on the ``[S, K]`` masses (``terms``, ``floor``,
    ``logits_shift``)."""
    t = step[:, None]
    masked = (commit_step < 0) | (commit_step >= t)
    frontier = lam0[step].double()[:, None] * (commit_step == t)
    rel = _rownorm(reliability.double(), masked)
    return combine_prior(frontier, rel, seq_len, terms, floor, logits_shift)


@torch.no_grad()
def trajectory_states(model, sequences: torch.Tensor, config) -> CalibrationStates:
    """Trajectory states of ``sequences [N, L]`` (module docstring), with per-state frontier weights when
    ``config.state_weights == "frontier"``."""
    adapter = get_adapter(model)
    n, seq_len = sequences.shape
    base = trajectory_decode_config(config, adapter.family, seq_len)
    k, steps = base.gen_length, base.steps
    mask_id = adapter.mask_token_id(model.config)
    per = config.states_per_sequence
    generator = torch.Generator().manual_seed(config.seed)
    frontier = config.state_weights == "frontier"
    lam0 = lambda0(steps, config.prior_schedule, config.prior_gamma) if frontier else None
    vocab = model.get_output_embeddings().out_features
    states, drawn, weights = [], [], []
    batch = max(1, config.probe_batch_size)
    for start in range(0, n, batch):
        cfg = DecodeConfig(**{**base.__dict__, "seed": base.seed + start})
        traj = diffusion_generate(model, sequences[start:start + batch, : seq_len - k], config=cfg,
                                  adapter=adapter).trajectory
        rel = _reliability(traj, config.prior_reliability, vocab) if frontier else None
        for row in range(traj.tokens.shape[0]):
            ts = torch.randperm(traj.num_steps, generator=generator)[:per].sort().values
            for t in ts.tolist():
                states.append(traj.canvas(t, mask_id)[row].clone())
                drawn.append(t)
                if frontier:
                    weights.append((traj.commit_step[row], rel[t, row]))
    step = torch.tensor(drawn, dtype=torch.long)
    w = None
    if frontier:
        w = frontier_weights(torch.stack([c for c, _ in weights]), step, torch.stack([r for _, r in weights]),
                             lam0, seq_len, config.prior_terms, config.prior_floor, adapter.logits_shift)
    meta = {"window": k, "steps": steps, "block_length": base.block_length, "policy": base.policy, "step": drawn}
    return CalibrationStates(states, w, "trajectory", metadata=meta)


def build_states(model, samples: list, config) -> CalibrationStates:
    """The Stage II states of the calibration ``samples`` (1-D int64 ``[L]`` each) for
    ``config.calibration_states`` (module docstring). ``"observed"`` returns ``samples`` themselves."""
    start = time.perf_counter()
    if config.calibration_states == "observed":
        return CalibrationStates(list(samples), None, "observed")
    adapter = get_adapter(model)
    sequences = torch.stack(samples)
    check_states(config, adapter.family, sequences.shape[1])
    if config.calibration_states == "masked":
        k = probe_geometry(config, adapter.family, sequences.shape[1])[0]
        generator = torch.Generator().manual_seed(config.seed)
        states, ratios = masked_states(sequences, k, adapter.mask_token_id(model.config),
                                       config.states_per_sequence, generator)
        out = CalibrationStates(list(states), None, "masked",
                                metadata={"window": k, "mask_ratio": [round(float(r), 6) for r in ratios]})
    else:
        hf_logging.get_logger(__name__).info("fair_calib: decoding %d calibration prompts with the teacher",
                                             len(samples))
        out = trajectory_states(model, sequences, config)
    out.seconds = time.perf_counter() - start
    out.metadata["count"] = len(out.sequences)
    return out


def describe(states: CalibrationStates | None) -> dict:
    """JSON-clean summary for the calibration report: kind, number of states, seconds, and the drawing's
    geometry (without the per-state lists)."""
    if states is None:
        return {"kind": "observed"}
    meta = {k: v for k, v in states.metadata.items() if k not in ("step", "mask_ratio")}
    return {"kind": states.kind, "seconds": round(states.seconds, 3), "per_state_weights": states.weights is not None,
            **meta}


__all__ = ["CalibrationStates", "MASK_EPS", "build_states", "check_states", "describe", "frontier_weights",
           "masked_states", "trajectory_decode_config", "trajectory_states"]
