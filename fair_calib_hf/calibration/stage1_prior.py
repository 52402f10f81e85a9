"""Stage I: probe the full-precision teacher with random-commit rollouts and build the position prior w̄.

Geometry: every calibration sequence has ``L`` tokens; its first ``L − K`` tokens are the probe prompt and
the trailing ``K`` positions the generation window. A rollout decodes the window with the ``random`` commit
policy (uniform choice among the masked positions of the active block, teacher argmax as the token) in ``T``
steps. Steps are numbered ``t = 1..T`` below.

Per rollout and window position ``i`` (committed at step ``τ_i``):

* frontier hit: ``F_i += λ0(τ_i)``, with ``λ0(t) = 1 + γ·(T − t)/(T − 1)`` (``early``, the default: 1 + γ at
  the first step, 1 at the last), ``1 + γ·(t − 1)/(T − 1)`` (``late``) or ``1`` (``flat``);
* masked-stage reliability: ``R_i += mean_{t ≤ τ_i} c̃_{t,i}``, the mean over the steps during which ``i``
  was still masked of the teacher's reliability at ``i``, min–max normalised over the still-masked
  positions of that sequence at that step (a row whose values are all equal gives 1). ``c̃`` is the top-1
  probability (``prob``), ``1 − H/log|V|`` (``neg_entropy``) or ``p1 − p2`` (``margin``).

Combination: each term is scaled to mean 1 over the window and the selected terms are averaged
(``both``: equal mass; ``frontier`` or ``reliability`` alone for the ablations). The window weights are
placed on the trailing ``K`` positions of a length-``L`` vector, every other position gets the floor
``floor × mean(window)``, and the vector is rescaled to mean 1 (uniform weights then reproduce the plain
MSE exactly). For a model whose logits are shifted (Dream: the output at ``i − 1`` predicts token ``i``)
the vector is moved one position left so each weight lands on the hidden state that predicts its token;
the freed last position gets the floor.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.utils import logging as hf_logging

from ..architectures import get_adapter
from ..decoding.samplers import DecodeConfig, diffusion_generate

SCHEDULES = ("early", "late", "flat")
TERMS = ("both", "frontier", "reliability")
RELIABILITY = ("prob", "neg_entropy", "margin")
PRIOR_FORMAT = "fair_calib_prior_v1"


def lambda0(num_steps: int, schedule: str = "early", gamma: float = 1.0) -> torch.Tensor:
    """``λ0(t)`` for ``t = 1..T`` as a float64 tensor of length ``T`` (see the module docstring)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"prior schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    t = torch.arange(1, num_steps + 1, dtype=torch.float64)
    frac = (num_steps - t) / max(num_steps - 1, 1)
    if schedule == "early":
        return 1 + gamma * frac
    if schedule == "late":
        return 1 + gamma * (1 - frac) if num_steps > 1 else torch.ones(1, dtype=torch.float64)
    return torch.ones(num_steps, dtype=torch.float64)


def _rownorm(values: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Min–max normalise ``values [B, K]`` over the ``masked`` entries of each row; degenerate rows give 1."""
    inf = torch.full_like(values, math.inf)
    lo = torch.where(masked, values, inf).min(1, keepdim=True).values
    hi = torch.where(masked, values, -inf).max(1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > 0, (values - lo) / span.clamp_min(1e-30), torch.ones_like(values))
    return torch.where(masked, out, torch.zeros_like(values))


def accumulate_rollout(commit_step: torch.Tensor, reliability: torch.Tensor, lam0: torch.Tensor):
    """Frontier and reliability mass of a batch of rollouts.

    ``commit_step [B, K]`` (0-based steps), ``reliability [T, B, K]`` (the raw ``c̃`` per observation, before
    row normalisation), ``lam0 [T]``. Returns ``(F [K], R [K])`` summed over the batch.
    """
    steps = reliability.shape[0]
    t = torch.arange(steps)[:, None, None]
    masked = t <= commit_step[None]  # observation t precedes (or is) the commit step: position still masked
    normed = torch.stack([_rownorm(reliability[s].double(), masked[s]) for s in range(steps)])
    r = (normed * masked).sum(0) / masked.sum(0).clamp(min=1)
    f = lam0[commit_step.clamp(min=0)] * (commit_step >= 0)
    return f.sum(0), r.sum(0)


def combine_prior(frontier: torch.Tensor, reliability: torch.Tensor, seq_len: int, terms: str = "both",
                  floor: float = 0.1, logits_shift: int = 0) -> torch.Tensor:
    """The length-``seq_len`` prior from the window masses ``frontier [K]``, ``reliability [K]`` (see the module
    docstring), float32 ``[seq_len]``, mean 1. Masses ``[S, K]`` (one row per calibration state, as
    :func:`.states.frontier_weights` passes them) give ``[S, seq_len]``: every mean (unit-mean terms, floor,
    final rescaling) is then taken over all rows together, so rows keep their relative mass."""
    if terms not in TERMS:
        raise ValueError(f"prior terms must be one of {', '.join(TERMS)}, got {terms!r}")
    k = frontier.shape[-1]
    if k > seq_len:
        raise ValueError(f"prior window K={k} is longer than the calibration length L={seq_len}")

    def unit_mean(v):
        v = v.double()
        return v / v.mean() if float(v.mean()) > 0 else torch.ones_like(v)

    parts = {"frontier": [unit_mean(frontier)], "reliability": [unit_mean(reliability)],
             "both": [unit_mean(frontier), unit_mean(reliability)]}[terms]
    window = sum(parts) / len(parts)
    lead = tuple(window.shape[:-1])
    w = torch.full(lead + (seq_len,), floor * float(window.mean()), dtype=torch.float64)
    w[..., seq_len - k:] = window
    if logits_shift:
        w = torch.cat([w[..., logits_shift:], torch.full(lead + (logits_shift,), floor * float(window.mean()),
                                                         dtype=torch.float64)], -1)
    return (w / w.mean()).float()


@dataclass
class PositionPrior:
    """Per-position calibration weights ``weights [L]`` (mean 1; index = hidden-state position), the raw
    window masses ``frontier [K]`` and ``reliability [K]``, and the probing settings in ``metadata``."""

    weights: torch.Tensor
    frontier: torch.Tensor
    reliability: torch.Tensor
    metadata: dict = field(default_factory=dict)

    def save(self, path: str) -> None:
        """Write a safetensors file (tensors + JSON metadata)."""
        save_file({"weights": self.weights.float().contiguous(), "frontier": self.frontier.float().contiguous(),
                   "reliability": self.reliability.float().contiguous()}, path,
                  metadata={"format": PRIOR_FORMAT, "metadata": json.dumps(self.metadata, sort_keys=True)})

    def check_compatible(self, family: str, logits_shift: int, seq_len: int, window: int) -> None:
        """``ValueError`` listing every probing fact of this prior (``metadata``: model family, logit shift,
        sequence length, window) that differs from the calibration it is reused for: a prior probed on a
        LLaDA-style model weights the wrong positions of a Dream-style one (shifted by one), and one of another
        geometry the wrong window."""
        wanted = {"family": family, "logits_shift": logits_shift, "seq_len": seq_len, "window": window}
        recorded = {**self.metadata, "seq_len": self.metadata.get("seq_len", int(self.weights.numel()))}
        names = {"family": "model family", "logits_shift": "logit shift", "seq_len": "seq_len",
                 "window": "prior_window"}
        wrong = [key for key in wanted if key in recorded and recorded[key] != wanted[key]]
        if wrong:
            probed = ", ".join(f"{names[k]} {recorded[k]!r}" for k in wrong)
            used = ", ".join(f"{names[k]} {wanted[k]!r}" for k in wrong)
            raise ValueError(f"the reused position prior was probed with {probed}, but this calibration uses "
                             f"{used}; probe again with the same model, seq_len and prior_window "
                             "(fair-calib probe), or drop prior_path")

    @classmethod
    def load(cls, path: str) -> "PositionPrior":
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != PRIOR_FORMAT:
                raise ValueError(f"{path} is not a fair_calib position prior (format {meta.get('format')!r})")
            tensors = {k: f.get_tensor(k) for k in ("weights", "frontier", "reliability")}
        return cls(**tensors, metadata=json.loads(meta["metadata"]))

    def to_json(self) -> str:
        """JSON (exact float32 values) for a checkpoint's header metadata; :meth:`from_json` inverts it."""
        return json.dumps({"weights": self.weights.tolist(), "frontier": self.frontier.tolist(),
                           "reliability": self.reliability.tolist(), "metadata": self.metadata}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PositionPrior":
        d = json.loads(text)
        return cls(*(torch.tensor(d[k], dtype=torch.float32) for k in ("weights", "frontier", "reliability")),
                   metadata=d["metadata"])

    @classmethod
    def from_checkpoint(cls, path: str) -> "PositionPrior | None":
        """The prior stored in a quantized checkpoint folder's safetensors header, or ``None``."""
        from ..checkpoint import PRIOR_METADATA_KEY, locate_checkpoint_files, read_header_metadata

        text = read_header_metadata(locate_checkpoint_files(path)).get(PRIOR_METADATA_KEY)
        return cls.from_json(text) if text else None


def probe_geometry(config, family: str, seq_len: int, what: str = "Stage I") -> tuple[int, int, int]:
    """``(K, T, block)``: the window (``prior_window`` capped at ``seq_len − 1``), the steps (``probe_steps``
    capped at ``K``) and the semi-AR block length (``probe_block_length``; ``None``: 32 for the ``llada`` family
    when 32 divides ``K``, else ``K``) of the teacher's rollouts. ``ValueError`` (prefixed with ``what``) when
    the block does not divide ``K`` or the steps are not a multiple of the number of blocks."""
    k = min(config.prior_window, seq_len - 1)
    if k < 1:
        raise ValueError(f"calibration sequences of {seq_len} tokens leave no room for a probe window")
    steps = min(config.probe_steps, k)
    block = config.probe_block_length
    if block is None:
        block = 32 if family == "llada" and k % 32 == 0 else k
    if k % block:
        raise ValueError(f"{what}: probe_block_length={block} does not divide the probe window K={k} "
                         f"(prior_window capped at seq_len - 1); choose a divisor of {k}, or None")
    if steps % (k // block):
        raise ValueError(f"{what}: probe_steps={steps} (capped at K={k}) is not a multiple of the {k // block} "
                         f"blocks of {block}; choose a multiple of {k // block} or another probe_block_length")
    return k, steps, block


def _reliability(traj, kind: str, vocab: int) -> torch.Tensor:
    if kind == "prob":
        return traj.prob
    if kind == "margin":
        return traj.margin
    return 1 - traj.entropy / math.log(vocab)


@torch.no_grad()
def probe_position_prior(model, sequences: torch.Tensor, config) -> PositionPrior:
    """Run ``config.n_probe`` random-commit rollouts of the full-precision ``model`` on the probe prompts of
    ``sequences [N, L]`` (cycling through them with distinct seeds) and build the prior."""
    adapter = get_adapter(model)
    n, seq_len = sequences.shape
    k, steps, block = probe_geometry(config, adapter.family, seq_len)
    lam0 = lambda0(steps, config.prior_schedule, config.prior_gamma)
    vocab = model.get_output_embeddings().out_features
    frontier = torch.zeros(k, dtype=torch.float64)
    reliability = torch.zeros(k, dtype=torch.float64)
    batch = max(1, config.probe_batch_size)
    done = 0
    bar = hf_logging.tqdm(total=config.n_probe, desc="fair_calib: Stage I probing")
    while done < config.n_probe:
        rows = [(done + j) % n for j in range(min(batch, config.n_probe - done))]
        prompts = sequences[rows, : seq_len - k]
        cfg = DecodeConfig(gen_length=k, steps=steps, block_length=block, policy="random",
                           seed=config.seed * 1_000_003 + done, final_observation=False)
        traj = diffusion_generate(model, prompts, config=cfg, adapter=adapter).trajectory
        f, r = accumulate_rollout(traj.commit_step, _reliability(traj, config.prior_reliability, vocab), lam0)
        frontier += f
        reliability += r
        done += len(rows)
        bar.update(len(rows))
    bar.close()
    weights = combine_prior(frontier, reliability, seq_len, config.prior_terms, config.prior_floor,
                            adapter.logits_shift)
    metadata = {"family": adapter.family, "seq_len": seq_len, "window": k, "steps": steps, "block_length": block,
                "n_probe": config.n_probe, "schedule": config.prior_schedule, "gamma": config.prior_gamma,
                "terms": config.prior_terms, "reliability": config.prior_reliability, "floor": config.prior_floor,
                "logits_shift": adapter.logits_shift, "seed": config.seed}
    return PositionPrior(weights, frontier.float(), reliability.float(), metadata)
