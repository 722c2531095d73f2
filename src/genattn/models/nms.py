"""Class-wise (grouped) NMS as mmcv's ``batched_nms`` computes it, in one form for eager, compile and export.

torchvision's ``batched_nms`` switches on the number of boxes (above 4,000 coordinates on a CPU it runs one NMS
per group and re-sorts, below it shifts the groups apart and runs one NMS) and returns early on an empty input:
both are Python branches on data, which ``torch.export`` cannot follow with dynamic shapes. mmcv (MMDetection's
post-processing) shifts the groups apart below 10,000 boxes, which is every case a detector meets at its
default settings (at most 1,000 proposals x classes over the score threshold, typically far fewer), so this
module always shifts, with mmcv's offset ``group * (max coordinate + 1)``.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor

__all__ = ["batched_nms", "nms"]


@torch.library.custom_op("genattn::nms", mutates_args=())
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """``torchvision.ops.nms`` as genattn's own operator, for its shape rule in traced graphs (below).

    torchvision's fake implementation of ``torchvision::nms`` makes the number of kept boxes with
    ``create_unbacked_symint()``, whose lower bound is 2: an exported graph then asserts that NMS keeps at least
    two boxes and fails at run time on an image with fewer detections. Replacing that rule on torchvision's
    operator is refused by torch 2.9 (torchvision names the module of its fake implementations), and would change
    torchvision for everyone in the process; an operator of our own changes nothing else. ONNX export translates
    it to ``NonMaxSuppression`` as torchvision's (:mod:`genattn.models.export`).
    """
    return torchvision.ops.nms(boxes, scores, iou_threshold)


@nms.register_fake
def _nms_fake(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    torch._check(boxes.dim() == 2 and boxes.size(1) == 4, lambda: f"boxes: expected [K, 4], got {boxes.shape}")
    torch._check(scores.dim() == 1 and scores.size(0) == boxes.size(0),
                 lambda: f"scores: expected [{boxes.size(0)}], got {scores.shape}")
    count = torch.library.get_ctx().new_dynamic_size()  # 0 or more
    return boxes.new_empty(count, dtype=torch.long)


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each group (class or level) in one call: indices of the kept boxes, best score first.

    Args:
        boxes: ``[K, 4]`` xyxy with non-negative coordinates (boxes clipped to an image).
        scores: ``[K]``.
        groups: ``[K]`` integer group of each box; boxes of different groups never suppress each other.
        iou_threshold: a box is dropped when its IoU with a better box of its group exceeds this.

    Returns:
        int64 ``[D]`` indices into ``boxes``, by decreasing score.
    """
    # The zero keeps max() defined on an empty input without a branch; it leaves the maximum of clipped
    # (non-negative) boxes unchanged.
    max_coordinate = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    shifted = boxes + (groups.to(boxes) * (max_coordinate + 1))[:, None]
    return nms(shifted, scores, iou_threshold)
