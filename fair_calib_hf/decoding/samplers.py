"""Masked-diffusion decoding with commit trajectories.

Common rule: a committed token is never changed; "remasking" only chooses *which* current predictions to
keep. Every step is one full bidirectional forward over the canvas (two with classifier-free guidance).
Logits are aligned by the model adapter so that ``logits[:, i]`` predicts window token ``i`` (Dream-style
models: the output at ``i − 1``).

Policies:

* LLaDA-style, semi-autoregressive blocks of ``block_length`` with ``steps / num_blocks`` steps per block and
  per-step commit counts spread evenly (``k_j = ⌊n/s⌋ + [j < n mod s]`` for ``n`` masked in the block):
  ``low_confidence`` (keep the highest softmax probability of the chosen token), ``random`` (uniform choice:
  the Stage I probing policy); candidates are the argmax, or a Gumbel-max sample at ``temperature > 0``.
  Optional classifier-free guidance ``u + (cfg + 1)(c − u)`` with ``u`` the logits with the prompt masked.
* ``threshold`` (Fast-dLLM): inside the active block, commit the most confident masked position plus every
  masked position whose confidence is ≥ ``threshold``; steps per block are adaptive.
* Dream-style, no blocks, schedule ``t_i = linspace(1, eps, steps + 1)``: ``origin`` (each masked position
  independently with probability ``1 − s/t``), ``maskgit_plus`` (confidence = p(candidate)),
  ``topk_margin`` (p1 − p2), ``entropy`` (Σ p log p); these three commit ``⌊mean_b #masked · (1 − s/t)⌋``
  positions per step (all remaining at the last), top-n by confidence, or sampled without replacement from
  ``softmax(conf / alg_temp)`` when ``alg_temp > 0``. Token sampling: logits / temperature, then top-p, then
  top-k; argmax at temperature 0.

End of answer (LLaDA's two flags, with one documented behaviour each): ``logits_eos_inf`` removes the stop
tokens (EOS and end-of-turn, ``stop_token_ids`` or the adapter's) from the candidates, so they are never
written; ``confidence_eos_eot_inf`` gives a position whose candidate is a stop token confidence 0, so stop
tokens are committed last (after every other position of the block). The mask token is never a candidate.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .. import cpu_threads
from ..architectures import ModelAdapter, get_adapter
from .trajectory import Trajectory, position_stats

BLOCK_POLICIES = ("low_confidence", "random", "threshold")
DREAM_POLICIES = ("origin", "maskgit_plus", "topk_margin", "entropy")
POLICIES = BLOCK_POLICIES + DREAM_POLICIES


@dataclass
class DecodeConfig:
    """Decoding settings (see the module docstring). ``block_length None`` means one block."""

    gen_length: int = 128
    steps: int = 128
    block_length: int | None = None
    policy: str = "low_confidence"
    temperature: float = 0.0
    cfg_scale: float = 0.0
    threshold: float = 0.9
    alg_temp: float | None = None
    eps: float = 1e-3
    top_p: float | None = None
    top_k: int | None = None
    seed: int = 0
    record: bool = True
    final_observation: bool = True
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    stop_token_ids: tuple | None = None

    def __post_init__(self):
        def bad(field, allowed):
            raise ValueError(f"DecodeConfig: invalid {field}={getattr(self, field)!r}; allowed: {allowed}")

        if self.policy not in POLICIES:
            bad("policy", ", ".join(POLICIES))
        if not isinstance(self.gen_length, int) or self.gen_length < 1:
            bad("gen_length", "a positive integer")
        if not isinstance(self.steps, int) or self.steps < 1:
            bad("steps", "a positive integer")
        block = self.block_length if self.block_length is not None else self.gen_length
        if not isinstance(block, int) or block < 1 or self.gen_length % block:
            bad("block_length", f"a divisor of gen_length={self.gen_length}")
        if self.policy in DREAM_POLICIES and block != self.gen_length:
            bad("block_length", f"None or gen_length for the Dream-style policy {self.policy!r} (no blocks)")
        if self.policy in ("low_confidence", "random") and self.steps % (self.gen_length // block):
            bad("steps", f"a multiple of the number of blocks ({self.gen_length // block})")
        if self.temperature < 0:
            bad("temperature", ">= 0")
        if self.cfg_scale < 0:
            bad("cfg_scale", ">= 0")
        if not 0 < self.threshold <= 1:
            bad("threshold", "a number in (0, 1]")
        if self.alg_temp is not None and self.alg_temp < 0:
            bad("alg_temp", "None or >= 0")
        if not 0 < self.eps < 1:
            bad("eps", "a number in (0, 1)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            bad("top_p", "None or a number in (0, 1]")
        if self.top_k is not None and self.top_k < 1:
            bad("top_k", "None or a positive integer")

    @property
    def num_blocks(self) -> int:
        return self.gen_length // (self.block_length or self.gen_length)


@dataclass
class DecodeResult:
    """``sequences [B, P + G]`` (prompt and decoded window), the trajectory (if recorded) and the number of
    model forwards (NFE)."""

    sequences: torch.Tensor
    trajectory: Trajectory | None
    nfe: int


class WindowLogits:
    """Calls the model on a canvas and returns window-aligned logits ``[B, G, V]`` (with classifier-free
    guidance when ``cfg_scale > 0``: ``u + (cfg + 1)(c − u)``, ``u`` computed with the prompt masked).
    Counts model forwards in ``nfe``."""

    def __init__(self, model, adapter: ModelAdapter, prompt_len: int, gen_length: int, attention_mask,
                 mask_token_id: int, cfg_scale: float = 0.0):
        self.model, self.adapter = model, adapter
        self.prompt_len, self.mask_id, self.cfg_scale = prompt_len, mask_token_id, cfg_scale
        self.lo = prompt_len - adapter.logits_shift
        self.hi = self.lo + gen_length
        has_padding = attention_mask is not None and not bool(attention_mask.all())
        self.attention_mask = attention_mask if has_padding else None
        self.nfe = 0

    def _forward(self, canvas):
        kwargs = {"attention_mask": self.attention_mask} if self.attention_mask is not None else {}
        self.nfe += 1
        return self.model(input_ids=canvas, **kwargs).logits[:, self.lo:self.hi]

    @torch.no_grad()
    @cpu_threads.adaptive_threads()  # a step boundary (entry rebalances); a job of its own in the replays
    def __call__(self, canvas: torch.Tensor) -> torch.Tensor:
        cond = self._forward(canvas)
        if self.cfg_scale > 0:
            un = canvas.clone()
            real = (self.attention_mask[:, :self.prompt_len].bool() if self.attention_mask is not None
                    else torch.ones_like(un[:, :self.prompt_len], dtype=torch.bool))
            un[:, :self.prompt_len] = un[:, :self.prompt_len].masked_fill(real, self.mask_id)
            uncond = self._forward(un)
            cond = uncond + (self.cfg_scale + 1) * (cond - uncond)
        return cond


def _excluded_candidates(logits: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    """Logits with ``token_ids`` removed from the candidates (the mask token always: a position that looked
    masked again would be committed twice; the stop tokens with ``logits_eos_inf``)."""
    return logits.index_fill(-1, torch.tensor(token_ids, device=logits.device), float("-inf"))


def _spread(n: int, steps: int) -> list[int]:
    """``n`` commits over ``steps`` steps, as even as possible, extra ones first."""
    return [n // steps + (1 if j < n % steps else 0) for j in range(steps)]


def _rank_select(conf: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Boolean mask selecting, per row, the ``counts[b]`` highest finite entries of ``conf [B, G]``."""
    k = int(counts.max()) if counts.numel() else 0
    out = torch.zeros_like(conf, dtype=torch.bool)
    if k == 0:
        return out
    top = conf.topk(k, dim=1)
    keep = (torch.arange(k, device=conf.device)[None] < counts[:, None]) & torch.isfinite(top.values)
    return out.scatter(1, top.indices, keep)


def _gumbel_argmax(logits: torch.Tensor, temperature: float, gen: torch.Generator) -> torch.Tensor:
    """Argmax at temperature 0, else a sample of ``softmax(logits / T)`` by Gumbel-max in float64."""
    if temperature == 0:
        return logits.argmax(-1)
    u = torch.rand(logits.shape, generator=gen, device=logits.device, dtype=torch.float64).clamp_(min=1e-300)
    return (logits.double() / temperature - torch.log(-torch.log(u))).argmax(-1)


def _dream_probs(logits: torch.Tensor, cfg: DecodeConfig) -> torch.Tensor:
    """Dream's token distribution: logits / temperature, then top-p, then top-k, then softmax (fp32)."""
    logits = logits.float()
    if cfg.temperature > 0:
        logits = logits / cfg.temperature
    if cfg.top_p is not None and cfg.top_p < 1:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= cfg.top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    if cfg.top_k is not None:
        kth = logits.topk(min(cfg.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits.softmax(-1)


def _dream_candidates(logits, cfg: DecodeConfig, gen: torch.Generator):
    """``(candidate tokens, confidence)`` per window position for the Dream-style policies."""
    probs = _dream_probs(logits, cfg)
    if cfg.temperature > 0:
        flat = probs.reshape(-1, probs.shape[-1])
        x0 = torch.multinomial(flat, 1, generator=gen).reshape(probs.shape[:-1])
    else:
        x0 = probs.argmax(-1)
    if cfg.policy == "topk_margin":
        top2 = probs.topk(2, dim=-1).values
        conf = top2[..., 0] - top2[..., 1]
    elif cfg.policy == "entropy":
        conf = (probs * probs.clamp_min(1e-30).log()).sum(-1)
    else:  # maskgit_plus, origin
        conf = probs.gather(-1, x0[..., None])[..., 0]
    return x0, conf


class _Recorder:
    def __init__(self, enabled: bool):
        self.enabled, self.rows = enabled, []

    def observe(self, logits):
        if self.enabled:
            self.rows.append(position_stats(logits))

    def stacked(self):
        return [torch.stack([r[i] for r in self.rows]) for i in range(4)]


@torch.no_grad()
def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths as one batch, the layout :func:`diffusion_generate` expects: token-id
    ``rows`` right-aligned in ``input_ids`` int64 ``[B, W]`` (``W`` the longest row) after ``pad_id``, and
    ``attention_mask`` int64 ``[B, W]``, 1 on the real tokens."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


@cpu_threads.adaptive_threads()
def diffusion_generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       config: DecodeConfig | None = None, adapter: ModelAdapter | None = None,
                       mask_token_id: int | None = None) -> DecodeResult:
    """Decode ``config.gen_length`` tokens after the (left-padded) prompts ``input_ids [B, P]``.

    ``attention_mask [B, P]`` marks real prompt tokens (1) and left padding (0); it is extended with ones
    over the window and passed to the model only when it contains padding.

    Raises ``ValueError`` when ``P + gen_length`` exceeds the positions the model was built for
    (:meth:`ModelAdapter.max_positions`): every step runs one forward over the whole canvas.
    """
    cfg = config or DecodeConfig()
    adapter = adapter or get_adapter(model)
    mask_id = adapter.mask_token_id(model.config) if mask_token_id is None else mask_token_id
    device = model.get_input_embeddings().weight.device
    prompt = input_ids.to(device)
    b, p = prompt.shape
    if p < 1:
        raise ValueError("diffusion_generate needs a prompt of at least one token")
    if bool((prompt == mask_id).any()):
        raise ValueError(f"the prompt contains the mask token id {mask_id}")
    g = cfg.gen_length
    limit = adapter.max_positions(model.config)
    if limit is not None and p + g > limit:
        raise ValueError(f"prompt length {p} + gen_length {g} = {p + g} tokens exceeds the model's {limit} "
                         f"positions ({adapter.max_positions_key}); shorten the prompt (keep its last "
                         f"{max(limit - g, 0)} tokens) or lower gen_length")
    full_mask = None
    if attention_mask is not None:
        full_mask = torch.cat([attention_mask.to(device), torch.ones(b, g, dtype=attention_mask.dtype, device=device)], 1)
    canvas = torch.cat([prompt, torch.full((b, g), mask_id, dtype=prompt.dtype, device=device)], dim=1)
    logits_at = WindowLogits(model, adapter, p, g, full_mask, mask_id, cfg.cfg_scale)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    rec = _Recorder(cfg.record)
    commit_step = torch.full((b, g), -1, dtype=torch.long, device=device)
    stops = list(cfg.stop_token_ids) if cfg.stop_token_ids is not None else adapter.stop_token_ids(model.config)
    excluded = [mask_id] + (stops if cfg.logits_eos_inf else [])
    stop_ids = torch.tensor(stops, dtype=torch.long, device=device)
    window = canvas[:, p:]  # a view: writes land in the canvas

    def commit(select, tokens, t):
        window[select] = tokens[select]
        commit_step[select] = t

    t = 0
    if cfg.policy in BLOCK_POLICIES:
        block = cfg.block_length or g
        steps_per_block = cfg.steps // cfg.num_blocks if cfg.policy != "threshold" else None
        for lo in range(0, g, block):
            in_block = torch.zeros(b, g, dtype=torch.bool, device=device)
            in_block[:, lo:lo + block] = True
            schedule = _spread(int((commit_step[0, lo:lo + block] < 0).sum()), steps_per_block) \
                if steps_per_block else None
            j = 0
            while True:
                eligible = (commit_step < 0) & in_block
                if schedule is not None and j == len(schedule):
                    break
                if schedule is None and not bool(eligible.any()):
                    break
                logits = logits_at(canvas)
                rec.observe(logits)
                candidates = _excluded_candidates(logits, excluded)
                x0 = _gumbel_argmax(candidates, cfg.temperature, gen)
                if cfg.policy == "random":
                    conf = torch.rand(eligible.shape, generator=gen, device=device, dtype=torch.float64)
                else:  # probability of the chosen token among the allowed candidates (un-noised logits)
                    conf = candidates.double().softmax(-1).gather(-1, x0[..., None])[..., 0]
                if cfg.confidence_eos_eot_inf:
                    conf = conf.masked_fill(torch.isin(x0, stop_ids), 0.0)
                conf = conf.masked_fill(~eligible, float("-inf"))
                if schedule is not None:
                    select = _rank_select(conf, torch.full((b,), schedule[j], device=device))
                else:
                    select = _rank_select(conf, eligible.any(1).long()) | (eligible & (conf >= cfg.threshold))
                commit(select, x0, t)
                t += 1
                j += 1
    else:
        ts = torch.linspace(1, cfg.eps, cfg.steps + 1, dtype=torch.float64)
        for i in range(cfg.steps):
            masked = commit_step < 0
            logits = logits_at(canvas)
            rec.observe(logits)
            last = i == cfg.steps - 1
            ratio = 1.0 if last else float(1 - ts[i + 1] / ts[i])
            x0, conf = _dream_candidates(_excluded_candidates(logits, excluded), cfg, gen)
            if cfg.policy == "origin":
                draw = torch.rand(masked.shape, generator=gen, device=device, dtype=torch.float64) < ratio
                select = masked & draw
            else:
                counts = masked.sum(1)
                n = int(counts.max()) if last else int(counts.double().mean() * ratio)
                counts = counts.clamp(max=n)
                conf = conf.double().masked_fill(~masked, float("-inf"))
                if cfg.alg_temp:
                    select = torch.zeros_like(masked)
                    for row in range(b):
                        if int(counts[row]):
                            w = torch.softmax(conf[row] / cfg.alg_temp, -1)
                            idx = torch.multinomial(w, int(counts[row]), replacement=False, generator=gen)
                            select[row, idx] = True
                else:
                    select = _rank_select(conf, counts)
            commit(select, x0, t)
            t += 1
    if cfg.record and cfg.final_observation:
        rec.observe(logits_at(canvas))
    traj = None
    if cfg.record:
        argmax, prob, margin, entropy = rec.stacked()
        traj = Trajectory(prompt.cpu(), full_mask.cpu() if full_mask is not None else None, window.clone().cpu(),
                          commit_step.cpu(), argmax.cpu(), prob.cpu(), margin.cpu(), entropy.cpu(), t,
                          cfg.final_observation, {**asdict(cfg), "mask_token_id": mask_id,
                                                  "family": adapter.family})
    return DecodeResult(canvas, traj, logits_at.nfe)
