"""Task accuracy of a (float or quantized) diffusion LM on a zoo task, with the decoding settings stated.

Default decoding per family (written into every result): ``gen_length`` = the task's answer width, one token
committed per step (``steps = gen_length``), LLaDA-style ``low_confidence`` remasking in semi-autoregressive
blocks of 8, Dream-style ``maskgit_plus`` (no blocks), greedy (temperature 0), stop tokens committed last
(LLaDA's ``confidence_eos_eot_inf``).
"""
from __future__ import annotations

import math
import time

import torch

from ..architectures import get_adapter
from ..decoding import DecodeConfig, diffusion_generate, mc_log_likelihood
from ..diagnostics.frontier import decode_windows
from .tasks import Task


def default_decode_config(task: Task, family: str, **overrides) -> DecodeConfig:
    """The decoding settings the benchmark uses for ``task`` on a ``family`` model (module docstring)."""
    if family == "llada":
        block = 8 if task.gen_length % 8 == 0 else task.gen_length
        settings = dict(policy="low_confidence", block_length=block)
    else:
        settings = dict(policy="maskgit_plus", block_length=None)
    settings = {**dict(gen_length=task.gen_length, steps=task.gen_length, temperature=0.0,
                       confidence_eos_eot_inf=True), **settings, **overrides}
    return DecodeConfig(**settings)


def calibration_geometry(task: Task, family: str, **decode_overrides) -> dict:
    """The ``FairCalibConfig`` fields that fit calibration to how ``task`` is decoded: sequences of prompt +
    answer (``seq_len``), the answer as the prior's window, and Stage I rollouts with the deployment sampler's
    steps and block length (:func:`default_decode_config` with ``decode_overrides``), so that the early-boost
    schedule sees LLaDA's block order."""
    config = default_decode_config(task, family, **decode_overrides)
    return dict(seq_len=task.prompt_width + task.gen_length, prior_window=task.gen_length, probe_steps=config.steps,
                probe_block_length=config.block_length or task.gen_length)


def decode_settings(config: DecodeConfig) -> dict:
    """The decoding fields worth printing next to a score."""
    return {k: getattr(config, k) for k in ("policy", "gen_length", "steps", "block_length", "temperature")}


def accuracy_interval(correct: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` ⊂ [0, 1] of an accuracy of ``correct`` out of ``n`` problems at
    confidence ``level`` (``scipy.stats.binomtest(...).proportion_ci(method="wilson")``). ``ValueError`` for
    ``n < 1`` or ``correct`` outside ``0..n``."""
    from scipy.stats import binomtest

    if n < 1 or not 0 <= correct <= n:
        raise ValueError(f"accuracy_interval: need 0 <= correct <= n and n >= 1, got correct={correct}, n={n}")
    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def describe_accuracy(result: dict) -> str:
    """``"accuracy 71.9 % (n=64, 95 % CI [59.9, 81.5])"`` of an :func:`evaluate` result."""
    lo, hi = result["accuracy_ci95"]
    return f"accuracy {100 * result['accuracy']:.1f} % (n={result['n']}, 95 % CI [{100 * lo:.1f}, {100 * hi:.1f}])"


@torch.no_grad()
def generate_answers(model, tokenizer, task: Task, examples, config: DecodeConfig, batch_size: int = 128):
    """Decoded answer texts (cut at the first stop token) and the window tokens ``[N, gen_length]``."""
    adapter = get_adapter(model)
    stops = adapter.stop_token_ids(model.config, tokenizer)
    prompts, _ = task.encode(examples, tokenizer)
    texts, windows = [], []
    for start in range(0, len(examples), batch_size):
        out = diffusion_generate(model, prompts[start:start + batch_size], config=config, adapter=adapter)
        window = out.sequences[:, task.prompt_width:].cpu()
        windows.append(window)
        texts.extend(decode_windows(window, tokenizer, stops))
    return texts, torch.cat(windows)


@torch.no_grad()
def evaluate(model, tokenizer, task: Task, split: str = "test", count: int = 512, seed: int = 0,
             config: DecodeConfig | None = None, batch_size: int = 128, likelihood_samples: int = 0,
             mc_num: int = 32) -> dict:
    """Exact match of ``count`` examples of ``split`` (``accuracy`` ∈ [0, 1], ``accuracy_ci95`` its 95 % Wilson
    interval, :func:`accuracy_interval`) and, with
    ``likelihood_samples > 0``, the Monte-Carlo masked log-likelihood of the answer window (text, end of turn
    and EOS padding, as trained) per text-and-end-of-turn token (nats, over the first ``likelihood_samples``
    examples, ``mc_num`` draws each)."""
    model.eval()
    adapter = get_adapter(model)
    config = config or default_decode_config(task, adapter.family, record=False)
    examples = task.examples(split, count, seed)
    started = time.perf_counter()
    texts, _ = generate_answers(model, tokenizer, task, examples, config, batch_size)
    correct = [task.score(text, ex) for text, ex in zip(texts, examples)]
    result = {"task": task.name, "split": split, "n": len(examples), "accuracy": sum(correct) / len(correct),
              "accuracy_ci95": list(accuracy_interval(sum(correct), len(correct))),
              "decoding": decode_settings(config), "seconds": round(time.perf_counter() - started, 2),
              "samples": [{"prompt": ex.prompt, "prediction": text, "reference": ex.reference, "correct": ok}
                          for ex, text, ok in list(zip(examples, texts, correct))[:8]]}
    if likelihood_samples:
        result["log_likelihood_per_token"] = answer_log_likelihood(
            model, tokenizer, task, examples[:likelihood_samples], mc_num=mc_num, seed=seed)
        result["perplexity"] = math.exp(-result["log_likelihood_per_token"])
    return result


def answer_log_likelihood(model, tokenizer, task: Task, examples, mc_num: int = 32, seed: int = 0) -> float:
    """Mean Monte-Carlo masked log-likelihood (nats) per answer token of ``examples``: the likelihood of each
    whole answer window as trained (text, end of turn, EOS padding; ``mc_num`` draws, seed ``seed + row``),
    summed and divided by the number of text and end-of-turn tokens."""
    adapter = get_adapter(model)
    prompts, answers = task.encode(examples, tokenizer)
    eos = tokenizer.eos_token_id
    total, tokens = 0.0, 0
    with torch.no_grad():
        for row in range(prompts.shape[0]):
            # The whole window: cutting the padding off gives the model a sequence length it never saw (on the
            # first code model: −4.8 instead of −2.5 nats per token). The padding is near-certain after the end
            # of turn, so it costs almost nothing.
            total += mc_log_likelihood(model, prompts[row], answers[row], mc_num=mc_num, batch_size=mc_num,
                                       seed=seed + row, adapter=adapter)
            tokens += int((answers[row] != eos).sum())
    return total / tokens
