"""Monte-Carlo masked log-likelihood of an answer given a prompt (LLaDA's estimator).

For each of ``mc_num`` draws: pick a count ``ℓ ∈ [1, |a|]`` (counts spread evenly over the draws from a
random offset), mask ``ℓ`` uniformly chosen answer tokens (the prompt stays clean), and take the summed
cross-entropy over the masked positions divided by the masked fraction ``ℓ / |a|``. The estimate of
``log p(answer | prompt)`` is minus the mean over draws (a lower bound in expectation, the ELBO).
Dream-style models are handled by the adapter's logit shift.
"""
from __future__ import annotations

import torch

from .. import cpu_threads
from ..architectures import ModelAdapter, get_adapter


@torch.no_grad()
@cpu_threads.adaptive_threads()
def mc_log_likelihood(model, prompt_ids: torch.Tensor, answer_ids: torch.Tensor, mc_num: int = 128,
                      batch_size: int = 16, seed: int = 0, adapter: ModelAdapter | None = None) -> float:
    """Estimate ``log p(answer | prompt)`` for 1-D ``prompt_ids`` and ``answer_ids`` (see module docstring)."""
    if answer_ids.numel() == 0 or prompt_ids.numel() == 0:
        raise ValueError("mc_log_likelihood needs a non-empty prompt and answer")
    if mc_num < 1 or batch_size < 1:
        raise ValueError("mc_num and batch_size must be positive")
    adapter = adapter or get_adapter(model)
    mask_id = adapter.mask_token_id(model.config)
    device = model.get_input_embeddings().weight.device
    prompt, answer = prompt_ids.to(device).long(), answer_ids.to(device).long()
    p, a = prompt.numel(), answer.numel()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    offset = int(torch.randint(0, a, (1,), generator=gen))
    counts = [(offset + d * a // mc_num) % a + 1 for d in range(mc_num)] if mc_num > 1 else [offset + 1]
    seq = torch.cat([prompt, answer])
    total = 0.0
    for start in range(0, mc_num, batch_size):
        chunk = counts[start:start + batch_size]
        x = seq.repeat(len(chunk), 1)
        masked = torch.zeros(len(chunk), a, dtype=torch.bool)
        for row, ell in enumerate(chunk):
            masked[row, torch.randperm(a, generator=gen)[:ell]] = True
        masked = masked.to(device)
        x[:, p:][masked] = mask_id
        cpu_threads.rebalance()
        logits = model(input_ids=x).logits
        lo = p - adapter.logits_shift
        logits = logits[:, lo:lo + a].float()
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), answer.repeat(len(chunk)),
                                               reduction="none").reshape(len(chunk), a)
        frac = torch.tensor(chunk, dtype=torch.float32, device=device) / a
        total += float(((ce * masked).sum(1) / frac).sum())
    return -total / mc_num
