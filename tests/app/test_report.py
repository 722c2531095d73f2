"""The report: the accuracy table with intervals, the cost table, the comparisons, the files and the plot."""

import csv
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from genattn.app.bench import BenchResult
from genattn.app.report import (COLUMNS, COST_COLUMNS, cost_cells, cost_summary, differences, report_markdown,
                                results_figure, table_cells, write_table)
from genattn.app.study import StudyRow
from genattn.engine.recipes import Recipe

BASE = "faster_rcnn_r50_fpn_1x_coco"
A0010 = "faster_rcnn_r50_fpn_attention_0010_1x_coco"
A1111 = "faster_rcnn_r50_fpn_attention_1111_1x_coco"


def _row(name, ap, ci, resamples, **measured):
    return dataclasses.replace(StudyRow.describe(Recipe.from_name(name, max_iters=300)), box_ap=ap, box_ap_ci=ci,
                               ap_resamples=tuple(resamples), metrics={"num_images": 120}, **measured)


def _rows():
    noise = np.random.default_rng(0).normal(0, 0.01, 200)
    return [_row(BASE, 0.20, (0.18, 0.22), 0.20 + noise),
            _row(A0010, 0.21, (0.19, 0.23), 0.21 + noise + np.random.default_rng(1).normal(0, 0.01, 200)),
            _row(A1111, 0.30, (0.28, 0.32), 0.30 + noise)]


def _cost(name, impl, median_ms, mem_gb, backbone="R-50", size=(800, 1333)):
    return BenchResult(model=name, backbone=backbone, impl=impl, device="cpu", device_name="CPU test", threads=2,
                       num_images=3, warmup=0, input_size=size, image_size=(800, 1333), median_ms=median_ms,
                       fps=1e3 / median_ms, mem_gb=mem_gb, mem_method="test", torch="x")


COST = [_cost(BASE, None, 5000.0, 2.0), _cost(A0010, "auto", 5100.0, 2.05), _cost(A1111, "auto", 5750.0, 2.2),
        _cost(A1111, "materialize", 9000.0, 4.4)]


def test_accuracy_cells_and_paired_differences():
    rows = _rows()
    assert table_cells(rows[0]) == {"Backbone": "R-50", "Attention Component": "-", "DCN": "N", "Lr schd": "300 it",
                                    "Mem (GB)": "-", "Inf time (fps)": "-", "box AP": "20.0", "95% CI": "18.0-22.0"}
    assert table_cells(dataclasses.replace(rows[0], box_ap_ci=None))["95% CI"] == "-"
    diffs = {d["model"]: d for d in differences(rows)}
    assert set(diffs) == {"0010", "1111"} and all(d["against"] == "baseline" for d in diffs.values())
    # The same resampling noise on both sides cancels: the 1111 row's +10 points are exactly its interval.
    assert diffs["1111"]["difference"] == pytest.approx(0.10)
    assert diffs["1111"]["low"] == pytest.approx(0.10) and diffs["1111"]["exceeds_noise"]
    assert diffs["0010"]["low"] < 0 < diffs["0010"]["high"] and not diffs["0010"]["exceeds_noise"]
    assert differences(rows[1:]) == [] and differences([dataclasses.replace(r, ap_resamples=()) for r in rows]) == []


def test_cost_cells_and_summary():
    cells = [cost_cells(r, COST[0]) for r in COST]
    assert cells[0] == {"Backbone": "R-50", "Attention Component": "-", "Attention computed by": "-",
                        "Input": "800x1333", "Mem (GB)": "2.00", "Inf time (fps)": "0.2", "Mem / baseline": "1.00x",
                        "Time / baseline": "1.00x"}
    assert cells[2]["Attention computed by"] == "genattn (auto)" and cells[2]["Time / baseline"] == "1.15x"
    assert cells[3]["Attention computed by"] == "original algorithm (materialize)"
    assert (cells[3]["Mem / baseline"], cells[3]["Time / baseline"], cells[3]["Inf time (fps)"]) == (
        "2.20x", "1.80x", "0.111")
    assert cost_cells(dataclasses.replace(COST[1], mem_gb=None), COST[0])["Mem / baseline"] == "-"
    summary = cost_summary(COST)
    assert summary[2] == "- 1111 computed by the original algorithm: 1.80x the baseline's time and 2.20x its " \
                         "training memory"
    # The seed's ratios come from its table (21.4 / 5.6 fps, 8.0 / 4.0 GB), labelled as the seed's.
    assert "the seed's table" in summary[-1] and "1111 3.82x the time and 2.00x the memory" in summary[-1]


def test_markdown_keeps_the_two_sources_apart():
    text = report_markdown(_rows(), COST, title="Accuracy: tiny", cost_title="Cost: full size", notes=["note"])
    accuracy, cost = text.split("Cost: full size")
    # Unmeasured Mem and fps columns of the trained models are left out; the cost table has its own.
    assert "| Backbone | Attention Component | DCN | Lr schd | box AP | 95% CI |" in accuracy
    assert "- 1111 vs baseline: +10.0 AP (95% interval +10.0 to +10.0): exceeds the noise of the 120 " \
           "validation images" in accuracy
    assert "| " + " | ".join(COST_COLUMNS) + " |" in cost and cost.rstrip().endswith("note")
    measured = [dataclasses.replace(r, fps=10.0, mem_gb=0.5) for r in _rows()]
    assert "| " + " | ".join(COLUMNS) + " |" in report_markdown(measured)


def test_write_table(tmp_path):
    rows = _rows()
    files = write_table(rows, tmp_path / "out", title="t", cost=COST, cost_title="c", notes=["n"])
    with open(files["csv"]) as f:
        table = list(csv.DictReader(f))
    assert [r["95% CI"] for r in table] == ["18.0-22.0", "19.0-23.0", "28.0-32.0"] and table[2]["box AP"] == "30.0"
    with open(files["cost_csv"]) as f:
        cost = list(csv.DictReader(f))
    assert [r["Model"] for r in cost] == [BASE, A0010, A1111, A1111] and cost[3]["Time / baseline"] == "1.80x"
    report = json.loads(files["json"].read_text())
    assert report["accuracy"][2]["box_ap_ci"] == [0.28, 0.32] and len(report["accuracy"][0]["ap_resamples"]) == 200
    assert [d["model"] for d in report["differences"]] == ["0010", "1111"]
    assert report["cost"][3]["impl"] == "materialize" and report["notes"] == ["n"]
    with Image.open(files["plot"]) as im:
        assert im.format == "PNG"
    # Without cost, no cost file.
    assert "cost_csv" not in write_table(rows, tmp_path / "plain")


def test_plot_axes_start_at_zero_and_show_the_intervals():
    from matplotlib import pyplot as plt

    rows = _rows()
    fig = results_figure(rows, COST, title="accuracy", cost_title="cost")
    ap, fps, mem = fig.axes
    assert ap.get_ylim()[0] == 0 and 32 <= ap.get_ylim()[1] <= 1.2 * 32
    (bars,) = [c for c in ap.containers if hasattr(c, "has_yerr")]
    segments = bars.lines[2][0].get_segments()
    assert [tuple(np.round(s[:, 1], 6)) for s in segments] == [(18.0, 22.0), (19.0, 23.0), (28.0, 32.0)]
    assert [t.get_text() for t in ap.get_xticklabels()] == ["baseline", "0010", "1111"]
    assert [t.get_text() for t in fps.get_xticklabels()] == ["baseline", "0010", "1111", "1111 original"]
    assert [p.get_height() for p in mem.patches] == [2.0, 2.05, 2.2, 4.4]
    assert [p.get_height() for p in fps.patches] == pytest.approx([1e3 / r.median_ms for r in COST])
    assert fps.get_ylim()[0] == 0 and mem.get_ylim()[0] == 0 and 4.4 <= mem.get_ylim()[1] <= 1.2 * 4.4
    plt.close(fig)
    # Without cost and without measured speed or memory: the accuracy panel alone.
    fig = results_figure(rows)
    assert len(fig.axes) == 1
    plt.close(fig)
