"""Models larger than one device: with an accelerate device_map that puts blocks on "cpu" and "disk"
(offload_folder), calibration onloads one block at a time and the quantized result equals the one of the
same model loaded without offloading."""
import pytest
import torch
from transformers import AutoModel

from fair_calib_hf import FairCalibConfig, W4A4Linear
from fair_calib_hf.modules import ACT_QUANT_LINEARS

from conftest import CALIB_TEXTS

DEVICE_MAPS = {
    "llada": {"model.transformer.wte": "cpu", "model.transformer.blocks.0": "disk",
              "model.transformer.blocks.1": "disk", "model.transformer.ln_f": "cpu", "model.transformer.ff_out": "cpu"},
    "dream": {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
              "model.rotary_emb": "cpu", "lm_head": "cpu"},
}


def _cfg(method, bits=(4, 4)):
    return FairCalibConfig(method=method, calibration_dataset=CALIB_TEXTS, num_samples=4, seq_len=48, epochs=2,
                           batch_size=2, n_probe=4, prior_window=16, probe_steps=8, w_bits=bits[0], a_bits=bits[1])


@pytest.mark.parametrize("kind,method,bits", [("llada", "fair_calib", (4, 4)), ("dream", "flatquant", (4, 4)),
                                              ("llada", "rtn", (4, 4)), ("dream", "fair_calib", (4, 8)),
                                              ("llada", "quarot", (8, 8))])
def test_offloaded_calibration_equals_in_memory(tiny_dirs, tmp_path, kind, method, bits, input_ids, monkeypatch):
    from fair_calib_hf.calibration import block_loop

    seen = []
    real_onload = block_loop.onload_block

    def spy(block, device):
        on_meta = any(p.device.type == "meta" for p in block.parameters())
        placement = real_onload(block, device)
        seen.append((on_meta, placement.offloaded))
        return placement

    ref = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True, quantization_config=_cfg(method, bits))
    monkeypatch.setattr(block_loop, "onload_block", spy)
    off = AutoModel.from_pretrained(tiny_dirs[kind], trust_remote_code=True, quantization_config=_cfg(method, bits),
                                    device_map=DEVICE_MAPS[kind], offload_folder=str(tmp_path / "offload"))
    n_disk = sum(v == "disk" for v in DEVICE_MAPS[kind].values())
    assert sum(on_meta and offloaded for on_meta, offloaded in seen) == n_disk  # weights read from the offload map
    assert "disk" in set(off.hf_device_map.values())
    a, b = ref.state_dict(), off.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert b[key].device.type != "meta", key  # every calibrated block is materialised again
        assert torch.equal(a[key], b[key]), key
    ra, rb = ref.hf_quantizer.calibration_report, off.hf_quantizer.calibration_report
    assert [x.rel_mse for x in ra.blocks] == [x.rel_mse for x in rb.blocks]
    assert sum(type(m) is ACT_QUANT_LINEARS[bits] for m in off.modules()) == 14
    with torch.no_grad():
        assert torch.equal(ref(input_ids=input_ids).logits, off(input_ids=input_ids).logits)
    off.save_pretrained(tmp_path / "saved")
    again = AutoModel.from_pretrained(str(tmp_path / "saved"), trust_remote_code=True)
    with torch.no_grad():
        assert torch.equal(again(input_ids=input_ids).logits, ref(input_ids=input_ids).logits)


def test_cli_device_map_with_disk_offload(tiny_dirs, tmp_path, capsys):
    import json

    from fair_calib_hf.cli import main

    out = str(tmp_path / "q")
    assert main(["quantize", tiny_dirs["llada"], "--out", out, "--method", "rtn", "--no-progress", "--no-report",
                 "--device-map", json.dumps(DEVICE_MAPS["llada"])]) == 1
    assert "--offload-folder" in capsys.readouterr().err
    assert main(["quantize", tiny_dirs["llada"], "--out", out, "--method", "rtn", "--no-progress", "--no-report",
                 "--device-map", json.dumps(DEVICE_MAPS["llada"]), "--offload-folder", str(tmp_path / "off")]) == 0
    assert sum(isinstance(m, W4A4Linear) for m in AutoModel.from_pretrained(out, trust_remote_code=True).modules()) == 14
