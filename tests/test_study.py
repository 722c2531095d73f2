"""The study's table: descriptive columns, Markdown/CSV/JSON/PNG outputs."""

import csv
import json

import pytest
from PIL import Image

from genattn.recipes import Recipe
from genattn.study import COLUMNS, data_root, describe, write_table


def test_describe_seed_and_small_models():
    assert describe(Recipe(model="faster_rcnn_r50_fpn_attention_1111_dcn_1x_coco")) == {
        "Backbone": "R-50", "Attention Component": "1111", "DCN": "Y", "Lr schd": "1x"}
    small = Recipe(model="faster_rcnn_r50_fpn_1x_coco", backbone={"layers": (1, 1, 1, 1), "base_width": 16},
                   max_iters=400)
    assert describe(small) == {"Backbone": "R1111-w16", "Attention Component": "-", "DCN": "N",
                               "Lr schd": "400 it"}
    assert describe(Recipe(model="faster_rcnn_r50_fpn_attention_0010_1x_coco", epochs=2))["Lr schd"] == "2 ep"


def test_write_table(tmp_path):
    rows = [{"model": "faster_rcnn_r50_fpn_1x_coco", **describe(Recipe(model="faster_rcnn_r50_fpn_1x_coco")),
             "Mem (GB)": "0.500", "Inf time (fps)": "20.0", "box AP": "30.0", "fps": 20.0, "mem_gb": 0.5,
             "box_ap": 0.3},
            {"model": "faster_rcnn_r50_fpn_attention_1111_1x_coco",
             **describe(Recipe(model="faster_rcnn_r50_fpn_attention_1111_1x_coco")),
             "Mem (GB)": "-", "Inf time (fps)": "15.0", "box AP": "33.0", "fps": 15.0, "mem_gb": None,
             "box_ap": 0.33}]
    files = write_table(rows, tmp_path / "out", title="test")
    md = files["markdown"].read_text().splitlines()
    assert md[2] == "| " + " | ".join(COLUMNS) + " |"
    assert md[4] == "| R-50 | - | N | 1x | 0.500 | 20.0 | 30.0 |"
    with open(files["csv"]) as f:
        table = list(csv.DictReader(f))
    assert table[1]["Attention Component"] == "1111" and table[1]["box AP"] == "33.0"
    assert json.loads(files["json"].read_text())[0]["fps"] == 20.0
    with Image.open(files["plot"]) as im:
        assert im.format == "PNG"


def test_data_root_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data root not found"):
        data_root(tmp_path / "nope")
    assert data_root(tmp_path) == tmp_path
