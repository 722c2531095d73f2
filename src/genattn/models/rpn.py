"""Region proposal network with MMDetection's sigmoid RPN head, proposal selection and losses.

Differs from torchvision's ``RegionProposalNetwork`` where MMDetection differs: anchors (see ``anchors.py``),
IoU assignment with ``min_pos_iou`` (``max_iou_assign``), an L1 box loss (torchvision: smooth L1 with beta 1/9)
and both losses divided by the number of sampled anchors (torchvision divides the box loss by the sampled count
too, but MMDetection counts at least one positive and one negative per image), box decoding clamped from both
sides, training on the anchors over each image's own padded area only (MMDetection's ``valid_flags``; the rest
of a padded batch is neither positive nor negative), and proposals chosen as MMDetection v2 does (per-level
top-k, NMS across levels with the level as the NMS group, then the best ``post_nms_top_n`` overall).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.ops import box_iou

from genattn.models.anchors import AnchorGenerator, DeltaXYWHBoxCoder, max_iou_assign
from genattn.models.nms import batched_nms

__all__ = ["RPNHead"]


class RPNHead(nn.Module):
    """MMDetection's ``RPNHead`` (one shared 3x3 conv, sigmoid objectness) with proposal generation and losses.

    Parameter names follow MMDetection (``rpn_conv``, ``rpn_cls``, ``rpn_reg``) so checkpoints map one to one.

    Args:
        in_channels: Channels of every FPN level.
        anchor_generator: Anchors per level (default: MMDetection's strides 4..64, scale 8, ratios 0.5/1/2).
        pre_nms_top_n_train, pre_nms_top_n_test: Proposals kept per level before NMS (2000 / 1000).
        post_nms_top_n_train, post_nms_top_n_test: Proposals kept per image after NMS (1000 / 1000).
        nms_thresh: IoU threshold of the proposal NMS (0.7).
        fg_iou_thresh, bg_iou_thresh, min_pos_iou: Anchor assignment thresholds (0.7, 0.3, 0.3).
        batch_size_per_image, positive_fraction: Anchor sampling for the losses (256, 0.5).
        min_box_size: Proposals with a side ``<=`` this are dropped before NMS (MMDetection v2.18+ with 0: only
            empty boxes).
    """

    def __init__(
        self,
        in_channels: int = 256,
        anchor_generator: AnchorGenerator | None = None,
        *,
        pre_nms_top_n_train: int = 2000,
        pre_nms_top_n_test: int = 1000,
        post_nms_top_n_train: int = 1000,
        post_nms_top_n_test: int = 1000,
        nms_thresh: float = 0.7,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        min_pos_iou: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        min_box_size: float = 0.0,
    ) -> None:
        super().__init__()
        self.anchor_generator = anchor_generator or AnchorGenerator()
        a = self.anchor_generator.num_anchors_per_location
        self.rpn_conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(in_channels, a, 1)  # sigmoid: one logit per anchor, no background slot
        self.rpn_reg = nn.Conv2d(in_channels, a * 4, 1)
        for conv in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            nn.init.normal_(conv.weight, std=0.01)  # MMDetection's RPN init
            nn.init.zeros_(conv.bias)
        self.pre_nms_top_n = {"train": pre_nms_top_n_train, "test": pre_nms_top_n_test}
        self.post_nms_top_n = {"train": post_nms_top_n_train, "test": post_nms_top_n_test}
        self.nms_thresh = nms_thresh
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_thresh = bg_iou_thresh
        self.min_pos_iou = min_pos_iou
        self.min_box_size = min_box_size
        self.box_coder = DeltaXYWHBoxCoder()
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)

    def head(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Raw outputs per level: objectness ``[N, A, H, W]`` and deltas ``[N, 4A, H, W]``."""
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.rpn_conv(x))
            logits.append(self.rpn_cls(t))
            deltas.append(self.rpn_reg(t))
        return logits, deltas

    def forward(
        self,
        features: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
        padded_sizes: list[tuple[int, int]] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals (and losses when training).

        Args:
            features: FPN levels ``[N, C, H_l, W_l]``, one per anchor stride.
            image_sizes: ``(h, w)`` of each resized, unpadded image (proposals are clipped to it).
            targets: In training, per image ``'boxes' [K, 4]`` in resized-image pixels.
            padded_sizes: In training, ``(h, w)`` of each image padded to the size divisor (MMDetection's
                ``pad_shape``): only anchors over it are trained (:meth:`AnchorGenerator.valid_flags`). None:
                every anchor of the batch.

        Returns:
            ``proposals``: per image ``[P_i, 4]`` xyxy (detached, best first) and a dict with ``'loss_rpn_cls'``
            and ``'loss_rpn_bbox'`` (empty when not training).
        """
        logits, deltas = self.head(features)
        n = features[0].shape[0]
        # Box arithmetic in float32 even under autocast (MMDetection's force_fp32): half precision cannot hold
        # pixel coordinates of an 800x1333 image to better than ~0.5 px.
        # At least float32, not exactly float32: a float64 model keeps float64 (NMS needs boxes and scores in one
        # dtype, and the anchors must follow).
        box_dtype = torch.promote_types(features[0].dtype, torch.float32)
        anchors = self.anchor_generator([tuple(f.shape[-2:]) for f in features], box_dtype, features[0].device)
        # [N, A, H, W] -> [N, H*W*A]: location-major, anchor-minor, as the anchors are laid out.
        flat_logits = [t.permute(0, 2, 3, 1).reshape(n, -1).to(box_dtype) for t in logits]
        flat_deltas = [t.permute(0, 2, 3, 1).reshape(n, -1, 4).to(box_dtype) for t in deltas]
        mode = "train" if self.training else "test"
        proposals = [
            self._proposals([t[i].detach() for t in flat_logits], [t[i].detach() for t in flat_deltas], anchors,
                            image_sizes[i], mode)
            for i in range(n)
        ]
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("targets: required in training mode")
            sizes = [tuple(f.shape[-2:]) for f in features]
            valid = [self.anchor_generator.valid_flags(sizes, padded_sizes[i], features[0].device)
                     if padded_sizes is not None else None for i in range(n)]
            losses = self._losses(torch.cat(flat_logits, 1), torch.cat(flat_deltas, 1), torch.cat(anchors), targets,
                                  valid)
        return proposals, losses

    def _proposals(self, logits: list[Tensor], deltas: list[Tensor], anchors: list[Tensor],
                   image_size: tuple[int, int], mode: str) -> Tensor:
        scores, boxes, levels = [], [], []
        k = self.pre_nms_top_n[mode]
        for lvl, (s, d, a) in enumerate(zip(logits, deltas, anchors)):
            s = s.sigmoid()
            # Above k candidates, a full descending sort, then the first k, as MMDetection does: topk breaks ties
            # between equal scores (e.g. anchors over constant image regions or padding) differently, so the kept
            # set at the k-th place could differ from MMDetection's. At or below k, MMDetection keeps the anchor
            # order (which orders equal scores in the NMS). Chosen with a where rather than an if so that the
            # choice follows the image size in an exported graph.
            if k > 0:
                order = s.sort(descending=True)[1]
                large = torch.scalar_tensor(s.shape[0], device=s.device) > k
                idx = torch.where(large, order, torch.arange(s.shape[0], device=s.device))[:k]
                s, d, a = s[idx], d[idx], a[idx]
            scores.append(s)
            boxes.append(self.box_coder.decode(a, d, max_shape=image_size))
            levels.append(torch.full_like(s, lvl, dtype=torch.long))
        scores, boxes, levels = torch.cat(scores), torch.cat(boxes), torch.cat(levels)
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        keep = (w > self.min_box_size) & (h > self.min_box_size)
        scores, boxes, levels = scores[keep], boxes[keep], levels[keep]
        # NMS within each level, the result sorted by score across levels, as mmcv's batched_nms does it below
        # its split threshold (torchvision's batched_nms runs level by level on CPU above 1000 boxes and orders
        # equal scores differently, which matters at the cut).
        keep = batched_nms(boxes, scores, levels, self.nms_thresh)[: self.post_nms_top_n[mode]]
        return boxes[keep]

    def _losses(self, logits: Tensor, deltas: Tensor, anchors: Tensor, targets: list[dict[str, Tensor]],
                valid: list[Tensor | None]) -> dict[str, Tensor]:
        """Sigmoid BCE over sampled anchors and L1 over positive ones, both / number of sampled anchors."""
        labels, matched_boxes = [], []
        for t, ok in zip(targets, valid):
            gt = t["boxes"].to(anchors)
            # Only the image's valid anchors are assigned (they alone decide a ground truth's best matches); the
            # others are labelled -1, which the sampler never takes.
            lab = torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
            idx = torch.zeros_like(lab)
            ok = slice(None) if ok is None else ok
            lab[ok], idx[ok] = max_iou_assign(box_iou(gt, anchors[ok]), self.fg_iou_thresh, self.bg_iou_thresh,
                                              self.min_pos_iou, True)
            labels.append(lab)
            matched_boxes.append(gt[idx] if gt.numel() else torch.zeros_like(anchors))
        pos_masks, neg_masks = self.sampler(labels)
        cls_loss = logits.new_zeros(())
        box_loss = logits.new_zeros(())
        num_samples = 0
        for i, (pos, neg) in enumerate(zip(pos_masks, neg_masks)):
            pos, neg = pos.bool(), neg.bool()
            # MMDetection counts max(#pos, 1) + max(#neg, 1) per image.
            num_samples += max(int(pos.sum()), 1) + max(int(neg.sum()), 1)
            sampled = pos | neg
            cls_loss = cls_loss + F.binary_cross_entropy_with_logits(
                logits[i][sampled], pos[sampled].to(logits.dtype), reduction="sum")
            if pos.any():
                target = self.box_coder.encode(anchors[pos], matched_boxes[i][pos])
                box_loss = box_loss + (deltas[i][pos] - target).abs().sum()
            else:
                box_loss = box_loss + deltas[i][pos].sum()  # keeps the graph connected
        return {"loss_rpn_cls": cls_loss / num_samples, "loss_rpn_bbox": box_loss / num_samples}
