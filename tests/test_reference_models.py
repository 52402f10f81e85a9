"""The reference LLaDA-style and Dream-style models: names, loading as remote code, attention semantics,
tokenizer, determinism. Runs on CPU under transformers 4.57 and 5.x."""
import ast
import hashlib
import json
import os
import sys

import pytest
import torch
import transformers
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from fair_calib_hf.reference_models import (
    SUPPORTED_KINDS,
    TINY_CONFIGS,
    build_tiny,
    build_tokenizer,
    remote_code_files,
    save_tiny,
    special_token_ids,
)

KINDS = ["llada", "dream"]
VOCAB = 104
TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


def _load(path, auto=AutoModel, **kw):
    return auto.from_pretrained(path, trust_remote_code=True, **kw).eval()


def _tokenizer(path):
    # transformers 5.x's AutoTokenizer reads config.json (remote code) first, as for the real checkpoints.
    return AutoTokenizer.from_pretrained(path, trust_remote_code=True)


def _sha(path):
    with open(os.path.join(path, "model.safetensors"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _blocks(model, kind):
    return model.model.transformer.blocks if kind == "llada" else model.model.layers


@pytest.fixture(scope="module")
def models(tiny_dirs):
    """One loaded model per kind, shared by the tests that only read it."""
    return {kind: _load(tiny_dirs[kind]) for kind in KINDS}


@pytest.fixture
def ids():
    return torch.randint(5, 100, (2, 24), generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("auto", [AutoModel, AutoModelForCausalLM])
def test_loads_as_remote_code_and_is_deterministic(tiny_dirs, kind, auto, ids):
    a, b = _load(tiny_dirs[kind], auto), _load(tiny_dirs[kind], auto)
    assert type(a).__module__.startswith("transformers_modules")
    assert type(a).__name__ == ("LLaDAModelLM" if kind == "llada" else "DreamModel")
    assert not isinstance(a, transformers.GenerationMixin)
    with torch.no_grad():
        la, lb = a(input_ids=ids).logits, b(input_ids=ids).logits
        ref = build_tiny(kind, seed=0)(input_ids=ids).logits  # the package's copy of the same code and weights
    assert la.shape == (2, 24, VOCAB) and la.dtype == torch.float32
    assert torch.isfinite(la).all() and la.std() > 0.3
    assert not torch.equal(la.argmax(-1)[0], la.argmax(-1)[0, :1].expand(24))  # decisions vary over positions
    assert torch.equal(la, lb) and torch.equal(la, ref)


@pytest.mark.parametrize("kind", KINDS)
def test_reloaded_weights_equal_saved_ones(tiny_dirs, kind):
    saved = load_file(os.path.join(tiny_dirs[kind], "model.safetensors"))
    model = _load(tiny_dirs[kind])
    state = model.state_dict()
    assert set(state) == set(saved)
    for key, value in saved.items():
        assert torch.equal(state[key], value), key  # not re-initialised by from_pretrained
    theta = model.config.rope_theta
    for name, buf in model.named_buffers():
        assert name.endswith("rotary_emb.inv_freq") and buf.dtype == torch.float32
        head_dim = 2 * buf.numel()
        expected = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        torch.testing.assert_close(buf, expected, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_seed_determinism(tmp_path, kind):
    a = save_tiny(kind, tmp_path / "a", seed=1)
    b = save_tiny(kind, str(tmp_path / "b"), seed=1)
    c = save_tiny(kind, str(tmp_path / "c"), seed=2)
    assert isinstance(a, str) and _sha(a) == _sha(b) != _sha(c)
    wa, wc = load_file(os.path.join(a, "model.safetensors")), load_file(os.path.join(c, "model.safetensors"))
    for key in wa:
        assert not torch.equal(wa[key], wc[key]), key
    norms = [v for k, v in wa.items() if v.dim() == 1 and not k.endswith(".bias")]
    biases = [v for k, v in wa.items() if k.endswith(".bias")]
    assert norms and all(0.5 <= v.min() and v.max() <= 1.5 and v.std() > 0.1 for v in norms)  # not all ones
    assert all(v.abs().max() > 0 for v in biases) and (biases or kind == "llada")  # Dream's q/k/v biases not zero
    state = torch.random.get_rng_state()
    save_tiny(kind, tmp_path / "d", seed=5)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_load(tiny_dirs, kind, ids):
    full = _load(tiny_dirs[kind])
    kwarg_names = ["dtype"] + (["torch_dtype"] if TRANSFORMERS_MAJOR < 5 else [])  # 5.x deprecates torch_dtype
    for name in kwarg_names:
        model = _load(tiny_dirs[kind], AutoModelForCausalLM, **{name: torch.bfloat16})
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
        assert {b.dtype for b in model.buffers()} == {torch.float32}  # RoPE frequencies stay fp32
        with torch.no_grad():
            low, ref = model(input_ids=ids).logits, full(input_ids=ids).logits
        assert low.dtype == torch.float32 and torch.isfinite(low).all()
        assert (low - ref).abs().max() < 0.25 * ref.abs().max()
    with torch.no_grad():  # a model cast after loading keeps computing RoPE in fp32
        cast = _load(tiny_dirs[kind]).to(torch.bfloat16)(input_ids=ids).logits
    assert torch.isfinite(cast).all()


# ------------------------------------------------------------------------------------ names and config


def test_llada_state_dict_names_and_tree(tiny_dirs, models):
    saved = load_file(os.path.join(tiny_dirs["llada"], "model.safetensors"))
    block = {f"model.transformer.blocks.{i}.{m}.weight" for i in range(2) for m in
             ("attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj", "ff_out")}
    top = {"model.transformer.wte.weight", "model.transformer.ln_f.weight", "model.transformer.ff_out.weight"}
    assert set(saved) == top | block  # no biases, no rotary buffers
    assert "model.transformer.ff_out.weight" in saved and "model.transformer.blocks.0.ff_out.weight" in saved
    assert saved["model.transformer.ff_out.weight"].shape == (VOCAB, 64)  # the head
    assert saved["model.transformer.blocks.0.ff_out.weight"].shape == (64, 192)  # the down-projection
    assert saved["model.transformer.blocks.0.ff_proj.weight"].shape == (192, 64)
    assert saved["model.transformer.wte.weight"].shape == (VOCAB, 64)

    model = models["llada"]
    assert model.base_model_prefix == "model" and set(model._no_split_modules) == {"LLaDALlamaBlock"}
    t = model.model.transformer
    assert isinstance(t, nn.ModuleDict) and list(t.keys()) == ["wte", "emb_drop", "blocks", "ln_f", "ff_out"]
    assert isinstance(t.emb_drop, nn.Dropout) and type(t.blocks[0]).__name__ == "LLaDALlamaBlock"
    assert model.get_output_embeddings() is t.ff_out and model.get_input_embeddings() is t.wte
    assert t.ff_out.weight.data_ptr() != t.wte.weight.data_ptr()  # untied
    assert hasattr(t.blocks[0], "rotary_emb")


def test_dream_state_dict_names_and_tree(tiny_dirs, models):
    saved = load_file(os.path.join(tiny_dirs["dream"], "model.safetensors"))
    layer = {f"model.layers.0.{m}" for m in (
        "input_layernorm.weight", "post_attention_layernorm.weight",
        "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight", "self_attn.k_proj.bias",
        "self_attn.v_proj.weight", "self_attn.v_proj.bias", "self_attn.o_proj.weight",
        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")}
    top = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    assert set(saved) == top | layer | {k.replace("layers.0.", "layers.1.") for k in layer}
    assert saved["model.layers.0.self_attn.q_proj.weight"].shape == (96, 96)
    assert saved["model.layers.0.self_attn.k_proj.weight"].shape == (48, 96)  # GQA: 2 KV heads of 24
    assert saved["model.layers.0.self_attn.v_proj.bias"].shape == (48,)
    assert saved["model.layers.0.mlp.down_proj.weight"].shape == (96, 224)
    assert saved["lm_head.weight"].shape == (VOCAB, 96)

    model = models["dream"]
    assert model.base_model_prefix == "model" and set(model._no_split_modules) == {"DreamDecoderLayer"}
    assert type(model.model).__name__ == "DreamBaseModel"
    assert type(model.model.layers[0]).__name__ == "DreamDecoderLayer"
    assert model.get_output_embeddings() is model.lm_head
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert hasattr(model.model.layers[0].self_attn, "rotary_emb")
    assert model.model.layers[0].self_attn.o_proj.bias is None


def test_config_files_follow_the_real_checkpoints(tiny_dirs):
    with open(os.path.join(tiny_dirs["llada"], "config.json")) as f:
        llada = json.load(f)
    for key in ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "mlp_ratio", "activation_type",
                "block_type", "vocab_size", "embedding_size", "max_sequence_length", "rope", "rope_theta",
                "rope_full_precision", "layer_norm_type", "rms_norm_eps", "include_bias", "include_qkv_bias",
                "weight_tying", "scale_logits", "mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id",
                "use_cache", "flash_attention", "init_std"):
        assert key in llada, key
    assert llada["model_type"] == "llada" and llada["architectures"] == ["LLaDAModelLM"]
    assert llada["auto_map"] == {"AutoConfig": "configuration_llada.LLaDAConfig",
                                 "AutoModel": "modeling_llada.LLaDAModelLM",
                                 "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"}
    assert llada["rope_theta"] == 500000.0 and llada["rms_norm_eps"] == 1e-5 and llada["weight_tying"] is False

    with open(os.path.join(tiny_dirs["dream"], "config.json")) as f:
        dream = json.load(f)
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
                "use_cache", "tie_word_embeddings", "rope_theta", "attention_dropout", "mask_token_id",
                "pad_token_id", "bos_token_id", "eos_token_id"):
        assert key in dream, key
    assert dream["model_type"] == "Dream" and dream["architectures"] == ["DreamModel"]
    assert dream["auto_map"] == {"AutoConfig": "configuration_dream.DreamConfig",
                                 "AutoModel": "modeling_dream.DreamModel",
                                 "AutoModelForCausalLM": "modeling_dream.DreamModel"}
    assert dream["rope_theta"] == 1e6 and dream["rms_norm_eps"] == 1e-6
    assert dream["tie_word_embeddings"] is False and llada["tie_word_embeddings"] is False
    for kind, folder in tiny_dirs.items():
        files = set(os.listdir(folder))
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                f"configuration_{kind}.py", f"modeling_{kind}.py"} <= files


@pytest.mark.parametrize("kind", KINDS)
def test_config_round_trip_and_stored_theta_is_used(tmp_path, kind, ids):
    path = save_tiny(kind, tmp_path / "theta", seed=0, rope_theta=10.0)
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    assert type(config).__module__.startswith("transformers_modules")
    assert config.rope_theta == 10.0 and config.tie_word_embeddings is False
    assert config.mask_token_id == 2 and config.eos_token_id == config.pad_token_id == 0 and config.bos_token_id == 1
    for key, value in TINY_CONFIGS[kind].items():
        assert getattr(config, key) == value, key
    again = tmp_path / "again"
    config.save_pretrained(again)
    reloaded = AutoConfig.from_pretrained(again, trust_remote_code=True).to_dict()
    reloaded.pop("_name_or_path"), config.to_dict().pop("_name_or_path")
    assert reloaded == {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}
    model = _load(path)
    inv_freq = next(model.buffers())
    assert inv_freq[1].item() == pytest.approx(10.0 ** (-2 / inv_freq.numel() / 2))
    default = _load(save_tiny(kind, tmp_path / "default", seed=0))
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, default(input_ids=ids).logits)


def test_llada_hf_aliases_and_gqa_override(tmp_path, ids):
    path = save_tiny("llada", tmp_path / "gqa", n_kv_heads=2)
    model = _load(path)
    assert model.config.hidden_size == 64 and model.config.num_attention_heads == 4
    assert model.config.num_hidden_layers == 2
    assert model.model.transformer.blocks[0].k_proj.weight.shape == (32, 64)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()


# ------------------------------------------------------------------------------------------ semantics


@pytest.mark.parametrize("kind", KINDS)
def test_attention_is_bidirectional(models, kind, ids):
    model = models[kind]
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1 - 5) % 95 + 5
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=changed).logits
    assert not torch.allclose(a[:, 0], b[:, 0])  # a later token changes the first position
    assert not torch.allclose(a[:, 10], b[:, 10])


@pytest.mark.parametrize("kind", KINDS)
def test_left_padding_with_attention_mask(models, kind):
    model = models[kind]
    pad = build_tokenizer(kind).pad_token_id
    short = torch.tensor([[10, 11, 12, 13, 14]])
    batch = torch.tensor([[pad, pad, pad, 10, 11, 12, 13, 14], [20, 21, 22, 23, 24, 25, 26, 27]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8])
    with torch.no_grad():
        alone = model(input_ids=short).logits
        padded = model(input_ids=batch, attention_mask=mask).logits
        full = model(input_ids=batch[1:]).logits
        ones = model(input_ids=batch[1:], attention_mask=torch.ones(1, 8, dtype=torch.long)).logits
        ignored = model(input_ids=batch, attention_mask=mask, output_hidden_states=True)
    assert torch.isfinite(padded).all()  # pad queries produce no NaN
    torch.testing.assert_close(padded[0, 3:], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded[1], full[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(ones, full)  # an all-ones mask is exactly no mask
    assert all(torch.isfinite(h).all() for h in ignored.hidden_states)
    other = batch.clone()
    other[0, :3] = 50  # the pad tokens' values do not matter
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=other, attention_mask=mask).logits[0, 3:], padded[0, 3:],
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_four_d_boolean_mask_matches_the_padding_mask(models, kind):
    model = models[kind]
    batch = torch.tensor([[0, 0, 10, 11, 12, 13]])
    mask2d = torch.tensor([[0, 0, 1, 1, 1, 1]])
    mask4d = mask2d.bool()[:, None, None, :] | torch.eye(6, dtype=torch.bool)
    positions = (mask2d.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        a = model(input_ids=batch, attention_mask=mask2d).logits
        b = model(input_ids=batch, attention_mask=mask4d, position_ids=positions).logits
    torch.testing.assert_close(a[0, 2:], b[0, 2:], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_block_reruns_from_captured_arguments(models, kind):
    """What the calibration does: capture a block's args/kwargs with a pre-hook and run the block on its own."""
    model = models[kind]
    block = _blocks(model, kind)[1]
    seen = {}
    pre = block.register_forward_pre_hook(lambda m, a, k: seen.update(args=a, kwargs=k), with_kwargs=True)
    post = block.register_forward_hook(lambda m, a, k, out: seen.update(out=out), with_kwargs=True)
    batch = torch.tensor([[0, 0, 10, 11, 12, 13], [20, 21, 22, 23, 24, 25]])
    with torch.no_grad():
        model(input_ids=batch, attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6]))
        pre.remove(), post.remove()
        again = block(*seen["args"], **seen["kwargs"])
    assert isinstance(again, tuple) and isinstance(seen["out"], tuple)
    assert torch.equal(again[0], seen["out"][0]) and again[0].shape == (2, 6, TINY_CONFIGS[kind].get("d_model", 96))
    with torch.no_grad():  # called bare (no mask) it is plain bidirectional attention over positions 0..N-1
        assert block(seen["args"][0])[0].shape == again[0].shape


@pytest.mark.parametrize("kind", KINDS)
def test_output_conventions(models, kind, ids):
    model = models[kind]
    n_layers = 2
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        tup = model(input_ids=ids, return_dict=False)
        embeds = model(**{("input_embeddings" if kind == "llada" else "inputs_embeds"):
                          model.get_input_embeddings()(ids)}).logits
    expected_cls = "CausalLMOutputWithPast" if kind == "llada" else "MaskedLMOutput"
    assert type(out).__name__ == expected_cls
    assert len(out.hidden_states) == n_layers + 1 and out.hidden_states[0].shape[:2] == ids.shape
    assert isinstance(tup, tuple) and torch.equal(tup[0], out.logits)
    assert torch.equal(embeds, out.logits)
    with pytest.raises(ValueError, match="cache"):
        model(input_ids=ids, use_cache=True)


# ------------------------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizer_round_trip_and_ids(tiny_dirs, kind):
    tok = _tokenizer(tiny_dirs[kind])
    assert isinstance(tok, PreTrainedTokenizerFast) and tok.padding_side == "left"
    text = "x = 17 * (3 + 4)\n\tprint(x)  # ok! ~{}|\\'\"`"
    enc = tok(text)["input_ids"]
    assert len(enc) == len(text) and tok.decode(enc) == text  # no special tokens added, no spaces inserted
    assert tok(text, add_special_tokens=True)["input_ids"] == enc
    printable = "".join(chr(c) for c in range(32, 127)) + "\n\t"
    assert tok.decode(tok(printable)["input_ids"]) == printable
    assert tok("é")["input_ids"] == [tok.unk_token_id]

    names = {"llada": ("<|endoftext|>", "<|startoftext|>", "<|mdm_mask|>", "<|eot_id|>"),
             "dream": ("<|endoftext|>", "<|beginoftext|>", "<|mask|>", "<|im_end|>")}[kind]
    assert (tok.eos_token, tok.pad_token, tok.bos_token, tok.mask_token) == (names[0], names[0], names[1], names[2])
    assert tok.convert_tokens_to_ids(list(names)) == [0, 1, 2, 3] and tok.unk_token_id == 4
    assert names[3] in tok.all_special_tokens
    assert tok(names[3] + "a")["input_ids"] == [3, tok.convert_tokens_to_ids("a")]  # one token, not split
    assert special_token_ids(kind) == {"eos_token_id": 0, "pad_token_id": 0, "bos_token_id": 1, "mask_token_id": 2,
                                       "eot_token_id": 3, "unk_token_id": 4}

    config = AutoConfig.from_pretrained(tiny_dirs[kind], trust_remote_code=True)
    assert (tok.mask_token_id, tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (
        config.mask_token_id, config.eos_token_id, config.pad_token_id, config.bos_token_id)
    assert len(tok) <= config.vocab_size and config.vocab_size % 8 == 0
    batch = tok(["ab", "abcd"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, :2].tolist() == [0, 0] and batch["attention_mask"][0].tolist() == [0, 0, 1, 1]


# ------------------------------------------------------------------------------------- errors, purity


def test_bad_kind_and_bad_override(tmp_path):
    assert SUPPORTED_KINDS == ("llada", "dream")
    for call in (lambda: save_tiny("gpt2", str(tmp_path)), lambda: build_tokenizer("gpt2"),
                 lambda: remote_code_files("LLaDA")):
        with pytest.raises(ValueError, match="llada") as err:
            call()
        assert "dream" in str(err.value)
    with pytest.raises(ValueError, match="unknown llada config keys"):
        save_tiny("llada", str(tmp_path), hidden_sizes=3)
    with pytest.raises(ValueError, match="unknown dream config keys"):
        save_tiny("dream", str(tmp_path), d_model=3)
    with pytest.raises(ValueError, match="does not cover"):
        save_tiny("dream", str(tmp_path), vocab_size=50)
    with pytest.raises(ValueError, match="llama"):
        save_tiny("llada", str(tmp_path), block_type="sequential")
    assert not os.path.exists(os.path.join(tmp_path, "model.safetensors"))
    assert TINY_CONFIGS["dream"]["hidden_size"] == 96 and TINY_CONFIGS["dream"]["intermediate_size"] == 224
    assert TINY_CONFIGS["llada"]["mlp_hidden_size"] == 192  # non-power-of-two widths on purpose


@pytest.mark.parametrize("kind", KINDS)
def test_remote_code_imports_only_torch_transformers_stdlib(kind):
    allowed = {"torch", "transformers"} | set(sys.stdlib_module_names)
    files = remote_code_files(kind)
    siblings = {os.path.basename(path)[:-3] for path in files}
    for path in files:
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: only the sibling remote-code modules
                    assert node.level == 1 and node.module in siblings, path
                    continue
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, (path, roots)


def test_reference_dream_keeps_the_upstream_remote_code_layout(tmp_path):
    """Upstream ``Dream-org/Dream-v0-*``: ``modeling_dream.py`` imports ``DreamGenerationMixin`` and
    ``DreamGenerationConfig`` from the sibling module ``generation_utils.py``; a saved checkpoint carries it."""
    files = remote_code_files("dream")
    assert [os.path.basename(f) for f in files] == ["configuration_dream.py", "modeling_dream.py",
                                                    "generation_utils.py"]
    tree = ast.parse(open(files[1]).read())
    relative = {(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.level == 1 for alias in node.names}
    assert {("generation_utils", "DreamGenerationMixin"), ("generation_utils", "DreamGenerationConfig")} <= relative
    path = save_tiny("dream", str(tmp_path / "dream"))
    assert os.path.isfile(os.path.join(path, "generation_utils.py"))
