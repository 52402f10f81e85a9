"""Stage II batches its work: one block forward per optimizer step (not one per sample), captured block calls
stacked into one batch when they can be, and the result still deterministic (same seed → bit-identical
checkpoint)."""
import pytest
import torch
from transformers import AutoModel

from fair_calib_hf import FairCalibConfig
from fair_calib_hf.architectures import get_adapter
from fair_calib_hf.calibration.block_loop import BlockInput, capture_block_inputs, run_block, stack_block_inputs

from conftest import CALIB_TEXTS

TEXTS = CALIB_TEXTS * 4


def _cfg(**kw):
    base = dict(method="flatquant", calibration_dataset=TEXTS, num_samples=8, seq_len=32, epochs=1, batch_size=4)
    base.update(kw)
    return FairCalibConfig(**base)


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_one_block_forward_per_optimizer_step(tiny_dirs, kind, monkeypatch):
    """8 samples, batch 4, 1 epoch: 2 forwards for the input statistics + 2 optimizer steps per block (the
    per-sample loop ran 8 + 8)."""
    from fair_calib_hf.calibration import stage2_fit

    calls = []
    original = stage2_fit.run_block

    def counting(block, inp):
        calls.append(inp.hidden.shape[0])
        return original(block, inp)

    monkeypatch.setattr(stage2_fit, "run_block", counting)
    model = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True, quantization_config=_cfg())
    blocks = model.hf_quantizer.calibration_report.blocks
    assert all(b.extra["steps"] == 2 for b in blocks)
    assert calls == [4] * (4 * len(blocks))


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_stacked_block_call_equals_per_sample_calls(tiny_dirs, kind):
    model = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True).eval()
    block = get_adapter(model).blocks(model)[0]
    samples = [torch.randint(5, 90, (24,), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    inputs = capture_block_inputs(model, block, samples)
    stacked = stack_block_inputs(inputs)
    assert stacked is not None and stacked.hidden.shape[0] == 3
    with torch.no_grad():
        together = run_block(block, stacked)
        alone = torch.cat([run_block(block, i) for i in inputs])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    # calls of different lengths cannot share a batch: the caller falls back to one call per sample
    short = capture_block_inputs(model, block, [samples[0][:10]])
    assert stack_block_inputs(inputs[:1] + short) is None


def test_stack_rules():
    h = [torch.randn(1, 5, 4) for _ in range(3)]
    shared = torch.ones(5, 5)
    plain = [BlockInput((x,), {"mask": shared, "flag": True, "pos": torch.arange(5)[None]}) for x in h]
    out = stack_block_inputs(plain)
    assert torch.equal(out.hidden, torch.cat(h)) and out.kwargs["mask"] is shared and out.kwargs["flag"] is True
    assert out.kwargs["pos"].shape == (3, 5)
    assert stack_block_inputs([plain[0], BlockInput((h[1],), {**plain[1].kwargs, "flag": False})]) is None
    assert stack_block_inputs([plain[0], BlockInput((h[1],), {**plain[1].kwargs, "mask": shared + 1})]) is None
    assert stack_block_inputs(plain[:1]) is plain[0]


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_same_seed_bit_identical_checkpoint(tiny_dirs, kind):
    states = []
    for _ in range(2):
        model = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True, quantization_config=_cfg())
        states.append(model.state_dict())
    a, b = states
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True, quantization_config=_cfg(seed=1))
    assert not all(torch.equal(a[k], v) for k, v in other.state_dict().items())  # the seed matters
