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


def _figures_of(monkeypatch):
    """Every figure the plot functions close (they are drawn and laid out by then), instead of closing it."""
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    return figures


def _layout_problems(fig) -> list[str]:
    """Texts (title, axis labels, tick labels, legend) outside the figure, and legends over a data point."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    problems = []
    for ax in fig.axes:
        texts = [ax.title, ax.xaxis.label, ax.yaxis.label] + ax.texts
        (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())  # labels of ticks in view are drawn
        texts += [t for t in ax.get_xticklabels() if x0 <= t.get_position()[0] <= x1]
        texts += [t for t in ax.get_yticklabels() if y0 <= t.get_position()[1] <= y1]
        for text in texts:
            if not text.get_text():
                continue
            ext = text.get_window_extent(renderer)
            if ext.x0 < box.x0 - 1 or ext.y0 < box.y0 - 1 or ext.x1 > box.x1 + 1 or ext.y1 > box.y1 + 1:
                problems.append(f"clipped: {text.get_text()!r}")
        legend = ax.get_legend()
        if legend is None:
            continue
        ext = legend.get_window_extent(renderer)
        if ext.x0 < box.x0 - 1 or ext.x1 > box.x1 + 1 or ext.y0 < box.y0 - 1 or ext.y1 > box.y1 + 1:
            problems.append("clipped: legend")
        for line in ax.get_lines():
            points = ax.transData.transform(line.get_xydata())
            if any(ext.contains(x, y) for x, y in points if x == x and y == y):
                problems.append(f"legend covers data of {line.get_label()!r}")
    return problems


def test_plots_keep_labels_and_legends_inside_and_off_the_data(monkeypatch, tmp_path):
    import random

    rng = random.Random(0)
    names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    blocks = [{"name": f"model.layers.{i}", "rel_mse": 10 ** rng.uniform(-3, -1), "rescaled": [],
               "layers": {n: 10 ** rng.uniform(-3, -1) for n in names}} for i in range(6)]
    curve = [0.3, 0.5, 0.45, 0.6, 0.7, 0.65, 0.5, float("nan")]
    figures = _figures_of(monkeypatch)
    diag_plots.plot_amplification({"quantized": curve}, str(tmp_path / "amplification.png"))
    diag_plots.plot_teacher_forced_prob_mse({"quantized": curve}, str(tmp_path / "prob_mse.png"))
    diag_plots.plot_flip_rate({"quantized": [0.1, 0.4, 0.9, 0.2]}, str(tmp_path / "flip.png"))
    diag_plots.plot_lag_ccdf({"full precision": [0, 1, 2, 5], "quantized": [0, 3, 4, 9]}, str(tmp_path / "lag.png"))
    report_mod.plot_layer_errors(blocks, str(tmp_path / "layer_error.png"))
    report_mod.plot_block_errors(blocks, str(tmp_path / "block_error.png"))
    report_mod.plot_prior([1.0] * 40 + [2.0] * 16, 16, str(tmp_path / "prior.png"))
    assert len(figures) == 7
    problems = {fig.axes[0].get_title(): _layout_problems(fig) for fig in figures}
    assert not any(problems.values()), problems


def test_amplification_without_a_false_commit_says_so(monkeypatch, tmp_path, tiny_dirs):
    """The same model as teacher and student commits no false token: amplification is undefined, and the
    table, the plot and the CLI say why instead of printing nan / "all zero"."""
    import torch
    from transformers import AutoModel

    from fair_calib_hf.decoding import DecodeConfig
    from fair_calib_hf.diagnostics import compare_models

    model = AutoModel.from_pretrained(tiny_dirs["llada"], trust_remote_code=True)
    ids = torch.randint(5, 90, (2, 6), generator=torch.Generator().manual_seed(0))
    frontier = compare_models(model, model, ids, None, DecodeConfig(gen_length=8, steps=8, block_length=8,
                                                                     record=True)).to_dict()
    assert frontier["false_commit_rate"] == 0.0
    figures = _capture(monkeypatch, diag_plots)
    md = open(report_mod.write_report(str(tmp_path), model="m", config=FairCalibConfig(method="rtn").to_dict(),
                                      calibration=_summary("rtn", 0), frontier=frontier)).read()
    row = next(line for line in md.splitlines() if line.startswith("| amplification"))
    assert "nan" not in row and "no false commit" in row
    amplification, = [fig for fig in figures if fig.axes[0].get_title().startswith("Amplification")]
    assert [t.get_text() for t in amplification.axes[0].texts] == ["no false commit: nothing to amplify"]
    assert report_mod.amplification_value(frontier) == "n/a (no false commit)"  # what eval prints too
