"""Box AP from one evaluation's per-image results: pycocotools' number, resampled images, paired intervals."""

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from genattn.engine.bootstrap import (bootstrap_ap, box_ap, difference_interval, image_matches,
                                      percentile_interval)

CATS = [{"id": 3, "name": "red"}, {"id": 7, "name": "blue"}, {"id": 9, "name": "green"}]


def _dataset(num_images=12, seed=0):
    """Ground truth (one crowd box among them) and noisy detections with distinct scores."""
    rng = np.random.default_rng(seed)
    images = [{"id": i, "width": 100, "height": 100} for i in range(1, num_images + 1)]
    anns, dets = [], []
    for im in images:
        for _ in range(int(rng.integers(1, 4))):
            x, y, w, h = (float(v) for v in rng.uniform([0, 0, 8, 8], [60, 60, 40, 40]))
            cat = int(rng.choice([3, 7, 9]))
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": int(len(anns) == 4)})
            jitter = rng.normal(0, 4, 4)
            dets.append({"image_id": im["id"], "category_id": cat, "score": float(rng.uniform(0.2, 1)),
                         "bbox": [x + jitter[0], y + jitter[1], abs(w + jitter[2]), abs(h + jitter[3])]})
            dets.append({"image_id": im["id"], "category_id": int(rng.choice([3, 7])),
                         "score": float(rng.uniform(0, 0.7)), "bbox": [float(v) for v in rng.uniform(0, 50, 4)]})
    return {"images": images, "annotations": anns, "categories": CATS}, dets


def _coco(dataset):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(dataset)
        coco.createIndex()
    return coco


def _pycocotools_ap(dataset, dets, img_ids=None):
    coco = _coco(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        if img_ids is not None:
            ev.params.imgIds = img_ids
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return ev.stats[0]


def test_unit_weights_give_pycocotools_ap():
    dataset, dets = _dataset()
    matches = image_matches(_coco(dataset), copy.deepcopy(dets))
    reference = _pycocotools_ap(dataset, dets)
    assert 0.1 < reference < 0.9  # a non-trivial case
    assert box_ap(matches) == pytest.approx(reference, abs=1e-12)


def test_weights_count_images_as_if_repeated_or_dropped():
    dataset, dets = _dataset()
    matches = image_matches(_coco(dataset), copy.deepcopy(dets))
    # Image 1 three times, image 2 not at all: the same as evaluating a data set holding those copies.
    repeated = copy.deepcopy(dataset)
    repeated["images"] = [im for im in dataset["images"] if im["id"] != 2]
    repeated["annotations"] = [a for a in dataset["annotations"] if a["image_id"] != 2]
    repeated_dets = [d for d in dets if d["image_id"] != 2]
    for copy_id in (101, 102):
        repeated["images"].append({"id": copy_id, "width": 100, "height": 100})
        repeated["annotations"] += [{**a, "id": 1000 * copy_id + a["id"], "image_id": copy_id}
                                    for a in dataset["annotations"] if a["image_id"] == 1]
        repeated_dets += [{**d, "image_id": copy_id} for d in dets if d["image_id"] == 1]
    weights = np.ones(matches.num_images)
    weights[0], weights[1] = 3, 0
    assert box_ap(matches, weights) == pytest.approx(_pycocotools_ap(repeated, repeated_dets), abs=1e-12)
    with pytest.raises(ValueError, match="3 weights for 12 images"):
        box_ap(matches, np.ones(3))


def test_bootstrap_interval_and_paired_differences():
    dataset, dets = _dataset(num_images=30)
    coco = _coco(dataset)
    matches = image_matches(coco, copy.deepcopy(dets))
    samples = bootstrap_ap(matches, samples=200, seed=0)
    assert samples.shape == (200,) and np.array_equal(samples, bootstrap_ap(matches, samples=200, seed=0))
    low, high = percentile_interval(samples)
    assert low < box_ap(matches) < high and high - low > 0.02  # 30 images: a visible spread
    # A second model that drops its lowest-scoring half of the detections, resampled with the same seed.
    worse = image_matches(coco, [d for d in copy.deepcopy(dets) if d["score"] > 0.5])
    paired = bootstrap_ap(worse, samples=200, seed=0)
    assert difference_interval(samples, samples) == (0.0, 0.0)
    d_low, d_high = difference_interval(samples, paired)
    assert d_low <= box_ap(matches) - box_ap(worse) <= d_high
    with pytest.raises(ValueError, match="paired"):
        difference_interval(samples, paired[:10])


def test_no_detections_and_bad_arguments():
    dataset, _ = _dataset()
    matches = image_matches(_coco(dataset), [])
    assert box_ap(matches) == 0.0 and percentile_interval(bootstrap_ap(matches, samples=5)) == (0.0, 0.0)
    with pytest.raises(ValueError, match="samples"):
        bootstrap_ap(matches, samples=0)
    with pytest.raises(ValueError, match="level"):
        percentile_interval(np.zeros(3), level=95)
