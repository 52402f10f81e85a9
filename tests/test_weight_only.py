"""Weight-only precisions (W4A16 per-channel / g32 / g64 / g128, W8A16; issue 28): the packed module, torch's CPU
int4 kernel path against the reference, the prepared layout, checkpoints through transformers and inspect."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers import AutoModel

from fair_calib_hf import FairCalibConfig, WeightOnlyLinear
from fair_calib_hf.checkpoint import CheckpointMismatchError, describe_checkpoint
from fair_calib_hf.ops import reference, weight_only_cpu
from fair_calib_hf.packing import dequantize_grouped, load_codes, quantize_weight_grouped, quantize_weight_per_channel

DATA = [list(range(5, 37)), list(range(40, 72))]
needs_int4pack = pytest.mark.skipif(not weight_only_cpu.available(),
                                    reason="this torch has no CPU int4 weight-only kernel (aten._weight_int4pack_mm_for_cpu)")


def _linear(n, k, bias=True, seed=0, tails=True):
    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(n, k, generator=g) * 0.05)
        if tails:
            linear.weight[1, 7] = 2.5  # an outlier weight
            linear.weight[2] = 0  # an all-zero row
        if bias:
            linear.bias.copy_(torch.randn(n, generator=g))
    return linear


def _inputs(m, k, dtype, seed=1):
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed)) * 3
    x[0, : k // 2] = 0  # a half-zero token
    x[-1, 5] = 80.0  # an activation outlier
    return x.to(dtype)


def test_grouped_quantizer_matches_the_w4a4_per_channel_quantizer():
    w = _linear(32, 96).weight
    stored, scale = quantize_weight_grouped(w, 4, None, 0.9)
    ref_stored, ref_scale = quantize_weight_per_channel(w, 0.9)
    assert torch.equal(stored, ref_stored) and torch.equal(scale, ref_scale)


@pytest.mark.parametrize("bits,group_size,k", [(4, 32, 96), (4, 128, 352), (4, None, 97), (8, None, 96)])
def test_grouped_rtn_codes_and_scales(bits, group_size, k):
    w = _linear(16, k).weight
    stored, scale = quantize_weight_grouped(w, bits, group_size)
    groups = 1 if group_size is None else -(-k // group_size)
    assert scale.shape == (16, groups) and scale.dtype == torch.float32
    deq = dequantize_grouped(stored, scale, bits, group_size, k)
    qmax = 7 if bits == 4 else 127
    size = k if group_size is None else group_size
    for g in range(groups):  # every group's largest weight is on the grid's end: |W − Q| ≤ s/2 elsewhere
        cols = slice(g * size, min(k, (g + 1) * size))
        s = scale[:, g:g + 1]
        assert torch.all((w[:, cols] - deq[:, cols]).abs() <= s / 2 + 1e-7)
        nonzero = w[:, cols].abs().amax(1) > 0
        assert torch.allclose(s[nonzero, 0], w[:, cols].abs().amax(1)[nonzero] / qmax)
    assert torch.all(scale[2] == 1)  # the all-zero row


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bits,group_size", [(4, None), (4, 32), (4, 128), (8, None)])
def test_module_forward_is_the_reference(bits, group_size, dtype):
    linear = _linear(64, 256)
    module = WeightOnlyLinear.from_linear(linear, bits, group_size).to(dtype)
    m = 5 if bits == 4 else weight_only_cpu.INT8PACK_MAX_TOKENS + 1  # (fewer 8-bit tokens run torch's kernel)
    x = _inputs(m, 256, dtype)
    y = module(x.reshape(1, m, 256))
    expected = reference.weight_only_gemm_reference(x, module.stored_codes(), module.weight_scale, module.bias,
                                                    bits, group_size or 0, 256)
    assert y.dtype == dtype and torch.equal(y.reshape(m, 64), expected)
    w = module.dequantized_weight()
    assert torch.allclose(expected.float(), (x.float() @ w.t() + module.bias.float()).to(dtype).float())


@needs_int4pack
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k,group_size", [(64, 256, None), (128, 256, 32), (128, 384, 64), (192, 512, 128),
                                             (64, 96, None)])
def test_torch_int4_kernel_path_within_stated_tolerance(n, k, group_size, dtype):
    """Prepared for torch's kernel: ≤ INT4PACK_MAX_TOKENS tokens within INT4PACK_RTOL · max|y_ref| of the fp32
    reference; more tokens bit-identical to the reference (dequantize + fp32 GEMM)."""
    module = WeightOnlyLinear.from_linear(_linear(n, k), 4, group_size).to(dtype)
    codes = module.stored_codes().clone()
    assert module.prepare_cpu_layout() and module.weight_packed is None
    assert torch.equal(module.stored_codes(), codes)
    for m in (1, 7, weight_only_cpu.INT4PACK_MAX_TOKENS):
        x = _inputs(m, k, dtype, seed=m)
        ref = reference.weight_only_gemm_reference(x, codes, module.weight_scale, module.bias, 4, group_size or 0, k)
        y = module(x)
        g = weight_only_cpu.kernel_group_size(k, group_size)
        direct = (torch.ops.aten._weight_int4pack_mm_for_cpu(x.bfloat16(), module.weight_int4pack, g,
                                                              module.scales_and_zeros).float()
                  + module.bias.float()).to(dtype)
        assert y.dtype == dtype and torch.equal(y, direct)  # the kernel path is the one taken
        assert (y.float() - ref.float()).abs().max() <= weight_only_cpu.INT4PACK_RTOL * ref.float().abs().max()
    x = _inputs(weight_only_cpu.INT4PACK_MAX_TOKENS + 1, k, dtype)
    ref = reference.weight_only_gemm_reference(x, codes, module.weight_scale, module.bias, 4, group_size or 0, k)
    assert torch.equal(module(x), ref)


@needs_int4pack
def test_prepared_layout_round_trips_state_dict_casts_and_codes():
    module = WeightOnlyLinear.from_linear(_linear(64, 128), 4, 32)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    module.prepare_cpu_layout()
    assert set(module.state_dict()) == set(before)
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), key
    module.to(torch.bfloat16)
    assert module.is_prepared and module.weight_scale.dtype == torch.float32 and module.bias.dtype == torch.bfloat16
    assert torch.equal(module.state_dict()["weight_packed"], before["weight_packed"])
    fresh = WeightOnlyLinear(128, 64, 4, 32, bias=True)
    fresh.prepare_cpu_layout()
    fresh.load_state_dict(before)
    assert fresh.is_prepared and torch.equal(fresh.stored_codes(), before["weight_packed"])
    codes = torch.randint(-8, 8, (64, 128), dtype=torch.int8)
    module.set_weight_codes(codes)
    assert module.is_prepared and torch.equal(load_codes(module.stored_codes(), 4, 128), codes)


def test_w4a16_g128_stores_at_most_0_3x_the_bytes_of_bf16_weights():
    module = WeightOnlyLinear(4096, 4096, 4, 128)
    stored = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    assert stored <= 0.3 * 4096 * 4096 * 2


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_w4a16_checkpoint_inspect_and_mismatch(tiny_dirs, kind, tmp_path):
    cfg = FairCalibConfig(method="gptq", a_bits=16, group_size=32, calibration_dataset=DATA, num_samples=2, seq_len=32)
    q = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True, quantization_config=cfg,
                                  dtype=torch.bfloat16)
    path = str(tmp_path / "q")
    q.save_pretrained(path)
    info = describe_checkpoint(path)
    assert (info["w_bits"], info["a_bits"], info["group_size"], info["weight_rounding"]) == (4, 16, 32, "gptq")
    assert len(info["packed"]) == 14 and info["layout"]["ok"]
    out = subprocess.run([sys.executable, "-m", "fair_calib_hf_cli", "inspect", path], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "W4A16 (group size 32, weights rounded by gptq)" in out.stdout
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    config["quantization_config"]["group_size"] = 64  # the tensors say 32
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(CheckpointMismatchError, match="weight_scale"):
        AutoModel.from_pretrained(path, trust_remote_code=True)


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_a_w4a4_checkpoint_written_before_the_new_fields_still_loads(tiny_dirs, kind, tmp_path):
    """A config.json without group_size / weight_rounding / gptq_* (what releases before issue 28 wrote) reloads
    as the same W4A4 model."""
    q = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True, quantization_config=FairCalibConfig(
        method="rtn", calibration_dataset=DATA, seq_len=32))
    path = str(tmp_path / "old")
    q.save_pretrained(path)
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    for key in ("group_size", "weight_rounding", "gptq_position_weights", "gptq_damp", "gptq_block_size",
                "gptq_act_order"):
        del config["quantization_config"][key]
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    again = AutoModel.from_pretrained(path, trust_remote_code=True)
    ids = torch.tensor([list(range(5, 17))])
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, q(input_ids=ids).logits)


@pytest.mark.skipif(not weight_only_cpu.int8_available(), reason="this torch has no CPU int8 weight-only kernel")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_torch_int8_kernel_path_within_stated_tolerance(dtype):
    """W8A16 at ≤ INT8PACK_MAX_TOKENS tokens runs torch's int8 weight-only kernel (bf16 inside): within
    INT4PACK_RTOL · max|y_ref| of the fp32 reference; more tokens are the reference bit for bit."""
    module = WeightOnlyLinear.from_linear(_linear(96, 256), 8, None).to(dtype)
    codes = module.stored_codes()
    for m in (1, 7, weight_only_cpu.INT8PACK_MAX_TOKENS):
        x = _inputs(m, 256, dtype, seed=m)
        ref = reference.weight_only_gemm_reference(x, codes, module.weight_scale, module.bias, 8, 0, 256)
        y = module(x)
        direct = (torch._weight_int8pack_mm(x.bfloat16(), codes, module.weight_scale.reshape(-1).bfloat16()).float()
                  + module.bias.float()).to(dtype)
        assert y.dtype == dtype and torch.equal(y, direct)  # the kernel path is the one taken
        assert (y.float() - ref.float()).abs().max() <= weight_only_cpu.INT4PACK_RTOL * ref.float().abs().max()
    x = _inputs(weight_only_cpu.INT8PACK_MAX_TOKENS + 1, 256, dtype)
    ref = reference.weight_only_gemm_reference(x, codes, module.weight_scale, module.bias, 8, 0, 256)
    assert torch.equal(module(x), ref)


def test_misaligned_int8_weights_never_reach_torchs_kernel():
    """torch's int8 weight-only kernel crashes the process on a weight whose data is not 16-byte aligned (a tensor
    read at an odd offset of a safetensors file): such a weight runs the reference until prepare_cpu_layout (called
    after loading) copies it to aligned memory."""
    module = WeightOnlyLinear.from_linear(_linear(64, 64), 8, None)
    base = torch.zeros(64 * 64 + 1, dtype=torch.int8)
    misaligned = base[1:].view(64, 64)
    misaligned.copy_(module.weight_int8)
    module._buffers["weight_int8"] = misaligned
    assert not weight_only_cpu.aligned(module.weight_int8)
    x = _inputs(3, 64, torch.float32)
    expected = reference.weight_only_gemm_reference(x, misaligned, module.weight_scale, module.bias, 8, 0, 64)
    assert torch.equal(module(x), expected)  # the reference, not a crash
    module.prepare_cpu_layout()
    assert weight_only_cpu.aligned(module.weight_int8) and torch.equal(module.weight_int8, misaligned)
