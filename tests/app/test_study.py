"""The study's rows: what describes a model."""

import pytest

from genattn.app.report import table_cells
from genattn.app.study import StudyRow
from genattn.data import data_root
from genattn.engine.recipes import Recipe


def test_describe_seed_and_small_models():
    row = StudyRow.describe(Recipe.from_name("faster_rcnn_r50_fpn_attention_1111_dcn_1x_coco"))
    assert table_cells(row) == {"Backbone": "R-50", "Attention Component": "1111", "DCN": "Y", "Lr schd": "1x",
                                "Mem (GB)": "-", "Inf time (fps)": "-", "box AP": "-", "95% CI": "-"}
    assert row.tag == "1111+DCN" and row.model == "faster_rcnn_r50_fpn_attention_1111_dcn_1x_coco"
    small = Recipe.from_name("faster_rcnn_r50_fpn_1x_coco", max_iters=400).replace(
        backbone={"layers": (1, 1, 1, 1), "base_width": 16})
    cells = table_cells(StudyRow.describe(small))
    # The narrow CPU backbone's label names its depth and width; it must not read like an attention type.
    assert (cells["Backbone"], cells["Attention Component"], cells["DCN"], cells["Lr schd"]) == (
        "R-14 w16", "-", "N", "400 it")
    assert StudyRow.describe(Recipe.from_name("faster_rcnn_r50_fpn_attention_0010_1x_coco", epochs=2)).schedule == \
        "2 ep"
    assert StudyRow.describe(Recipe.from_name("faster_rcnn_r50_fpn_dconv_c3-c5_1x_coco")).tag == "DCN"


def test_data_root_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data root not found"):
        data_root(tmp_path / "nope")
    assert data_root(tmp_path) == tmp_path
