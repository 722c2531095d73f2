"""Low precision: bf16 / fp16 autocast and bf16 / half models against float32 detections of a trained tiny model.

Cost: the session's tiny training (shared, see conftest) and about 20 forward passes of a tiny model.
"""

import copy

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from genattn.engine.evaluate import autocast
from trained_tiny import picture

# Which of two overlapping boxes survives the NMS, and which anchors make the RPN's top-1000 cut, change with
# the rounding of the scores (bfloat16 keeps 8 bits of mantissa), and this briefly trained model has many
# overlapping candidates of similar score; so agreement is checked per object (the drawn rectangles): every
# object that float32 finds (its best detection scoring >= 0.5 with IoU >= 0.5, whatever class that detection
# gives) is found at low precision with that class (IoU >= 0.5, score >= 0.4), and the best score of an image
# moves by at most 0.06 (measured worst: 0.03, bf16 autocast).
FOUND_SCORE, KEPT_SCORE, FOUND_IOU, TOP_SCORE = 0.5, 0.4, 0.5, 0.06


def _images():
    rng = np.random.default_rng(11)
    return [picture(rng, size, noise=12) for size in ((96, 128), (120, 90), (160, 200))]


def _detect(model, image, amp="none"):
    with torch.no_grad(), autocast(torch.device("cpu"), amp):
        return model([image])[0]


def _assert_agrees(ref, out, target) -> int:
    """Checks one image; returns how many objects float32 found in it."""
    assert out["boxes"].dtype == torch.float32 and out["labels"].dtype == torch.int64
    keep = ref["scores"] >= FOUND_SCORE
    hits = box_iou(target["boxes"], ref["boxes"][keep]) >= FOUND_IOU  # [objects, detections]
    best = ref["scores"][keep][None].expand_as(hits).masked_fill(~hits, -1).argmax(1)
    found, classes = hits.any(1), ref["labels"][keep][best] if keep.any() else target["labels"]
    keep = out["scores"] >= KEPT_SCORE
    again = (box_iou(target["boxes"], out["boxes"][keep]) >= FOUND_IOU) & (
        out["labels"][keep][None, :] == classes[:, None])
    assert (again.any(1) | ~found).all()
    assert abs(float(out["scores"].max() - ref["scores"].max())) <= TOP_SCORE
    return int(found.sum())


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_agrees_with_float32(trained_detector, amp):
    model, _ = trained_detector
    found = sum(_assert_agrees(_detect(model, image), _detect(model, image, amp), target)
                for image, target in _images())
    assert found >= 2  # the comparison is not empty


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_models_run_and_agree(trained_detector, dtype):
    model, _ = trained_detector
    low = copy.deepcopy(model).to(dtype)
    found = 0
    for image, target in _images():
        found += _assert_agrees(_detect(model, image), _detect(low, image), target)
        _detect(low, image.float() / 255)  # float images follow the model's dtype
    assert found >= 2


def test_amp_settings_are_checked(monkeypatch):
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="expected one of none, bf16, fp16"):
        autocast(cpu, "fp8")
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    with pytest.raises(ValueError, match="no autocast for device type 'cpu'"):
        autocast(cpu, "bf16")
