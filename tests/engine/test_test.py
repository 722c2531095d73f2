import json

import pytest
import torch

import genattn.engine.test as engine_test  # (not "from ... import test": pytest would collect it)
from tiny_setup import tiny_recipe
from genattn.engine.train import train
from genattn.models import Classes


@pytest.fixture
def trained(tiny_coco, tmp_path):
    out = train(tiny_recipe(max_iters=1, eval_interval=-1), data_root=tiny_coco, work_dir=tmp_path / "run",
                progress=False)
    return out["checkpoint"]


def test_checkpoint_alone_rebuilds_and_evaluates_the_model(trained, tiny_coco, tmp_path):
    metrics = engine_test.test(trained, data_root=tiny_coco, workers=0, progress=False)
    assert set(metrics) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class", "results_file"}
    assert metrics["results_file"] == str(tmp_path / "run" / "iter_1_val2017.bbox.json")
    assert len(json.loads(open(metrics["results_file"]).read())) == metrics["num_detections"]


def test_foreign_checkpoints_predict_the_datasets_categories(trained, tiny_coco, tmp_path):
    recipe = tiny_recipe()
    model = recipe.build(Classes((3, 7), ("red", "blue")))
    torch.save({"state_dict": model.state_dict(), "meta": {}}, tmp_path / "mmdet_style.pth")
    metrics = engine_test.test(tmp_path / "mmdet_style.pth", model=recipe, data_root=tiny_coco, workers=0,
                               out_file=tmp_path / "dets.json", progress=False)
    assert metrics["results_file"] == str(tmp_path / "dets.json") and metrics["num_images"] == 6
    with pytest.raises(ValueError, match="cannot tell the model .* name it"):
        engine_test.test(tmp_path / "mmdet_style.pth", data_root=tiny_coco, progress=False)
    with pytest.raises(ValueError, match=r"holds faster_rcnn_r50_fpn_attention_0010_1x_coco \(from its config\), "
                                         r"not faster_rcnn_r50_fpn_1x_coco"):
        engine_test.test(trained, model="faster_rcnn_r50_fpn_1x_coco", data_root=tiny_coco, progress=False)
    with pytest.raises(ValueError, match=r"^checkpoint .*missing\.pth: not found$"):
        engine_test.test(tmp_path / "missing.pth", data_root=tiny_coco, progress=False)


def test_compiled_evaluation_equals_eager(trained, tiny_coco, tmp_path, eager_compile):
    want = engine_test.test(trained, data_root=tiny_coco, workers=0, out_file=tmp_path / "eager.json",
                            progress=False)
    got = engine_test.test(trained, data_root=tiny_coco, workers=0, out_file=tmp_path / "compiled.json",
                           compile=True, progress=False)
    assert eager_compile[0] > 0  # the detector ran as dynamo graphs
    assert got["num_detections"] == want["num_detections"] > 0
    assert got["AP"] == pytest.approx(want["AP"], abs=1e-6)
