"""Calibrate-on-load → save_pretrained → pre-quantized reload, through the real transformers path, on tiny
random LLaDA-style and Dream-style checkpoints loaded with trust_remote_code."""
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM

from fair_calib_hf import FairCalibConfig, W4A4Linear
from fair_calib_hf.checkpoint import CheckpointMismatchError

from conftest import CALIB_TEXTS

KINDS = ["llada", "dream"]
HEAD = {"llada": "model.transformer.ff_out", "dream": "lm_head"}
DOWN = {"llada": "model.transformer.blocks.0.ff_out", "dream": "model.layers.0.mlp.down_proj"}
LINEARS_PER_BLOCK = 7

# Stated tolerances.
# 1. Against a float "fake-quant" model (every converted linear computes QDQ(x)·QDQ(W)ᵀ + b in fp32, the
#    definition of W4A4 without packing or integer accumulation): relative L2 error of the logits < 1e-4.
# 2. Against the float model: W4A4 RTN on these tiny random models loses a lot (per-linear relative
#    error ~0.15, 0.25 at the down-projection; measured on this test's inputs: logits error 0.53 LLaDA /
#    0.62 Dream, argmax agreement 40 % / 27 %), so the bound is loose: relative L2 error < 0.8 and argmax
#    agreement > 15 % (chance is 1 %).
MAX_REL_ERR_VS_FAKEQUANT = 1e-4
MAX_REL_ERR_VS_FLOAT = 0.8
MIN_ARGMAX_AGREEMENT = 0.15


def _load(path, cfg=None, auto=AutoModel, **kw):
    if cfg is not None:
        kw["quantization_config"] = cfg
    return auto.from_pretrained(path, trust_remote_code=True, **kw)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def quantized(tiny_dirs, tmp_path_factory):
    """Per family: (float model, quantized model, saved dir)."""
    out = {}
    for kind in KINDS:
        fp = _load(tiny_dirs[kind])
        q = _load(tiny_dirs[kind], FairCalibConfig(method="rtn", calibration_dataset=CALIB_TEXTS, seq_len=64))
        save_dir = str(tmp_path_factory.mktemp(f"q-{kind}"))
        q.save_pretrained(save_dir)
        out[kind] = (fp, q, save_dir)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_every_block_linear_is_packed_and_the_rest_stays_float(quantized, kind):
    _, q, _ = quantized[kind]
    modules = dict(q.named_modules())
    packed = [n for n, m in modules.items() if isinstance(m, W4A4Linear)]
    n_layers = q.config.num_hidden_layers if kind == "dream" else q.config.n_layers
    assert len(packed) == LINEARS_PER_BLOCK * n_layers
    assert not any(isinstance(m, nn.Linear) for n, m in modules.items() if n != HEAD[kind])
    assert type(modules[HEAD[kind]]) is nn.Linear  # the head stays float ...
    assert isinstance(modules[DOWN[kind]], W4A4Linear)  # ... while the same-named down-proj is packed
    assert isinstance(q.get_input_embeddings(), nn.Embedding)
    report = q.hf_quantizer.calibration_report
    assert report.num_samples == len(CALIB_TEXTS) and len(report.blocks) == len(packed) // LINEARS_PER_BLOCK
    assert all(0 < b.rel_mse < 1 for b in report.blocks)


def _fake_quant_model(fp, q):
    """A copy of the float model where each linear that ``q`` packed computes the W4A4 definition in fp32."""
    import copy

    from fair_calib_hf.packing import quantize_symmetric, symmetric_scale

    model = copy.deepcopy(fp)
    packed = {n for n, m in q.named_modules() if isinstance(m, W4A4Linear)}

    def qdq_forward(linear):
        w = linear.weight.float()
        sw = symmetric_scale(w.abs().amax(1, keepdim=True))
        wq = quantize_symmetric(w, sw).float() * sw

        def forward(x):
            x2 = x.float().reshape(-1, x.shape[-1])
            sx = symmetric_scale(x2.abs().amax(1, keepdim=True))
            y = (quantize_symmetric(x2, sx).float() * sx) @ wq.t()
            if linear.bias is not None:
                y = y + linear.bias.float()
            return y.reshape(*x.shape[:-1], -1).to(x.dtype)

        return forward

    for name, module in model.named_modules():
        if name in packed:
            module.forward = qdq_forward(module)
    return model


@pytest.mark.parametrize("kind", KINDS)
def test_quantized_logits_match_definition_and_stay_near_float(quantized, kind, input_ids):
    fp, q, _ = quantized[kind]
    ref, got = _logits(fp, input_ids), _logits(q, input_ids)
    assert got.shape == ref.shape and torch.isfinite(got).all()
    fake = _logits(_fake_quant_model(fp, q), input_ids)
    assert ((got - fake).norm() / fake.norm()).item() < MAX_REL_ERR_VS_FAKEQUANT
    rel = ((got - ref).norm() / ref.norm()).item()
    assert 0 < rel < MAX_REL_ERR_VS_FLOAT, rel
    agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert agree > MIN_ARGMAX_AGREEMENT, agree


@pytest.mark.parametrize("kind", KINDS)
def test_save_writes_safetensors_and_config(quantized, kind):
    _, q, save_dir = quantized[kind]
    files = sorted(os.listdir(save_dir))
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    cfg = json.load(open(os.path.join(save_dir, "config.json")))
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "fair_calib" and qc["method"] == "rtn" and qc["format_version"] == 1
    assert "auto_map" in cfg
    with safe_open(os.path.join(save_dir, "model.safetensors"), "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["fair_calib_format"] == "1" and meta["pack_format"] == "int4_s_u8_lo_even_k"
    assert f"{DOWN[kind]}.weight_packed" in keys and f"{DOWN[kind]}.weight" not in keys
    assert f"{HEAD[kind]}.weight" in keys


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("auto", [AutoModel, AutoModelForCausalLM])
def test_reload_is_bit_identical(quantized, kind, auto, input_ids):
    _, q, save_dir = quantized[kind]
    again = _load(save_dir, auto=auto)
    assert again.hf_quantizer.pre_quantized
    assert type(again).__module__.startswith("transformers_modules")
    assert isinstance(dict(again.named_modules())[DOWN[kind]], W4A4Linear)
    assert torch.equal(_logits(again, input_ids), _logits(q, input_ids))
    sd_a, sd_b = q.state_dict(), again.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


@pytest.mark.parametrize("kind", KINDS)
def test_resave_of_reloaded_model_round_trips(quantized, kind, tmp_path, input_ids):
    _, q, save_dir = quantized[kind]
    again = _load(save_dir)
    again.save_pretrained(tmp_path)
    third = _load(str(tmp_path))
    assert torch.equal(_logits(third, input_ids), _logits(q, input_ids))


def _corrupt(save_dir, tmp_path, edit):
    """Copy a saved checkpoint to tmp_path with its state dict edited by ``edit(sd)``."""
    for name in os.listdir(save_dir):
        if name != "model.safetensors":
            with open(os.path.join(save_dir, name), "rb") as src, open(tmp_path / name, "wb") as dst:
                dst.write(src.read())
    path = os.path.join(save_dir, "model.safetensors")
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    sd = load_file(path)
    edit(sd)
    save_file(sd, str(tmp_path / "model.safetensors"), metadata=meta)
    return str(tmp_path)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("leaf", ["weight_packed", "weight_scale"])
def test_missing_packed_tensor_fails_loudly(quantized, kind, leaf, tmp_path):
    _, _, save_dir = quantized[kind]
    bad = _corrupt(save_dir, tmp_path, lambda sd: sd.pop(f"{DOWN[kind]}.{leaf}"))
    with pytest.raises(CheckpointMismatchError, match=f"{DOWN[kind]}.{leaf}"):
        _load(bad)


def test_wrong_dtype_packed_tensor_fails_loudly(quantized, tmp_path):
    _, _, save_dir = quantized["llada"]
    key = f"{DOWN['llada']}.weight_scale"

    def edit(sd):
        sd[key] = sd[key].half()

    with pytest.raises(CheckpointMismatchError, match="dtype"):
        _load(_corrupt(save_dir, tmp_path, edit))


def test_wrong_shape_packed_tensor_fails_loudly(quantized, tmp_path):
    _, _, save_dir = quantized["dream"]
    key = f"{DOWN['dream']}.weight_packed"

    def edit(sd):
        sd[key] = sd[key][:, :-1].contiguous()

    with pytest.raises(Exception, match="shape|size"):
        _load(_corrupt(save_dir, tmp_path, edit))


def test_config_that_keeps_a_packed_module_in_float_fails(quantized, tmp_path):
    """A checkpoint whose quantization_config does not match its tensors (skip list edited)."""
    _, _, save_dir = quantized["llada"]
    bad = _corrupt(save_dir, tmp_path, lambda sd: None)
    cfg_path = os.path.join(bad, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["quantization_config"]["modules_to_not_convert"] = [DOWN["llada"]]
    json.dump(cfg, open(cfg_path, "w"))
    with pytest.raises(CheckpointMismatchError):
        _load(bad)


def test_data_free_rtn_packs_the_same_weights(tiny_dirs, quantized):
    """RTN weights do not depend on data: the data-free path gives the same packed tensors."""
    _, q, _ = quantized["llada"]
    free = _load(tiny_dirs["llada"], FairCalibConfig(method="rtn"))
    a, b = q.state_dict(), free.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert free.hf_quantizer.calibration_report.blocks == []


def test_skip_list_uses_full_paths(tiny_dirs):
    skip = ["model.transformer.blocks.1.ff_out", "re:model\\.transformer\\.blocks\\.0\\.(q|k)_proj"]
    q = _load(tiny_dirs["llada"], FairCalibConfig(method="rtn", modules_to_not_convert=skip))
    modules = dict(q.named_modules())
    assert type(modules["model.transformer.blocks.1.ff_out"]) is nn.Linear
    assert type(modules["model.transformer.blocks.0.q_proj"]) is nn.Linear
    assert type(modules["model.transformer.blocks.0.k_proj"]) is nn.Linear
    assert isinstance(modules["model.transformer.blocks.0.v_proj"], W4A4Linear)
    assert isinstance(modules["model.transformer.blocks.0.ff_out"], W4A4Linear)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_load_quantize_save_reload(tiny_dirs, kind, tmp_path, input_ids):
    q = _load(tiny_dirs[kind], FairCalibConfig(method="rtn", calibration_dataset=CALIB_TEXTS[:2]),
              dtype=torch.bfloat16)
    down = dict(q.named_modules())[DOWN[kind]]
    assert down.weight_scale.dtype == torch.float32 and down.packed_weight().dtype == torch.uint8
    out = _logits(q, input_ids)
    q.save_pretrained(tmp_path)
    again = _load(str(tmp_path), dtype=torch.bfloat16)
    assert torch.equal(_logits(again, input_ids), out)
    if kind == "dream":
        assert dict(again.named_modules())["model.layers.0.self_attn.q_proj"].bias.dtype == torch.bfloat16


def test_dequantize_gives_float_linears(quantized, input_ids):
    _, _, save_dir = quantized["dream"]
    q = _load(save_dir)
    deq = q.dequantize()
    assert not any(isinstance(m, W4A4Linear) for m in deq.modules())
    assert torch.isfinite(_logits(deq, input_ids)).all()


def test_unsupported_architecture_is_refused(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="supported families: llada.*dream"):
        AutoModelForCausalLM.from_pretrained(str(tmp_path), quantization_config=FairCalibConfig(method="rtn"))


def test_quantized_copy_of_a_zoo_model_keeps_its_task(quantized, tmp_path):
    """A zoo model's quantized copy carries the zoo recipe, so eval / lm-eval / the quickstart find its task
    without --task; a model not loaded from a zoo folder gets no recipe."""
    from fair_calib_hf.zoo import resolve, task_of

    path = resolve("zoo:llada-arith")
    _load(path, FairCalibConfig(method="rtn")).save_pretrained(tmp_path / "q")
    assert task_of(str(tmp_path / "q")).name == "arith"
    assert json.load(open(tmp_path / "q" / "training.json")) == json.load(open(os.path.join(path, "training.json")))
    _load(str(tmp_path / "q")).save_pretrained(tmp_path / "q2")  # reloaded from the copy: the recipe travels on
    assert task_of(str(tmp_path / "q2")).name == "arith"
    assert not os.path.exists(os.path.join(quantized["llada"][2], "training.json"))


def test_loaded_model_holds_the_prepared_cpu_layout_by_default(quantized, input_ids, monkeypatch):
    """After loading on a CPU with AVX-512 VNNI every W4A4Linear holds the GEMM's prepared weight layout (the
    non-persistent buffer `weight_prepared`, counted by `get_memory_footprint`); `FAIR_CALIB_CPU_LAYOUT=packed`
    keeps `weight_packed`. Same logits and the same state dict either way; a bad value fails before loading."""
    from fair_calib_hf.checkpoint import verify_loaded_model
    from fair_calib_hf.modules import unprepare_cpu_layout
    from fair_calib_hf.ops import cpu

    _, _, save_dir = quantized["dream"]
    prepared = _load(save_dir)
    monkeypatch.setenv("FAIR_CALIB_CPU_LAYOUT", "packed")
    packed = _load(save_dir)
    layers = lambda model: [m for m in model.modules() if isinstance(m, W4A4Linear)]  # noqa: E731
    assert all(m.weight_prepared is None and m.weight_packed is not None for m in layers(packed))
    expect_prepared = cpu.prepared_layout_available()
    assert all((m.weight_prepared is not None) == expect_prepared for m in layers(prepared))
    assert all((m.weight_packed is None) == expect_prepared for m in layers(prepared))
    assert torch.equal(_logits(prepared, input_ids), _logits(packed, input_ids))
    sd_prepared, sd_packed = prepared.state_dict(), packed.state_dict()
    assert list(sd_prepared) == list(sd_packed) and all(torch.equal(sd_prepared[k], sd_packed[k]) for k in sd_packed)
    extra = sum(m.weight_prepared.numel() - m.packed_weight().numel() for m in layers(prepared) if expect_prepared)
    assert prepared.get_memory_footprint() - packed.get_memory_footprint() == extra  # the padding, nothing hidden
    verify_loaded_model(prepared)
    assert unprepare_cpu_layout(prepared) == (len(layers(prepared)) if expect_prepared else 0)
    assert all(m.weight_prepared is None and m.weight_packed is not None for m in layers(prepared))
    assert torch.equal(_logits(prepared, input_ids), _logits(packed, input_ids))
    monkeypatch.setenv("FAIR_CALIB_CPU_LAYOUT", "int8")
    with pytest.raises(ValueError, match="FAIR_CALIB_CPU_LAYOUT='int8'.*'packed'"):
        _load(save_dir)
