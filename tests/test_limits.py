"""Inputs at and beyond what a model supports: no tokenizer for text calibration data, prompts longer than the
model's positions in ``diffusion_generate``, and long inputs in the lm-eval model (rolling windows for
``loglikelihood_rolling``, left truncation for generation and likelihood contexts, as lm-eval's HF model)."""
import glob
import os

import pytest
import torch
from transformers import AutoModel

from fair_calib_hf import FairCalibConfig
from fair_calib_hf.decoding import DecodeConfig, diffusion_generate, mc_log_likelihood
from fair_calib_hf.reference_models import save_tiny

KINDS = ["llada", "dream"]
POSITIONS = {"llada": "max_sequence_length", "dream": "max_position_embeddings"}


@pytest.mark.parametrize("kind", KINDS)
def test_text_calibration_data_without_a_tokenizer_is_a_clear_error(kind, tmp_path):
    path = save_tiny(kind, tmp_path / kind)
    for f in glob.glob(os.path.join(path, "tok*")) + glob.glob(os.path.join(path, "special*")):
        os.remove(f)
    with pytest.raises(ValueError, match=r"no tokenizer could be loaded from .*FairCalibConfig\(tokenizer=.*token-id"):
        AutoModel.from_pretrained(path, trust_remote_code=True,
                                  quantization_config=FairCalibConfig(method="rtn", calibration_dataset=["some text"]))
    # token ids need no tokenizer
    AutoModel.from_pretrained(path, trust_remote_code=True, quantization_config=FairCalibConfig(
        method="rtn", calibration_dataset=[list(range(5, 40))]))


@pytest.mark.parametrize("kind", KINDS)
def test_diffusion_generate_refuses_more_tokens_than_the_model_has_positions(kind, tmp_path):
    model = AutoModel.from_pretrained(save_tiny(kind, tmp_path / kind, **{POSITIONS[kind]: 64}),
                                      trust_remote_code=True)
    cfg = DecodeConfig(gen_length=16, steps=2)
    with pytest.raises(ValueError, match=r"prompt length 50 \+ gen_length 16 = 66 tokens exceeds the model's 64 "):
        diffusion_generate(model, torch.randint(5, 90, (1, 50)), config=cfg)
    out = diffusion_generate(model, torch.randint(5, 90, (1, 48)), config=cfg)  # exactly 64: runs
    assert out.sequences.shape == (1, 64)


def _request(*args):
    from lm_eval.api.instance import Instance

    return Instance(request_type="x", doc={}, arguments=args, idx=0)


@pytest.fixture(scope="module")
def short_llada(tmp_path_factory):
    """A tiny LLaDA-style model with 32 positions, behind the lm-eval model."""
    pytest.importorskip("lm_eval", reason="lm_eval is part of the [test] extra")
    from fair_calib_hf.lm_eval_model import FairCalibDLLM

    path = save_tiny("llada", tmp_path_factory.mktemp("short") / "llada", max_sequence_length=32)
    return FairCalibDLLM(pretrained=path, gen_length=8, mc_num=2, seed=3)


def test_rolling_loglikelihood_sums_disjoint_windows_of_the_model_length(short_llada, monkeypatch):
    import fair_calib_hf.lm_eval_model as module

    lm = short_llada
    text = " ".join(["twelve plus three is fifteen"] * 12)
    tokens = lm._encode(text, False)
    assert len(tokens) > 3 * 32
    calls = []
    real = module.mc_log_likelihood

    def spy(model, prompt, answer, **kw):
        calls.append((prompt.tolist(), answer.tolist()))
        return real(model, prompt, answer, **kw)
    monkeypatch.setattr(module, "mc_log_likelihood", spy)
    total, = lm.loglikelihood_rolling([_request(text)])
    assert len(calls) >= 4
    assert all(len(p) + len(a) <= 32 for p, a in calls)  # every forward fits the model's positions
    assert [t for _, a in calls for t in a] == tokens  # every token scored exactly once, in order
    assert calls[0][0] == [lm.tokenizer.bos_token_id]
    for i, (context, _) in enumerate(calls[1:], 1):  # each context: the tokens right before its window
        start = sum(len(a) for _, a in calls[:i])
        assert context == tokens[start - len(context):start]
    assert total < 0 and torch.isfinite(torch.tensor(total))


def test_rolling_loglikelihood_of_a_short_text_is_one_window(short_llada):
    lm = short_llada
    tokens = lm._encode("2 + 3 = 5", False)
    total, = lm.loglikelihood_rolling([_request("2 + 3 = 5")])
    assert total == mc_log_likelihood(lm.model, torch.tensor([lm.tokenizer.bos_token_id]), torch.tensor(tokens),
                                      mc_num=2, batch_size=2, seed=3)


def test_generation_and_likelihood_contexts_are_cut_from_the_left(short_llada, monkeypatch):
    import fair_calib_hf.lm_eval_model as module

    lm = short_llada
    context = " ".join(["seven"] * 60)
    seen = []
    real_generate = module.diffusion_generate

    def generate_spy(model, ids, mask, config, **kw):
        seen.append(ids[0].tolist())
        return real_generate(model, ids, mask, config, **kw)
    monkeypatch.setattr(module, "diffusion_generate", generate_spy)
    text, = lm.generate_until([_request(context, {"until": ["\n"], "max_gen_toks": 8})])
    full = lm._encode(context, True)
    assert len(full) > 32 and seen[0] == full[-(32 - 8):]  # the last 24 context tokens, room for 8 new ones

    prompts = []
    real_ll = module.mc_log_likelihood

    def ll_spy(model, prompt, answer, **kw):
        prompts.append((prompt.tolist(), answer.tolist()))
        return real_ll(model, prompt, answer, **kw)
    monkeypatch.setattr(module, "mc_log_likelihood", ll_spy)
    (ll, _), = lm.loglikelihood([_request(context, " eight")])
    (prompt, answer), = prompts
    assert len(prompt) + len(answer) == 32 and prompt == lm._encode(context, True)[-(32 - len(answer)):]
    with pytest.raises(ValueError, match="does not fit in the model's 32 positions"):
        lm.loglikelihood([_request("one", " eight" * 40)])
