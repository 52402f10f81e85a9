"""The diffusion samplers: commit invariants, block order, logit shift, determinism, padding, likelihood."""
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import AutoModel

from fair_calib_hf.decoding import POLICIES, DecodeConfig, diffusion_generate, mc_log_likelihood

BLOCK = ("low_confidence", "random", "threshold")
MASK = 2


class StubLM(nn.Module):
    """A fake dLLM of family ``model_type``: the logits at canvas position j put a large margin on token
    ``(j + 1) % V`` (``confident``) or are uniform; it records every canvas it is called on."""

    def __init__(self, model_type, vocab=16, confident=True):
        super().__init__()
        self.config = SimpleNamespace(model_type=model_type, mask_token_id=MASK)
        self.emb = nn.Embedding(vocab, 1)
        self.vocab, self.confident, self.calls = vocab, confident, []

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids, attention_mask=None):
        self.calls.append(input_ids.clone())
        b, n = input_ids.shape
        logits = torch.zeros(b, n, self.vocab)
        if self.confident:
            target = (torch.arange(n) + 1) % self.vocab
            logits[:, torch.arange(n), target] = 10.0
        return SimpleNamespace(logits=logits)


def _cfg(policy, **kw):
    block = 8 if policy in BLOCK else None
    return DecodeConfig(gen_length=16, steps=16, block_length=block, policy=policy, **kw)


@pytest.fixture(scope="module")
def models(tiny_dirs):
    return {kind: AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True) for kind in ("llada", "dream")}


@pytest.mark.parametrize("kind", ["llada", "dream"])
@pytest.mark.parametrize("policy", POLICIES)
def test_commits_every_position_once_and_never_changes_it(models, kind, policy, input_ids):
    model = models[kind]
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a, k: calls.append(k["input_ids"].clone()), with_kwargs=True)
    try:
        res = diffusion_generate(model, input_ids[:, :6], config=_cfg(policy, alg_temp=0.3 if policy == "entropy" else None))
    finally:
        handle.remove()
    traj, mask_id = res.trajectory, model.config.mask_token_id
    window = res.sequences[:, 6:]
    assert window.shape == (2, 16) and not bool((window == mask_id).any())
    assert bool((traj.commit_step >= 0).all()) and torch.equal(traj.tokens, window)
    assert traj.num_steps == 16 and len(calls) == res.nfe == traj.argmax.shape[0]
    for t, canvas in enumerate(calls):  # state S_t seen by the model = committed before t, MASK elsewhere
        assert torch.equal(canvas, traj.canvas(t, mask_id))
    for prev, nxt in zip(calls, calls[1:]):  # a committed token never changes
        committed = prev[:, 6:] != mask_id
        assert torch.equal(nxt[:, 6:][committed], prev[:, 6:][committed])


@pytest.mark.parametrize("policy", ["low_confidence", "random"])
def test_semi_ar_blocks_and_even_schedule(models, policy, input_ids):
    cfg = DecodeConfig(gen_length=16, steps=8, block_length=4, policy=policy)
    traj = diffusion_generate(models["llada"], input_ids[:, :5], config=cfg).trajectory
    # 4 blocks, 2 steps per block, 2 commits per step; block b is filled during steps 2b and 2b+1 only
    for b in range(4):
        steps = traj.commit_step[:, 4 * b:4 * b + 4]
        assert bool(((steps >= 2 * b) & (steps <= 2 * b + 1)).all())
    for t in range(8):
        assert bool((traj.committed_at(t).sum(1) == 2).all())


def test_uneven_schedule_spreads_extra_commits_first(models, input_ids):
    cfg = DecodeConfig(gen_length=10, steps=4, block_length=10)
    traj = diffusion_generate(models["llada"], input_ids[:, :5], config=cfg).trajectory
    assert [int(traj.committed_at(t)[0].sum()) for t in range(4)] == [3, 3, 2, 2]


@pytest.mark.parametrize("kind,shift", [("llada", 0), ("dream", 1)])
@pytest.mark.parametrize("policy", ["low_confidence", "maskgit_plus", "threshold"])
def test_logit_shift(kind, shift, policy):
    stub = StubLM(kind)
    prompt = torch.tensor([[5, 6, 7]])
    res = diffusion_generate(stub, prompt, config=_cfg(policy))
    positions = torch.arange(3, 3 + 16)
    # the token at canvas position j is predicted by the output at j - shift, which favours (j - shift + 1)
    expected = (positions - shift + 1) % 16
    expected = torch.where(expected == MASK, -1, expected)  # the mask token is never a candidate
    got = res.sequences[0, 3:]
    assert torch.equal(got[expected >= 0], expected[expected >= 0])
    assert not bool((got == MASK).any())


def test_threshold_commits_all_confident_positions_in_one_step():
    stub = StubLM("llada", vocab=64)
    res = diffusion_generate(stub, torch.tensor([[5, 6, 7]]), config=DecodeConfig(
        gen_length=16, steps=16, block_length=8, policy="threshold", threshold=0.9))
    assert res.trajectory.num_steps == 2  # one step per block
    unsure = diffusion_generate(StubLM("llada", vocab=64, confident=False), torch.tensor([[5, 6, 7]]), config=DecodeConfig(
        gen_length=16, steps=16, block_length=8, policy="threshold", threshold=0.9))
    assert unsure.trajectory.num_steps == 16  # only the top-1 per step


@pytest.mark.parametrize("policy", ["low_confidence", "random", "entropy", "origin"])
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_reproducible(models, policy, temperature, input_ids):
    cfg = _cfg(policy, temperature=temperature, alg_temp=0.5 if policy == "entropy" else None, seed=3)
    a = diffusion_generate(models["dream"], input_ids[:, :5], config=cfg)
    b = diffusion_generate(models["dream"], input_ids[:, :5], config=cfg)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.trajectory.commit_step, b.trajectory.commit_step)


def test_guidance_doubles_forwards(models, input_ids):
    res = diffusion_generate(models["llada"], input_ids[:, :5], config=_cfg("low_confidence", cfg_scale=1.0))
    assert res.nfe == 2 * res.trajectory.argmax.shape[0]


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_left_padded_batch_matches_single_rows(models, kind):
    model = models[kind]
    pad = model.config.pad_token_id
    a, b = [11, 12, 13, 14, 15, 16], [21, 22, 23]
    batch = torch.tensor([a, [pad] * 3 + b])
    mask = torch.tensor([[1] * 6, [0] * 3 + [1] * 3])
    cfg = DecodeConfig(gen_length=8, steps=8, block_length=4)
    together = diffusion_generate(model, batch, mask, cfg).sequences[:, 6:]
    alone_a = diffusion_generate(model, torch.tensor([a]), config=cfg).sequences[:, 6:]
    alone_b = diffusion_generate(model, torch.tensor([b]), config=cfg).sequences[:, 3:]
    assert torch.equal(together[0], alone_a[0]) and torch.equal(together[1], alone_b[0])


def test_bad_settings_are_refused(models):
    with pytest.raises(ValueError, match="policy"):
        DecodeConfig(policy="greedy")
    with pytest.raises(ValueError, match="block_length"):
        DecodeConfig(gen_length=10, block_length=3)
    with pytest.raises(ValueError, match="steps"):
        DecodeConfig(gen_length=16, steps=3, block_length=8)
    with pytest.raises(ValueError, match="block_length"):
        DecodeConfig(gen_length=16, block_length=8, policy="entropy")
    with pytest.raises(ValueError, match="mask token"):
        diffusion_generate(models["llada"], torch.tensor([[5, models["llada"].config.mask_token_id]]))


def test_mc_likelihood_uniform_model_is_exact():
    stub = StubLM("llada", vocab=16, confident=False)  # uniform: every masked token costs log 16
    ll = mc_log_likelihood(stub, torch.tensor([5, 6]), torch.tensor([7, 8, 9, 10, 11]), mc_num=7, batch_size=3)
    assert ll == pytest.approx(-5 * math.log(16), rel=1e-6)


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_mc_likelihood_on_reference_model(models, kind):
    prompt, answer = torch.tensor([10, 11, 12, 13]), torch.tensor([20, 21, 22])
    a = mc_log_likelihood(models[kind], prompt, answer, mc_num=16, seed=1)
    b = mc_log_likelihood(models[kind], prompt, answer, mc_num=16, seed=1)
    assert a == b and math.isfinite(a) and a < 0


def test_eos_flags():
    """Stub favouring token (j+1) at canvas position j; make token 9 a stop token."""
    prompt = torch.tensor([[5, 6, 7]])
    cfg = dict(gen_length=16, steps=16, block_length=16)
    plain = diffusion_generate(StubLM("llada", vocab=64), prompt, config=DecodeConfig(**cfg, stop_token_ids=(9,)))
    assert int(plain.sequences[0, 8]) == 9  # position 8 predicts token 9
    banned = diffusion_generate(StubLM("llada", vocab=64), prompt, config=DecodeConfig(
        **cfg, stop_token_ids=(9,), logits_eos_inf=True))
    assert not bool((banned.sequences[0, 3:] == 9).any())
    last = diffusion_generate(StubLM("llada", vocab=64), prompt, config=DecodeConfig(
        **cfg, stop_token_ids=(9,), confidence_eos_eot_inf=True)).trajectory
    assert int(last.commit_step[0, 8 - 3]) == 15  # the stop token is committed at the last step
