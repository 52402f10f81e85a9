"""The reference LLaDA-style and Dream-style models: names, loading as remote code, attention semantics."""
import hashlib
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from fair_calib_hf.reference_models import TINY_CONFIGS, build_tokenizer, save_tiny

KINDS = ["llada", "dream"]


def _load(path, auto=AutoModel, **kw):
    return auto.from_pretrained(path, trust_remote_code=True, **kw)


def _sha(path):
    return hashlib.sha256(open(os.path.join(path, "model.safetensors"), "rb").read()).hexdigest()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("auto", [AutoModel, AutoModelForCausalLM])
def test_loads_as_remote_code_and_is_deterministic(tiny_dirs, kind, auto, input_ids):
    a, b = _load(tiny_dirs[kind], auto), _load(tiny_dirs[kind], auto)
    assert type(a).__module__.startswith("transformers_modules")
    with torch.no_grad():
        la, lb = a(input_ids=input_ids).logits, b(input_ids=input_ids).logits
    assert la.shape == (2, 24, 104) and torch.isfinite(la).all() and la.std() > 0.1
    assert torch.equal(la, lb)


@pytest.mark.parametrize("kind", KINDS)
def test_seed_determinism(tmp_path, kind):
    a = save_tiny(kind, str(tmp_path / "a"), seed=1)
    b = save_tiny(kind, str(tmp_path / "b"), seed=1)
    c = save_tiny(kind, str(tmp_path / "c"), seed=2)
    assert _sha(a) == _sha(b) != _sha(c)


def test_llada_state_dict_names(tiny_dirs):
    keys = set(load_file(os.path.join(tiny_dirs["llada"], "model.safetensors")))
    block = {f"model.transformer.blocks.0.{m}.weight" for m in
             ("attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj", "ff_out")}
    top = {"model.transformer.wte.weight", "model.transformer.ln_f.weight", "model.transformer.ff_out.weight"}
    assert block | top <= keys
    assert keys == top | block | {k.replace("blocks.0.", "blocks.1.") for k in block}  # no biases, no rotary buffers


def test_dream_state_dict_names(tiny_dirs):
    keys = set(load_file(os.path.join(tiny_dirs["dream"], "model.safetensors")))
    layer = {f"model.layers.0.{m}" for m in (
        "input_layernorm.weight", "post_attention_layernorm.weight",
        "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight", "self_attn.k_proj.bias",
        "self_attn.v_proj.weight", "self_attn.v_proj.bias", "self_attn.o_proj.weight",
        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")}
    top = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    assert keys == top | layer | {k.replace("layers.0.", "layers.1.") for k in layer}


def test_config_keys_follow_the_real_checkpoints(tiny_dirs):
    import json

    llada = json.load(open(os.path.join(tiny_dirs["llada"], "config.json")))
    for key in ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "rope_theta", "mask_token_id",
                "include_bias", "weight_tying", "embedding_size", "block_type"):
        assert key in llada
    assert llada["model_type"] == "llada" and llada["auto_map"]["AutoModel"] == "modeling_llada.LLaDAModelLM"
    dream = json.load(open(os.path.join(tiny_dirs["dream"], "config.json")))
    for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size", "rope_theta",
                "mask_token_id", "rms_norm_eps"):
        assert key in dream
    assert dream["model_type"] == "Dream" and dream["auto_map"]["AutoModelForCausalLM"] == "modeling_dream.DreamModel"
    assert dream["tie_word_embeddings"] is False and llada["tie_word_embeddings"] is False


@pytest.mark.parametrize("kind", KINDS)
def test_attention_is_bidirectional(tiny_dirs, kind, input_ids):
    model = _load(tiny_dirs[kind])
    changed = input_ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 90 + 5
    with torch.no_grad():
        a, b = model(input_ids=input_ids).logits, model(input_ids=changed).logits
    assert not torch.allclose(a[:, 0], b[:, 0])  # a later token changes an earlier position


@pytest.mark.parametrize("kind", KINDS)
def test_left_padding_with_attention_mask(tiny_dirs, kind):
    model = _load(tiny_dirs[kind])
    short = torch.tensor([[10, 11, 12, 13, 14]])
    pad = build_tokenizer(kind).pad_token_id
    batch = torch.tensor([[pad, pad, pad, 10, 11, 12, 13, 14], [20, 21, 22, 23, 24, 25, 26, 27]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8])
    with torch.no_grad():
        alone = model(input_ids=short).logits
        padded = model(input_ids=batch, attention_mask=mask).logits
        full = model(input_ids=batch[1:]).logits
        ones = model(input_ids=batch[1:], attention_mask=torch.ones(1, 8, dtype=torch.long)).logits
    torch.testing.assert_close(padded[0, 3:], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded[1], full[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(ones, full)


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizer_round_trip_and_ids(tiny_dirs, kind):
    tok = AutoTokenizer.from_pretrained(tiny_dirs[kind], trust_remote_code=True)
    text = "x = 17 * (3 + 4)\n\tprint(x)  # ok!"
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text
    model = _load(tiny_dirs[kind])
    assert tok.mask_token_id == model.config.mask_token_id
    assert tok.eos_token_id == model.config.eos_token_id and tok.pad_token_id == model.config.pad_token_id
    assert len(tok) <= model.get_input_embeddings().num_embeddings
    assert tok.convert_ids_to_tokens(tok.mask_token_id) == ("<|mdm_mask|>" if kind == "llada" else "<|mask|>")


def test_bf16_load(tiny_dirs, input_ids):
    model = _load(tiny_dirs["dream"], dtype=torch.bfloat16)
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=input_ids).logits).all()


def test_bad_kind_and_bad_override(tmp_path):
    with pytest.raises(ValueError, match="llada, dream"):
        save_tiny("gpt2", str(tmp_path))
    with pytest.raises(ValueError, match="unknown llada config keys"):
        save_tiny("llada", str(tmp_path), hidden_sizes=3)
    assert TINY_CONFIGS["dream"]["hidden_size"] % 64  # non-power-of-two on purpose
