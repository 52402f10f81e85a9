"""Commit trajectories: everything a decoding run decided, so analysis never re-runs the model.

Conventions. The generation window is the last ``G`` positions of the canvas (``[P, P + G)`` with ``P`` the
left-padded prompt length). Steps are numbered ``t = 0 .. T-1``. Observation ``t`` is the model's output on
the state ``S_t`` *before* the commits of step ``t``; an optional final observation ``t = T`` is taken on the
finished canvas (no commits), so that tokens committed at the last step also have one post-commit
observation.

Per observation, at every window position: the model's top-1 token (``argmax``), its probability
(``prob``), the margin ``p1 − p2`` and the entropy ``−Σ p log p`` (nats), from the (shift-aligned) logits.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@torch.no_grad()
def position_stats(logits: torch.Tensor):
    """``(argmax, prob, margin, entropy)`` per position of ``logits [..., V]`` (softmax in fp32)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    top = p.topk(2, dim=-1)
    entropy = -(p * logp).nan_to_num(0.0).sum(-1)
    return top.indices[..., 0], top.values[..., 0], top.values[..., 0] - top.values[..., 1], entropy


@dataclass
class Trajectory:
    """One decoding run over a batch.

    Attributes:
        prompt_ids: ``[B, P]`` left-padded prompt tokens.
        attention_mask: ``[B, P + G]`` 1 for real tokens, 0 for left padding (``None``: no padding).
        tokens: ``[B, G]`` final window tokens (a committed token never changes, so this is also the token
            written at each commit).
        commit_step: ``[B, G]`` step at which each window position was committed (``-1``: never).
        argmax, prob, margin, entropy: ``[O, B, G]`` per observation ``t`` (``O = T`` or ``T + 1``).
        num_steps: ``T``, the number of decoding steps (one model forward each, two with guidance).
        final_observation: whether observation ``T`` (the finished canvas) is recorded.
        settings: the decoding settings (policy, gen length, steps, block length, ...).
    """

    prompt_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    tokens: torch.Tensor
    commit_step: torch.Tensor
    argmax: torch.Tensor
    prob: torch.Tensor
    margin: torch.Tensor
    entropy: torch.Tensor
    num_steps: int
    final_observation: bool
    settings: dict = field(default_factory=dict)

    @property
    def gen_length(self) -> int:
        return self.tokens.shape[1]

    def committed_at(self, t: int) -> torch.Tensor:
        """Boolean ``[B, G]``: the write frontier ``C_t``."""
        return self.commit_step == t

    def window_state(self, t: int, mask_token_id: int) -> torch.Tensor:
        """Window tokens ``[B, G]`` of state ``S_t``: tokens committed before step ``t``, MASK elsewhere."""
        done = (self.commit_step >= 0) & (self.commit_step < t)
        return torch.where(done, self.tokens, torch.full_like(self.tokens, mask_token_id))

    def canvas(self, t: int, mask_token_id: int) -> torch.Tensor:
        """The full canvas ``[B, P + G]`` of state ``S_t``."""
        return torch.cat([self.prompt_ids, self.window_state(t, mask_token_id)], dim=1)
