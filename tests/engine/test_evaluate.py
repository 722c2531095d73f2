import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from genattn.data import CocoDetection
from genattn.engine.evaluate import METRIC_NAMES, coco_evaluate, detections_to_coco, evaluate


def _noisy_detections(coco, seed=0):
    rng = np.random.default_rng(seed)
    results = []
    for ann in coco.dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, 2.5, 4)
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]],
                        "score": float(rng.uniform(0.3, 1))})
        results.append({"image_id": ann["image_id"], "category_id": int(rng.choice([3, 7])),
                        "bbox": [float(v) for v in rng.uniform(0, 30, 4)], "score": float(rng.uniform(0, 0.6))})
    return results


def _pycocotools(ann_file, results, cat_ids=None):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        ev = COCOeval(gt, gt.loadRes(json.loads(json.dumps(results))), "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return ev.stats


def test_numbers_equal_pycocotools(tiny_coco):
    ann_file = tiny_coco / "annotations" / "instances_val2017.json"
    ds = CocoDetection(tiny_coco / "val2017", ann_file, train=False)
    results = _noisy_detections(ds.coco)
    ours = coco_evaluate(ds.coco, json.loads(json.dumps(results)))
    reference = _pycocotools(ann_file, results)
    assert [ours[k] for k in METRIC_NAMES] == reference.tolist()
    assert 0.1 < ours["AP"] < 0.95  # a non-trivial case
    for cat_id, name in ((3, "red"), (7, "blue")):
        assert ours["per_class"][name] == pytest.approx(_pycocotools(ann_file, results, [cat_id])[0], abs=1e-12)


class GroundTruthModel(torch.nn.Module):
    """Detects exactly the annotated boxes (for the image at hand) with score 1."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset, self.w = dataset, torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        outs = []
        for im in images:
            idx = next(i for i in range(len(self.dataset)) if torch.equal(self.dataset[i][0], im))
            t = self.dataset[idx][1]
            outs.append({"boxes": t["boxes"], "scores": torch.ones(len(t["boxes"])), "labels": t["labels"]})
        return outs


def test_evaluate_runs_the_model_writes_results_and_restores_mode(tiny_coco, tmp_path):
    ds = CocoDetection(tiny_coco / "val2017", tiny_coco / "annotations" / "instances_val2017.json", train=False)
    model = GroundTruthModel(ds).train()
    metrics = evaluate(model, ds, batch_size=2, out_file=tmp_path / "out" / "dets.bbox.json")
    assert model.training
    assert metrics["AP"] == pytest.approx(1.0) and metrics["per_class"] == {"red": 1.0, "blue": 1.0}
    assert metrics["num_images"] == 6 and metrics["num_detections"] == len(ds.coco.anns)
    saved = json.loads((tmp_path / "out" / "dets.bbox.json").read_text())
    assert len(saved) == len(ds.coco.anns) and set(saved[0]) == {"image_id", "category_id", "bbox", "score"}


def test_boxes_become_xywh_and_no_detections_score_zero(tiny_coco):
    out = {"boxes": torch.tensor([[1.0, 2, 11, 22]]), "scores": torch.tensor([0.5]), "labels": torch.tensor([7])}
    assert detections_to_coco([out], [4]) == [{"image_id": 4, "category_id": 7, "bbox": [1.0, 2.0, 10.0, 20.0],
                                               "score": 0.5}]
    ds = CocoDetection(tiny_coco / "val2017", tiny_coco / "annotations" / "instances_val2017.json", train=False)
    metrics = coco_evaluate(ds.coco, [])
    assert metrics["AP"] == 0.0 and metrics["per_class"] == {"red": 0.0, "blue": 0.0}


def test_a_missing_image_in_a_loader_worker_still_gives_one_line(tiny_coco):
    ds = CocoDetection(tiny_coco / "val2017", tiny_coco / "annotations" / "instances_val2017.json", train=False)
    (tiny_coco / "val2017" / "000003.png").unlink()
    model = torch.nn.Linear(1, 1)  # never reached with the missing image's batch
    model.forward = lambda images: [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                                     "labels": torch.zeros(0, dtype=torch.int64)} for _ in images]
    with pytest.raises(ValueError, match=r"^image .*000003\.png: file not found$"):
        evaluate(model, ds, num_workers=1)
