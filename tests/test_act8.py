"""8-bit activations (W4A8, W8A8; issue 29): the int8 activation quantizer and the integer GEMMs against
independent definitions, the packed modules, Stage II's int8 fake quantization, and checkpoints through
transformers, ``inspect``, the CLI's ``--precision`` and the optimum-style quantizer, on both families."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers import AutoModel

from fair_calib_hf import FairCalibConfig
from fair_calib_hf import ops
from fair_calib_hf.calibration.stage2_fit import fake_quant_rows
from fair_calib_hf.checkpoint import CheckpointMismatchError, describe_checkpoint
from fair_calib_hf.modules import ACT_QUANT_LINEARS, PackedLinear, W4A4Linear, W4A8Linear, W8A8Linear
from fair_calib_hf.ops import reference
from fair_calib_hf.packing import pack_int4, unpack_int4
from fair_calib_hf.precisions import PRECISIONS

DATA = [list(range(5, 37)), list(range(40, 72))]
OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _inputs(m, k, dtype=torch.float32, seed=1):
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed)) * 3
    x[0] = 0  # an all-zero token: scale 1, codes 0
    if m > 2:
        x[1, : k // 2] = 0
        x[-1, k // 3] = 90.0  # an activation outlier
    return x.to(dtype)


def test_int8_activation_codes_follow_the_definition():
    x = _inputs(7, 45)
    clip = torch.tensor(0.8)
    codes, scale = ops.quantize_act_int8(x, None, None, None, clip)
    assert codes.dtype == torch.int8 and codes.shape == (7, 45) and scale.dtype == torch.float32
    expected_scale = 0.8 * x.abs().amax(1) / 127
    expected_scale[0] = 1.0
    assert torch.equal(scale, expected_scale)
    expected = torch.clamp(torch.round(x / expected_scale[:, None]), -128, 127).to(torch.int8)
    assert torch.equal(codes, expected)
    assert int(codes[0].abs().max()) == 0
    assert int(codes[-1].max()) == 127 and int(codes.min()) >= -128  # the clipped outlier saturates at 127


@pytest.mark.parametrize("m,n,k", [(1, 3, 1), (5, 9, 37), (3, 4, 3000)])
def test_integer_gemms_are_exact(m, n, k):
    """Chunked fp32 sums against int64 sums, at extreme codes where a chunk that is too long loses bits."""
    g = torch.Generator().manual_seed(k)
    qx = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    qx[0] = -128
    w8 = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    w8[0] = -128
    w4 = torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8)
    w4[0] = -8
    exact8 = qx.long() @ w8.long().t()
    exact4 = qx.long() @ w4.long().t()
    assert torch.equal(reference.int_matmul_int32(qx, w8, 8, 8).long(), exact8)
    assert torch.equal(reference.int_matmul_int32(qx, w4, 8, 4).long(), exact4)
    assert int(exact8[0, 0]) == 128 * 128 * k
    s_x, s_w = torch.rand(m) + 0.5, torch.rand(n, 1) + 0.5
    bias = torch.randn(n)
    for dtype in OUT_DTYPES:
        want8 = ((exact8.float() * s_x[:, None]) * s_w.reshape(1, -1) + bias).to(dtype)
        assert torch.equal(ops.w8a8_gemm(qx, s_x, w8, s_w, bias, dtype), want8)
        want4 = ((exact4.float() * s_x[:, None]) * s_w.reshape(1, -1) + bias).to(dtype)
        assert torch.equal(ops.w4a8_gemm(qx, s_x, pack_int4(w4), s_w, bias, k, dtype), want4)


def test_exact_chunks_keep_partial_sums_below_two_to_the_24():
    assert reference.exact_chunk(4, 4) == reference.EXACT_FP32_CHUNK == 1 << 18
    assert reference.exact_chunk(8, 4) == 1 << 14 and reference.exact_chunk(8, 8) == 1 << 10


def test_w8a8_refuses_a_k_that_could_overflow_int32():
    x = torch.zeros(1, ops.MAX_W8A8_K + 1, dtype=torch.int8)
    with pytest.raises(ValueError, match="overflow"):
        ops.w8a8_gemm(x, torch.ones(1), x, torch.ones(1, 1), None, torch.float32)


@pytest.mark.parametrize("cls", [W4A8Linear, W8A8Linear])
@pytest.mark.parametrize("dtype", OUT_DTYPES)
def test_module_forward_is_the_definition(cls, dtype):
    """``y = (Q8(x̃)·s_x) · (Q(W̃)·s_w)ᵀ + b`` with the transform, computed here in float64 from first principles."""
    k, n = 24, 10
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(k, n, bias=True)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(n, k, generator=g) * 0.1)
        linear.weight[3] = 0
    left, _ = torch.linalg.qr(torch.randn(4, 4, generator=g))
    right, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    diag = torch.rand(k, generator=g) + 0.5
    module = cls.from_linear(linear, weight_clip=0.9, input_clip=0.95, transform=(left, right, diag)).to(dtype)
    assert module.bias.dtype == dtype and module.weight_scale.dtype == torch.float32
    x = _inputs(5, k, dtype)
    y = module(x)
    assert y.dtype == dtype and y.shape == (5, n)
    qmax_w = 7 if cls.bits == 4 else 127
    w = linear.weight.detach().double()
    s_w = (0.9 * w.abs().amax(1, keepdim=True).float() / qmax_w).double()
    s_w[s_w == 0] = 1
    pmat = (diag.double()[:, None] * torch.kron(left.double(), right.double()))
    assert torch.allclose(module.weight_scale.double(), s_w, rtol=1e-6)
    codes = module.stored_codes() if cls.bits == 8 else unpack_int4(module.stored_codes(), k)
    xt = x.double() @ pmat
    s_x = 0.95 * xt.abs().amax(1) / 127
    s_x[s_x == 0] = 1
    qx = torch.clamp(torch.round(xt / s_x[:, None]), -128, 127)
    want = (qx * s_x[:, None]) @ (codes.double() * module.weight_scale.double()).t() + linear.bias.double()
    tol = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    assert torch.allclose(y.double(), want, rtol=tol, atol=tol * want.abs().max().item())
    # the weight codes themselves: RTN of the given (already transformed) weight on the module's grid
    want_codes = torch.clamp(torch.round(linear.weight.detach().float() / module.weight_scale), -qmax_w - 1, qmax_w)
    assert torch.equal(codes.float(), want_codes)


@pytest.mark.parametrize("cls", [W4A4Linear, W4A8Linear, W8A8Linear])
def test_buffers_state_dict_and_dequantize(cls):
    linear = nn.Linear(16, 8, bias=False)
    module = cls.from_linear(linear)
    codes_name = "weight_int8" if cls.bits == 8 else "weight_packed"
    assert set(module.state_dict()) == {codes_name, "weight_scale", "input_clip"}
    assert set(module.expected_buffers()) == set(module.state_dict())
    fresh = cls(16, 8)
    fresh.load_state_dict(module.state_dict())
    x = _inputs(3, 16)
    assert torch.equal(fresh(x), module(x))
    deq = module.to_linear()
    qmax = 7 if cls.bits == 4 else 127
    assert torch.allclose(deq.weight, linear.weight, atol=float(linear.weight.detach().abs().max()) / qmax)
    assert f"w{cls.bits}a{cls.a_bits}" in repr(module)


def test_precision_registry_builds_each_module():
    assert {name: p.packed_module().__name__ for name, p in PRECISIONS.items()} == {
        "w4a4": "W4A4Linear", "w4a8": "W4A8Linear", "w8a8": "W8A8Linear", "w4a16": "WeightOnlyLinear",
        "w8a16": "WeightOnlyLinear"}
    assert ACT_QUANT_LINEARS[(4, 8)] is W4A8Linear


def test_cli_precision_names_are_the_registry():
    from fair_calib_hf_cli import PRECISION_NAMES

    assert tuple(PRECISION_NAMES) == tuple(PRECISIONS)


@pytest.mark.parametrize("bits", [4, 8])
def test_stage2_fake_quant_uses_the_int8_grid(bits):
    """Stage II's fake quantizer at ``bits`` equals the packed quantizer's dequantized codes (int8: 127 steps; an
    int4 grid would differ everywhere)."""
    x = _inputs(6, 40)
    clip = torch.tensor(0.9)
    got = fake_quant_rows(x, clip, bits)
    codes, scale = reference.quantize_act_codes(x, None, None, None, clip, bits)
    assert torch.equal(got, codes.float() * scale[:, None])
    if bits == 8:
        assert not torch.equal(got, fake_quant_rows(x, clip, 4))


@pytest.mark.parametrize("kind,bits,method", [("llada", (4, 8), "flatquant"), ("dream", (8, 8), "fair_calib"),
                                              ("dream", (4, 8), "gptq"), ("llada", (8, 8), "rtn")])
def test_checkpoint_inspect_reload_and_mismatch(tiny_dirs, tmp_path, kind, bits, method):
    cfg = FairCalibConfig(method=method, w_bits=bits[0], a_bits=bits[1], calibration_dataset=DATA, num_samples=2,
                          seq_len=32, epochs=1, n_probe=2, probe_batch_size=2)
    q = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True, quantization_config=cfg,
                                  dtype=torch.bfloat16)
    cls = ACT_QUANT_LINEARS[bits]
    assert sum(type(m) is cls for m in q.modules()) == 14
    path = str(tmp_path / "q")
    q.save_pretrained(path)
    ids = torch.tensor([list(range(5, 17))])
    again = AutoModel.from_pretrained(path, trust_remote_code=True, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, q(input_ids=ids).logits)
    info = describe_checkpoint(path)
    assert (info["w_bits"], info["a_bits"]) == bits and info["layout"]["ok"] and len(info["packed"]) == 14
    tags = json.load(open(os.path.join(path, "config.json")))
    out = subprocess.run([sys.executable, "-m", "fair_calib_hf_cli", "inspect", path], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"W{bits[0]}A{bits[1]} (per-channel" in out.stdout
    # the config says another weight width than the tensors hold: refused, not silently misread
    tags["quantization_config"]["w_bits"] = 12 - bits[0]
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(tags, f)
    with pytest.raises(CheckpointMismatchError):
        AutoModel.from_pretrained(path, trust_remote_code=True)
    # W4A4 and W4A8 tensors have the same shapes: the header's copy of the config tells them apart
    tags["quantization_config"]["w_bits"] = bits[0]
    tags["quantization_config"]["a_bits"] = 4 if bits[1] == 8 else 8
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(tags, f)
    if (bits[0], tags["quantization_config"]["a_bits"]) in ACT_QUANT_LINEARS:
        with pytest.raises(CheckpointMismatchError, match="a_bits"):
            AutoModel.from_pretrained(path, trust_remote_code=True)


def test_hub_tags_name_the_precision(tiny_dirs):
    cfg = FairCalibConfig(method="rtn", w_bits=4, a_bits=8)
    q = AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True, quantization_config=cfg)
    assert {"fair_calib", "dllm", "w4a8", "4-bit"} <= set(q.model_tags) and "w4a4" not in q.model_tags


def test_cli_precision_conflicting_with_set_is_refused_before_loading(tiny_dirs, tmp_path, capsys):
    from fair_calib_hf.cli import main

    code = main(["quantize", tiny_dirs["llada"], "--out", str(tmp_path / "x"), "--method", "rtn", "--precision",
                 "w4a8", "--set", "a_bits=4", "--no-progress"])
    assert code != 0 and "--precision w4a8 sets a_bits=8" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")
    code = main(["quantize", tiny_dirs["llada"], "--out", str(tmp_path / "y"), "--method", "flatquant",
                 "--precision", "w4a16", "--no-progress"])
    assert code != 0 and "--method flatquant does not support --precision w4a16: pass --method rtn or gptq" in \
        capsys.readouterr().err and not os.path.exists(tmp_path / "y")
    code = main(["quantize", tiny_dirs["llada"], "--out", str(tmp_path / "z"), "--precision", "w4a16",
                 "--no-progress"])
    assert code != 0 and "--method fair_calib (the CLI's default) does not support" in capsys.readouterr().err


@pytest.mark.parametrize("bits", [(4.0, 8.0), (4, 8.0), ("4", 8)])
def test_bit_widths_must_be_integers(bits):
    with pytest.raises(ValueError, match="w_bits/a_bits"):
        FairCalibConfig(w_bits=bits[0], a_bits=bits[1])
