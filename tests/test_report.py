"""The calibration report and its plots: only the settings that applied, readable axes."""
import os

import pytest

from fair_calib_hf import FairCalibConfig
from fair_calib_hf.config import STAGE1_FIELDS, STAGE2_FIELDS
from fair_calib_hf.diagnostics import plots as diag_plots
from fair_calib_hf import report as report_mod

BLOCKS = [{"name": f"model.layers.{i}", "rel_mse": 0.01 * (i + 1), "layers": {"q_proj": 0.02, "o_proj": 0.03},
           "rescaled": []} for i in range(3)]


def _summary(method, num_samples):
    return {"method": method, "num_samples": num_samples, "converted_linears": 6, "seconds": 1.0,
            "stage1_seconds": 0.0, "device": "cpu", "peak_memory": {}, "blocks": BLOCKS if num_samples else [],
            "prior": None}


@pytest.mark.parametrize("method,num_samples", [("rtn", 4), ("rtn", 0), ("quarot", 4), ("flatquant", 4)])
def test_report_lists_only_the_settings_that_applied(tmp_path, method, num_samples):
    config = FairCalibConfig(method=method, **({} if method != "flatquant" else {"calibration_dataset": ["x"]}))
    md = open(report_mod.write_report(str(tmp_path), model="m", config=config.to_dict(),
                                      calibration=_summary(method, num_samples))).read()
    rows = {line.split("`")[1] for line in md.splitlines() if line.startswith("| `")}
    assert "method" in rows and "w_clip_ratio" in rows
    assert not rows & set(STAGE1_FIELDS)  # no Stage I settings outside fair_calib
    assert bool(rows & set(STAGE2_FIELDS)) == (method == "flatquant")
    assert ("w_clip_search" in rows) == (method == "quarot")
    assert ("seq_len" in rows) == bool(num_samples)


def _capture(monkeypatch, module):
    figures = []

    def save(fig, path):
        figures.append(fig)
        return path

    monkeypatch.setattr(module, "_save", save)
    return figures


def test_flat_zero_curve_has_a_meaningful_axis(monkeypatch, tmp_path):
    figures = _capture(monkeypatch, diag_plots)
    diag_plots.plot_flip_rate({"quantized": [0.0, 0.0, float("nan"), 0.0]}, str(tmp_path / "f.png"))
    diag_plots.plot_flip_rate({"quantized": [0.0, 0.25, 0.5]}, str(tmp_path / "g.png"))
    diag_plots.plot_amplification({"quantized": [0.0, 0.0]}, str(tmp_path / "h.png"))
    assert figures[0].axes[0].get_ylim() == (0.0, 1.0)
    assert any(t.get_text() == "all zero" for t in figures[0].axes[0].texts)
    assert figures[1].axes[0].get_ylim()[0] == 0.0 and not figures[1].axes[0].texts
    assert figures[2].axes[0].get_ylim() == (0.0, 2.0)


def test_block_plots_tick_whole_blocks(monkeypatch, tmp_path):
    figures = _capture(monkeypatch, report_mod)
    report_mod.plot_layer_errors(BLOCKS, str(tmp_path / "l.png"))
    report_mod.plot_block_errors(BLOCKS, str(tmp_path / "b.png"))
    for fig in figures:
        assert list(fig.axes[0].get_xticks()) == [0, 1, 2]
    assert os.listdir(tmp_path) == []  # nothing written: _save was intercepted
