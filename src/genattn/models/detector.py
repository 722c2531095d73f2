"""Faster R-CNN + FPN assembled like torchvision's ``GeneralizedRCNN``, with MMDetection's parts and names.

The model is ``transform -> backbone -> neck (FPN) -> rpn_head -> roi_head`` and its attribute names are
MMDetection's (``backbone``, ``neck``, ``rpn_head``, ``roi_head.bbox_head``), so that an MMDetection state dict
maps onto ours with a handful of documented renames (see ``convert.py``). Unlike torchvision's detectors it
speaks dataset *category ids* at its boundary: targets carry category ids (e.g. COCO's 1..90) and detections
come back with them; internally classes are the contiguous indices of ``category_ids``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genattn.models.roi_heads import RoIHead
from genattn.models.rpn import RPNHead
from genattn.models.transform import DetectionTransform, padded_size

__all__ = ["FPN", "FasterRCNN"]


class FPN(nn.Module):
    """MMDetection's FPN with ``num_outs=5`` and no extra convs.

    Written out rather than taken from ``torchvision.ops.FeaturePyramidNetwork`` so the module names are
    MMDetection's (``lateral_convs.i``, ``fpn_convs.i``; MMDetection wraps each conv in a ``.conv`` attribute,
    which the converter drops) and the initialisation is MMDetection's (Xavier uniform). The computation is the
    same: 1x1 laterals, nearest upsampling to the finer map's size, 3x3 output convs, all with bias, and the extra
    level P6 = ``max_pool2d(P5, kernel_size=1, stride=2)``.

    Args:
        in_channels: Channels of C2..C5.
        out_channels: Channels of every output level (256).
        num_outs: Output levels (5: P2..P6).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, num_outs: int = 5) -> None:
        super().__init__()
        if num_outs < len(in_channels):
            raise ValueError(f"num_outs must be >= {len(in_channels)}, got {num_outs}")
        self.num_outs = num_outs
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """``[C2..C5]`` (``[N, C_l, H/s_l, W/s_l]``) -> ``num_outs`` maps ``[N, out_channels, H_l, W_l]``,
        fine to coarse."""
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs


def _check_targets(targets: Sequence[dict[str, Tensor]], num_images: int) -> None:
    if len(targets) != num_images:
        raise ValueError(f"targets: got {len(targets)} targets for {num_images} images")
    for i, t in enumerate(targets):
        if not isinstance(t, dict):
            raise ValueError(f"targets[{i}]: expected a dict, got {type(t).__name__}")
        for key in ("boxes", "labels"):
            if key not in t or not isinstance(t[key], Tensor):
                raise ValueError(f"targets[{i}]['{key}']: missing or not a tensor")
        boxes, labels = t["boxes"], t["labels"]
        if boxes.dim() != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
            raise ValueError(f"targets[{i}]['boxes']: expected a float [K, 4] tensor, got {boxes.dtype} "
                             f"{list(boxes.shape)}")
        if not torch.isfinite(boxes).all():
            raise ValueError(f"targets[{i}]['boxes']: contains non-finite values")
        if ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
            raise ValueError(f"targets[{i}]['boxes']: boxes with negative width or height (expected x1<=x2, y1<=y2)")
        if labels.dtype != torch.int64 or labels.dim() != 1:
            raise ValueError(f"targets[{i}]['labels']: expected an int64 [K] tensor, got {labels.dtype} "
                             f"{list(labels.shape)}")
        if labels.shape[0] != boxes.shape[0]:
            raise ValueError(f"targets[{i}]: {boxes.shape[0]} boxes but {labels.shape[0]} labels")
        if not isinstance(t.get("flip", False), bool):
            raise ValueError(f"targets[{i}]['flip']: expected a bool, got {type(t['flip']).__name__}")


def _drop_empty_boxes(target: dict[str, Tensor]) -> dict[str, Tensor]:
    # A zero-size box (given so, or clipped to nothing by the resize) cannot be matched: its IoU with itself is 0/0.
    b = target["boxes"]
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    return dict(target, boxes=b[keep], labels=target["labels"][keep])


class FasterRCNN(nn.Module):
    """Faster R-CNN with FPN (MMDetection's ``FasterRCNN`` + ``FPN`` + ``RPNHead`` + ``StandardRoIHead``).

    Args:
        backbone: Returns ``[C2, C3, C4, C5]`` (e.g. :class:`genattn.models.resnet.ResNet`).
        neck: The FPN.
        rpn_head: Proposals and RPN losses.
        roi_head: Box head, RoI losses and detections.
        transform: Resize / normalise / pad.
        category_ids: Dataset category id of each contiguous class (length = ``roi_head.bbox_head.num_classes``).
        class_names: A name per class.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, rpn_head: RPNHead, roi_head: RoIHead,
                 transform: DetectionTransform, category_ids: Sequence[int], class_names: Sequence[str]) -> None:
        super().__init__()
        num_classes = roi_head.bbox_head.num_classes
        if len(category_ids) != num_classes or len(set(category_ids)) != num_classes:
            raise ValueError(f"category_ids: expected {num_classes} distinct ids, got {len(category_ids)} "
                             f"({len(set(category_ids))} distinct)")
        if len(class_names) != num_classes:
            raise ValueError(f"class_names: expected {num_classes} names, got {len(class_names)}")
        self.transform = transform
        self.backbone = backbone
        self.neck = neck
        self.rpn_head = rpn_head
        self.roi_head = roi_head
        self.category_ids = tuple(int(c) for c in category_ids)
        self.class_names = tuple(str(n) for n in class_names)
        self._index_of = {c: i for i, c in enumerate(self.category_ids)}

    def _to_indices(self, targets: Sequence[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        out = []
        for i, t in enumerate(targets):
            ids = t["labels"].tolist()
            unknown = sorted({c for c in ids if c not in self._index_of})
            if unknown:
                raise ValueError(f"targets[{i}]['labels']: category ids {unknown} are not in the model's "
                                 f"category_ids")
            t = dict(t)
            t["labels"] = torch.tensor([self._index_of[c] for c in ids], dtype=torch.long, device=t["boxes"].device)
            out.append(t)
        return out

    def forward(self, images: Sequence[Tensor] | Tensor, targets: Sequence[dict[str, Tensor]] | None = None
                ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training mode, detections in eval mode.

        Args:
            images: ``N`` tensors ``[3, H_i, W_i]`` (or one ``[N, 3, H, W]`` tensor), RGB, uint8 as decoded
                (resized and normalised exactly as MMDetection does) or float in [0, 1] (float resize, close).
            targets: Training only: per image ``{'boxes': float [K, 4] xyxy pixels of that image,
                'labels': int64 [K] category ids}``, ``K = 0`` allowed, and optionally ``'flip': bool``: train on
                the image flipped left-right after resizing (MMDetection's RandomFlip; see ``transform``).

        Returns:
            Training: ``{'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox'}`` (scalars).
            Eval: per image ``{'boxes': [D, 4] xyxy in that image's pixels, 'scores': [D],
            'labels': int64 [D] category ids}``, best first, ``D <= detections_per_img``.
        """
        if isinstance(images, Tensor):
            if images.dim() != 4:
                raise ValueError(f"images: expected a list of [3, H, W] tensors or a [N, 3, H, W] tensor, "
                                 f"got shape {list(images.shape)}")
            images = list(images.unbind(0))
        images = list(images)
        if self.training:
            if targets is None:
                raise ValueError("targets: required in training mode")
            _check_targets(targets, len(images))
            targets = self._to_indices(targets)
        batch, targets = self.transform(images, targets if self.training else None)
        if targets is not None:
            targets = [_drop_empty_boxes(t) for t in targets]
        features = self.neck(self.backbone(batch.tensors))
        padded = [padded_size(h, w, self.transform.size_divisor) for h, w in batch.image_sizes]  # per image
        proposals, rpn_losses = self.rpn_head(features, batch.image_sizes, targets, padded)
        scale_factors = [batch.scale_factors(i) for i in range(len(images))]
        detections, roi_losses = self.roi_head(features, proposals, batch.image_sizes, targets, scale_factors)
        if self.training:
            return {**rpn_losses, **roi_losses}
        ids = torch.tensor(self.category_ids, dtype=torch.long)
        for det in detections:
            det["labels"] = ids.to(det["labels"].device)[det["labels"]]
        return detections
