"""How much box AP depends on which validation images were drawn: a bootstrap over the images.

One pycocotools per-image evaluation (``COCOeval.evaluate``: every image's detections matched to its ground truth
at each IoU threshold) is computed once and kept as :class:`ImageMatches`; box AP is then recomputed from those
per-image results for many resamples of the images (drawn with replacement, an image drawn twice counting twice),
without running the detector or the matching again. :func:`box_ap` with every image counted once is
pycocotools' AP (IoU 0.50:0.95, all areas, 100 detections per image), which the tests check.

The resamples depend only on the seed and the number of images, so two models evaluated on the same images are
resampled identically: their per-resample APs are paired, and the interval of their difference
(:func:`difference_interval`) says whether the difference exceeds the noise of the validation set. This is the
noise of a finite validation set only: training the same model again (another seed, another schedule) moves its
AP as well, and no interval here includes that.

Intervals are percentile intervals. For a weak detector the resampled APs sit somewhat above the point estimate
(interpolated precision keeps the best precision at each recall, and resampling adds noise to the curve), so its
interval leans upward; in a paired difference of two models this largely cancels.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["ImageMatches", "image_matches", "box_ap", "bootstrap_ap", "percentile_interval",
           "difference_interval"]


@dataclass(frozen=True)
class _ClassMatches:
    """One category's detections over all images, in pycocotools' accumulation order (score, descending)."""

    image: np.ndarray  # [D] index of each detection's image
    tp: np.ndarray  # [T, D] matched to a ground-truth box that counts
    fp: np.ndarray  # [T, D] unmatched and not ignored
    gt: np.ndarray  # [I] ground-truth boxes that count, per image


@dataclass(frozen=True)
class ImageMatches:
    """A COCO evaluation's per-image results, enough to recompute box AP for any weighting of the images.

    Attributes:
        image_ids: the evaluated images, sorted (the order of the weights).
        classes: per category with at least one evaluated image, its matches.
        recall_points: pycocotools' recall thresholds (101 points).
    """

    image_ids: tuple[int, ...]
    classes: tuple[_ClassMatches, ...]
    recall_points: np.ndarray

    @property
    def num_images(self) -> int:
        return len(self.image_ids)


def image_matches(coco_gt: COCO, results: list[dict], *, img_ids: Sequence[int] | None = None) -> ImageMatches:
    """Run pycocotools' per-image matching once and keep what box AP needs.

    Args:
        coco_gt: ground truth.
        results: COCO result entries (``image_id``, ``category_id``, ``bbox`` xywh, ``score``), e.g. the detections
            file an evaluation wrote.
        img_ids: the evaluated images (default: all of ``coco_gt``); images without results count as misses.
    """
    img_ids = sorted(set(coco_gt.getImgIds() if img_ids is None else img_ids))
    points = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
    if not results:
        return ImageMatches(tuple(img_ids), (), points)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        ev.params.imgIds = img_ids
        ev.evaluate()
    p = ev.params
    num_areas, num_images, max_det = len(p.areaRng), len(p.imgIds), p.maxDets[-1]
    classes = []
    for k in range(len(p.catIds)):
        # area range 0 is 'all'; entries are None where an image has neither boxes nor detections of the class
        entries = [(i, e) for i in range(num_images) if (e := ev.evalImgs[(k * num_areas) * num_images + i])]
        if not entries:
            continue
        scores = np.concatenate([np.asarray(e["dtScores"][:max_det], dtype=np.float64) for _, e in entries])
        order = np.argsort(-scores, kind="mergesort")  # pycocotools' order, ties included
        image = np.concatenate([np.full(len(e["dtScores"][:max_det]), i) for i, e in entries]).astype(np.int64)
        matched = np.concatenate([e["dtMatches"][:, :max_det] for _, e in entries], axis=1)[:, order] != 0
        ignored = np.concatenate([e["dtIgnore"][:, :max_det] for _, e in entries], axis=1)[:, order].astype(bool)
        gt = np.zeros(num_images)
        for i, e in entries:
            gt[i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
        classes.append(_ClassMatches(image[order], matched & ~ignored, ~matched & ~ignored, gt))
    return ImageMatches(tuple(int(i) for i in p.imgIds), tuple(classes), np.asarray(p.recThrs))


def _class_precision(c: _ClassMatches, weights: np.ndarray, points: np.ndarray) -> np.ndarray | None:
    """[T, R] interpolated precision at the recall points, or None when no counted box has weight."""
    gt = float(c.gt @ weights)
    if gt == 0:
        return None
    w = weights[c.image]
    tp, fp = np.cumsum(c.tp * w, axis=1), np.cumsum(c.fp * w, axis=1)
    out = np.zeros((tp.shape[0], len(points)))
    if tp.shape[1] == 0:
        return out
    recall = tp / gt
    precision = tp / (tp + fp + np.spacing(1))
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]  # best precision at this recall or more
    for t in range(tp.shape[0]):
        index = np.searchsorted(recall[t], points, side="left")
        reached = index < tp.shape[1]
        out[t, reached] = precision[t, index[reached]]
    return out


def box_ap(matches: ImageMatches, weights: np.ndarray | None = None) -> float:
    """Box AP (IoU 0.50:0.95, all areas, 100 detections) with image ``i`` counted ``weights[i]`` times.

    Unit weights give pycocotools' AP. A category counts only where some weighted image has its boxes, as in
    pycocotools; NaN when none does.
    """
    weights = np.ones(matches.num_images) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape != (matches.num_images,):
        raise ValueError(f"box_ap: {weights.shape[0] if weights.ndim else 0} weights for {matches.num_images} "
                         "images")
    if not matches.classes:  # no detections at all
        return 0.0
    per_class = [q for c in matches.classes if (q := _class_precision(c, weights, matches.recall_points)) is not None]
    return float(np.mean(per_class)) if per_class else float("nan")


def bootstrap_ap(matches: ImageMatches, *, samples: int = 1000, seed: int = 0) -> np.ndarray:
    """Box AP of ``samples`` resamples of the images (with replacement, as many as there are images).

    The resamples depend only on ``seed`` and the number of images, so the results of two models evaluated on
    the same images are paired resample by resample.
    """
    if samples < 1:
        raise ValueError(f"bootstrap_ap: samples must be >= 1, got {samples}")
    rng = np.random.default_rng(seed)
    n = matches.num_images
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=samples) if n else np.zeros((samples, 0))
    return np.array([box_ap(matches, w) for w in counts])


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap values (percentile method; NaN resamples left out)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def difference_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The interval of AP(a) - AP(b) from two models' paired resamples (:func:`bootstrap_ap`, same seed)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"difference_interval needs paired resamples of equal number, got {a.size} and {b.size}")
    return percentile_interval(a - b, level)
