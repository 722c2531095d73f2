"""RoI feature extraction and the two-FC box head of MMDetection's Faster R-CNN.

torchvision's ``MultiScaleRoIAlign`` cannot be used as is: it calls ``roi_align`` with ``aligned=False``, and
MMDetection's released models were trained with ``aligned=True`` (half-pixel offset). The level mapping is
the same rule (``floor(log2(sqrt(w*h) / 56))``, clamped to the four levels). The box head keeps MMDetection's
layout — background as the *last* class logit, class-specific regression without a background slot,
L1 loss, losses divided by the number of sampled RoIs — and its module names (``shared_fcs``, ``fc_cls``,
``fc_reg``) so checkpoints map one to one.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.ops import box_iou, roi_align

from genattn.models.anchors import DeltaXYWHBoxCoder, max_iou_assign
from genattn.models.nms import batched_nms

__all__ = ["MultiLevelRoIAlign", "BBoxHead", "RoIHead"]


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign on the FPN level chosen by box size (MMDetection's ``SingleRoIExtractor``).

    Args:
        strides: Strides of the levels used (4, 8, 16, 32: P6 is not used).
        output_size: Pooled size (7).
        sampling_ratio: Samples per bin side; 0 = adaptive (``ceil(roi_size / output_size)``).
        finest_scale: Boxes with ``sqrt(area) < 2 * finest_scale`` go to the first level (56).
    """

    def __init__(self, strides: Sequence[int] = (4, 8, 16, 32), output_size: int = 7, sampling_ratio: int = 0,
                 finest_scale: float = 56.0) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.finest_scale = finest_scale

    def map_levels(self, boxes: Tensor) -> Tensor:
        """Level index of each ``[R, 4]`` box: ``floor(log2(sqrt(w*h) / finest_scale + 1e-6))`` in 0..L-1."""
        scale = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
        levels = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return levels.clamp(0, len(self.strides) - 1).long()

    def forward(self, features: list[Tensor], rois: Tensor) -> Tensor:
        """Pool RoI features.

        Args:
            features: At least ``len(strides)`` levels ``[N, C, H_l, W_l]``; the first ``len(strides)`` are used.
            rois: ``[R, 5]`` rows ``(batch index, x1, y1, x2, y2)`` in padded-input pixels.

        Returns:
            ``[R, C, output_size, output_size]`` in the features' dtype.
        """
        c = features[0].shape[1]
        # Pool in float32 under autocast (RoI coordinates need it; MMDetection's RoIAlign is fp32 too).
        dtype = torch.float32 if features[0].dtype in (torch.float16, torch.bfloat16) else features[0].dtype
        rois = rois.to(dtype)
        out = rois.new_zeros((rois.shape[0], c, self.output_size, self.output_size))
        levels = self.map_levels(rois[:, 1:])
        for lvl, stride in enumerate(self.strides):
            idx = torch.nonzero(levels == lvl).squeeze(1)  # may be empty: roi_align takes no boxes
            out[idx] = roi_align(features[lvl].to(dtype), rois[idx], self.output_size, spatial_scale=1.0 / stride,
                                 sampling_ratio=self.sampling_ratio, aligned=True)
        # Back in the features' dtype: a bfloat16 / half model's box head takes its own dtype (under autocast
        # the head's linear layers cast their input anyway).
        return out.to(features[0].dtype)


class BBoxHead(nn.Module):
    """MMDetection's ``Shared2FCBBoxHead``: two shared FCs, a classifier and class-specific box regression.

    Args:
        in_channels: Channels of the pooled features.
        roi_size: Pooled size.
        representation_size: Width of the two FCs (1024).
        num_classes: Foreground classes; ``fc_cls`` has ``num_classes + 1`` outputs, background **last**;
            ``fc_reg`` has ``4 * num_classes`` (no background slot).
    """

    def __init__(self, in_channels: int = 256, roi_size: int = 7, representation_size: int = 1024,
                 num_classes: int = 80) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.shared_fcs = nn.ModuleList([nn.Linear(in_channels * roi_size * roi_size, representation_size),
                                         nn.Linear(representation_size, representation_size)])
        self.fc_cls = nn.Linear(representation_size, num_classes + 1)
        self.fc_reg = nn.Linear(representation_size, 4 * num_classes)
        for fc in self.shared_fcs:  # MMDetection's initialisation
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.normal_(self.fc_reg.weight, std=0.001)
        nn.init.zeros_(self.fc_cls.bias)
        nn.init.zeros_(self.fc_reg.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [R, C, S, S]`` -> class logits ``[R, num_classes + 1]`` and deltas ``[R, 4 * num_classes]``."""
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


class RoIHead(nn.Module):
    """Second stage: sample RoIs, pool, classify and refine; MMDetection's ``StandardRoIHead`` settings.

    Args:
        bbox_roi_extractor: RoI pooling.
        bbox_head: The box head.
        fg_iou_thresh, bg_iou_thresh: RoI assignment (0.5, 0.5; no low-quality matches).
        batch_size_per_image, positive_fraction: RoI sampling (512, 0.25); ground truth is added as proposals.
        bbox_reg_stds: Coder stds (0.1, 0.1, 0.2, 0.2), the inverse of torchvision's weights (10, 10, 5, 5).
        score_thresh: Test score threshold (> 0.05).
        nms_thresh: Class-wise NMS IoU (0.5).
        detections_per_img: At most this many detections (100).
    """

    def __init__(self, bbox_roi_extractor: MultiLevelRoIAlign, bbox_head: BBoxHead, *, fg_iou_thresh: float = 0.5,
                 bg_iou_thresh: float = 0.5, batch_size_per_image: int = 512, positive_fraction: float = 0.25,
                 bbox_reg_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2), score_thresh: float = 0.05,
                 nms_thresh: float = 0.5, detections_per_img: int = 100) -> None:
        super().__init__()
        self.bbox_roi_extractor = bbox_roi_extractor
        self.bbox_head = bbox_head
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_thresh = bg_iou_thresh
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.box_coder = DeltaXYWHBoxCoder(stds=bbox_reg_stds)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img

    @staticmethod
    def _rois(boxes: list[Tensor]) -> Tensor:
        """Per-image boxes -> ``[R, 5]`` rows ``(image index, x1, y1, x2, y2)``."""
        return torch.cat([torch.cat([b.new_full((b.shape[0], 1), i), b], 1) for i, b in enumerate(boxes)])

    def forward(self, features: list[Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None,
                scale_factors: Sequence[tuple[float, float] | Tensor] | None = None) -> tuple[list[dict[str, Tensor]], dict]:
        """Losses in training, detections otherwise.

        Args:
            features: FPN levels ``[N, C, H_l, W_l]``.
            proposals: Per image ``[P_i, 4]`` in resized-image pixels.
            image_sizes: ``(h, w)`` of each resized image (decoded boxes are clipped to it).
            targets: In training, per image ``'boxes' [K, 4]`` (resized pixels) and ``'labels' [K]`` contiguous
                class indices in ``[0, num_classes)``.
            scale_factors: Per image ``(w_scale, h_scale)`` (or a float64 tensor of the two); at test time boxes are divided by them *before* NMS,
                as MMDetection does, so detections come out in original-image pixels.

        Returns:
            ``(detections, losses)``: detections per image ``{'boxes' [D, 4], 'scores' [D], 'labels' [D]}``
            (contiguous class indices; empty list in training), losses ``{'loss_cls', 'loss_bbox'}`` (training).
        """
        if self.training:
            if targets is None:
                raise ValueError("targets: required in training mode")
            return [], self._losses(features, proposals, targets)
        rois = self._rois(proposals)
        logits, deltas = self.bbox_head(self.bbox_roi_extractor(features, rois))
        # Box arithmetic in at least float32 even under autocast (float64 stays float64: NMS needs one dtype).
        box_dtype = torch.promote_types(logits.dtype, torch.float32)
        logits, deltas = logits.to(box_dtype), deltas.to(box_dtype)
        proposals = [p.to(box_dtype) for p in proposals]
        results, start = [], 0
        for i, props in enumerate(proposals):
            # Slices rather than split(counts): the counts are data-dependent sizes in an exported graph.
            end = start + props.shape[0]
            sf = scale_factors[i] if scale_factors is not None else (1.0, 1.0)
            results.append(self._detect(logits[start:end], deltas[start:end], props, image_sizes[i], sf))
            start = end
        return results, {}

    # Under torch.compile the post-processing runs eagerly: it is data-dependent (the score threshold, NMS) and
    # each image's float scale factor would specialise a compiled graph (a recompile per image size).
    @torch.compiler.disable
    def _detect(self, logits: Tensor, deltas: Tensor, proposals: Tensor, image_size: tuple[int, int],
                scale_factor: tuple[float, float] | Tensor) -> dict[str, Tensor]:
        c = self.bbox_head.num_classes
        scores = F.softmax(logits, dim=-1)[:, :c]  # drop background (last)
        boxes = self.box_coder.decode(proposals, deltas, max_shape=image_size).reshape(-1, c, 4)
        # MMDetection holds the scale factor in float32: the float64 ratio rounded to the boxes' dtype.
        scale = torch.as_tensor(scale_factor, dtype=torch.float64).to(boxes).repeat(2)
        boxes = boxes / scale
        labels = torch.arange(c, device=boxes.device).expand(boxes.shape[0], c)
        keep = scores > self.score_thresh
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}

    def _losses(self, features: list[Tensor], proposals: list[Tensor], targets: list[dict[str, Tensor]]
                ) -> dict[str, Tensor]:
        c = self.bbox_head.num_classes
        assigned, sampled_boxes, gt_boxes, gt_labels = [], [], [], []
        for props, t in zip(proposals, targets):
            gt = t["boxes"].to(props)
            cand = torch.cat([gt, props])  # ground truth first, as MMDetection's add_gt_as_proposals
            lab, idx = max_iou_assign(box_iou(gt, cand), self.fg_iou_thresh, self.bg_iou_thresh,
                                      self.fg_iou_thresh, False)
            # Each added ground truth is a positive of itself (MMDetection's add_gt_), even if it duplicates another.
            lab[: gt.shape[0]] = 1
            idx[: gt.shape[0]] = torch.arange(gt.shape[0], device=idx.device)
            assigned.append((lab, idx))
            sampled_boxes.append(cand)
            gt_boxes.append(gt)
            gt_labels.append(t["labels"])
        pos_masks, neg_masks = self.sampler([a[0] for a in assigned])
        rois, cls_targets, reg_targets, pos_flags = [], [], [], []
        for (lab, idx), cand, gt, gl, pos, neg in zip(assigned, sampled_boxes, gt_boxes, gt_labels, pos_masks,
                                                      neg_masks):
            pos, neg = pos.bool(), neg.bool()
            keep = torch.cat([torch.nonzero(pos).squeeze(1), torch.nonzero(neg).squeeze(1)])  # positives first
            boxes = cand[keep]
            is_pos = pos[keep]
            labels = torch.full((keep.numel(),), c, dtype=torch.long, device=cand.device)  # background = C
            reg = torch.zeros_like(boxes)
            if is_pos.any():
                matched = idx[keep][is_pos]
                labels[is_pos] = gl.to(labels.device)[matched]
                reg[is_pos] = self.box_coder.encode(boxes[is_pos], gt[matched])
            rois.append(boxes)
            cls_targets.append(labels)
            reg_targets.append(reg)
            pos_flags.append(is_pos)
        logits, deltas = self.bbox_head(self.bbox_roi_extractor(features, self._rois(rois)))
        # Losses in at least float32 even under autocast.
        box_dtype = torch.promote_types(logits.dtype, torch.float32)
        logits, deltas = logits.to(box_dtype), deltas.to(box_dtype)
        labels = torch.cat(cls_targets)
        reg = torch.cat(reg_targets)
        is_pos = torch.cat(pos_flags)
        num = max(labels.numel(), 1)  # MMDetection's avg_factor: every sampled RoI, for both losses
        loss_cls = F.cross_entropy(logits, labels, reduction="sum") / num
        if is_pos.any():
            pos_deltas = deltas.reshape(deltas.shape[0], c, 4)[is_pos, labels[is_pos]]
            loss_bbox = (pos_deltas - reg[is_pos]).abs().sum() / num
        else:
            loss_bbox = deltas[is_pos].sum()
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}

