"""Anchors, box coding and IoU assignment with MMDetection's (v2) conventions.

torchvision has all three (``AnchorGenerator``, ``BoxCoder``, ``Matcher``), but each differs from MMDetection in a
detail that changes which boxes a released checkpoint predicts or which anchors training treats as positive, so
the three are written here; every difference is named where it matters.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["AnchorGenerator", "DeltaXYWHBoxCoder", "max_iou_assign"]


class AnchorGenerator(torch.nn.Module):
    """One set of anchors per feature level, MMDetection style.

    Per level with stride ``s`` the base anchors are centred at (0, 0) (MMDetection's ``center_offset=0``:
    the top-left corner of each stride cell, not its centre) with width ``s * scale / sqrt(ratio)`` and height
    ``s * scale * sqrt(ratio)``, **not rounded** (torchvision's ``AnchorGenerator`` rounds the base anchors and
    takes sizes per level instead of a scale times the stride). Within a location the anchors are ordered
    ratio-major (ratios outer, scales inner), locations row-major, which is the channel order the RPN's
    ``rpn_cls``/``rpn_reg`` convolutions were trained with.

    Args:
        strides: Feature strides, one per level (MMDetection: 4, 8, 16, 32, 64).
        ratios: Height / width ratios.
        scales: Anchor sizes in units of the stride (MMDetection: 8, so sizes 32 .. 512).
    """

    def __init__(
        self,
        strides: Sequence[int] = (4, 8, 16, 32, 64),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        scales: Sequence[float] = (8.0,),
    ) -> None:
        super().__init__()
        if not strides or any(s <= 0 for s in strides):
            raise ValueError(f"strides must be positive, got {tuple(strides)}")
        if not ratios or any(r <= 0 for r in ratios) or not scales or any(s <= 0 for s in scales):
            raise ValueError(f"ratios and scales must be positive, got {tuple(ratios)}, {tuple(scales)}")
        self.strides = tuple(int(s) for s in strides)
        self.ratios = tuple(float(r) for r in ratios)
        self.scales = tuple(float(s) for s in scales)

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.ratios) * len(self.scales)

    def base_anchors(self, stride: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
        """Anchors of one location at the origin: ``[A, 4]`` xyxy, A = ratios x scales, ratio-major."""
        ratios = torch.tensor(self.ratios, dtype=torch.float64)
        scales = torch.tensor(self.scales, dtype=torch.float64)
        h_ratios = ratios.sqrt()
        w_ratios = 1.0 / h_ratios
        ws = (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)  # [A], ratio-major
        hs = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
        anchors = torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=1)
        return anchors.to(dtype=dtype, device=device)

    def grid_anchors(self, size: tuple[int, int], stride: int, dtype=torch.float32, device=None) -> Tensor:
        """All anchors of a level with feature map ``size = (H, W)``: ``[H * W * A, 4]``."""
        h, w = size
        base = self.base_anchors(stride, dtype, device)
        shift_x = torch.arange(w, dtype=dtype, device=device) * stride
        shift_y = torch.arange(h, dtype=dtype, device=device) * stride
        yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")  # row-major locations
        shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)  # [H*W, 1, 4]
        return (shifts + base[None]).reshape(-1, 4)

    def forward(self, feature_sizes: Sequence[tuple[int, int]], dtype=torch.float32, device=None) -> list[Tensor]:
        """Anchors for every level.

        Args:
            feature_sizes: ``(H_l, W_l)`` per level, as many as ``strides``.

        Returns:
            list of ``[H_l * W_l * A, 4]`` tensors (xyxy, pixels of the padded input).
        """
        if len(feature_sizes) != len(self.strides):
            raise ValueError(f"got {len(feature_sizes)} feature maps for {len(self.strides)} anchor strides")
        return [self.grid_anchors(tuple(s), st, dtype, device) for s, st in zip(feature_sizes, self.strides)]

    def valid_flags(self, feature_sizes: Sequence[tuple[int, int]], padded_size: tuple[int, int],
                    device=None) -> Tensor:
        """Which anchors of a batch belong to one image: those at locations over its own padded area.

        MMDetection's ``valid_flags`` with the image's ``pad_shape`` (its size rounded up to the size divisor,
        not the batch's padded size): on a level of stride ``s`` a location ``(y, x)`` is valid when
        ``y < ceil(pad_h / s)`` and ``x < ceil(pad_w / s)``. Training assigns and samples only valid anchors; the
        others are neither positive nor negative.

        Args:
            feature_sizes: ``(H_l, W_l)`` per level, as for :meth:`forward`.
            padded_size: ``(pad_h, pad_w)`` of the image.

        Returns:
            ``[sum_l H_l * W_l * A]`` bool, in the order of ``torch.cat(self(feature_sizes))``.
        """
        flags = []
        a = self.num_anchors_per_location
        for (h, w), stride in zip(feature_sizes, self.strides):
            valid = torch.zeros(h, w, dtype=torch.bool, device=device)
            valid[: min(math.ceil(padded_size[0] / stride), h), : min(math.ceil(padded_size[1] / stride), w)] = True
            flags.append(valid.reshape(-1, 1).expand(-1, a).reshape(-1))  # every anchor of a valid location
        return torch.cat(flags)


class DeltaXYWHBoxCoder:
    """MMDetection's ``DeltaXYWHBBoxCoder``: (dx, dy, dw, dh) deltas normalised by means and stds.

    Encoding equals torchvision's ``BoxCoder`` with weights = 1 / stds (widths are ``x2 - x1``, no +1). Decoding
    differs: MMDetection clamps dw/dh to ``[-log(1000/16), log(1000/16)]`` (torchvision clamps only from above)
    and clips the decoded boxes to the (resized, unpadded) image, ``[0, W] x [0, H]``.

    Args:
        means: Target means (MMDetection: zeros).
        stds: Target stds (RPN: ones; box head: 0.1, 0.1, 0.2, 0.2).
    """

    def __init__(self, means: Sequence[float] = (0.0, 0.0, 0.0, 0.0), stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 wh_ratio_clip: float = 16 / 1000) -> None:
        self.means = tuple(float(m) for m in means)
        self.stds = tuple(float(s) for s in stds)
        self.max_ratio = abs(math.log(wh_ratio_clip))

    def encode(self, boxes: Tensor, gt: Tensor) -> Tensor:
        """Deltas taking ``boxes [N,4]`` to ``gt [N,4]``: ``[N, 4]``."""
        pw = boxes[:, 2] - boxes[:, 0]
        ph = boxes[:, 3] - boxes[:, 1]
        px = boxes[:, 0] + 0.5 * pw
        py = boxes[:, 1] + 0.5 * ph
        gw = gt[:, 2] - gt[:, 0]
        gh = gt[:, 3] - gt[:, 1]
        gx = gt[:, 0] + 0.5 * gw
        gy = gt[:, 1] + 0.5 * gh
        deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=1)
        means = deltas.new_tensor(self.means)
        stds = deltas.new_tensor(self.stds)
        return (deltas - means) / stds

    def decode(self, boxes: Tensor, deltas: Tensor, max_shape: tuple[int, int] | None = None) -> Tensor:
        """Apply ``deltas [N, 4k]`` to ``boxes [N, 4]``; returns ``[N, 4k]`` boxes, clipped to ``max_shape=(H, W)``."""
        n, k = deltas.shape[0], deltas.shape[1] // 4  # explicit sizes: reshape(0, -1, 4) is ambiguous
        d = deltas.reshape(n, k, 4) * deltas.new_tensor(self.stds) + deltas.new_tensor(self.means)
        dx, dy = d[..., 0], d[..., 1]
        dw = d[..., 2].clamp(min=-self.max_ratio, max=self.max_ratio)
        dh = d[..., 3].clamp(min=-self.max_ratio, max=self.max_ratio)
        pw = (boxes[:, 2] - boxes[:, 0])[:, None]
        ph = (boxes[:, 3] - boxes[:, 1])[:, None]
        px = (boxes[:, 0] + boxes[:, 2])[:, None] * 0.5
        py = (boxes[:, 1] + boxes[:, 3])[:, None] * 0.5
        gw = pw * dw.exp()
        gh = ph * dh.exp()
        gx = px + pw * dx
        gy = py + ph * dy
        x1, y1, x2, y2 = gx - 0.5 * gw, gy - 0.5 * gh, gx + 0.5 * gw, gy + 0.5 * gh
        if max_shape is not None:
            h, w = max_shape
            x1, x2 = x1.clamp(0, w), x2.clamp(0, w)
            y1, y2 = y1.clamp(0, h), y2.clamp(0, h)
        return torch.stack([x1, y1, x2, y2], dim=-1).reshape(n, 4 * k)


def max_iou_assign(
    iou: Tensor, pos_thr: float, neg_thr: float, min_pos_iou: float, match_low_quality: bool
) -> tuple[Tensor, Tensor]:
    """MMDetection's ``MaxIoUAssigner`` on an IoU matrix.

    torchvision's ``Matcher`` is not used because (1) it raises on images without ground truth, which training
    must accept, and (2) its low-quality matching gives each such anchor the ground truth it overlaps most,
    with no minimum IoU, while MMDetection requires ``IoU >= min_pos_iou`` and gives every anchor that ties for
    a ground truth's best IoU to *that* ground truth (the last one in order wins).

    Args:
        iou: ``[G, N]`` IoU between G ground-truth boxes and N candidate boxes.
        pos_thr: IoU at or above which a candidate is positive.
        neg_thr: IoU below which a candidate is negative (candidates in between are ignored).
        min_pos_iou: Least IoU for a low-quality match.
        match_low_quality: Whether every ground truth gets its best candidates as positives.

    Returns:
        ``labels [N]`` (1 positive, 0 negative, -1 ignored) and ``matched [N]`` (index of the assigned ground
        truth; meaningful where positive).
    """
    g, n = iou.shape
    labels = torch.full((n,), -1, dtype=torch.long, device=iou.device)
    matched = torch.zeros((n,), dtype=torch.long, device=iou.device)
    if g == 0 or n == 0:
        labels.fill_(0)
        return labels, matched
    max_iou, argmax = iou.max(dim=0)
    labels[(max_iou >= 0) & (max_iou < neg_thr)] = 0
    pos = max_iou >= pos_thr
    labels[pos] = 1
    matched[pos] = argmax[pos]
    if match_low_quality:
        gt_max = iou.max(dim=1).values  # [G]
        ties = (iou == gt_max[:, None]) & (gt_max[:, None] >= min_pos_iou)  # [G, N]
        # The last ground truth in order overwrites earlier ones, as MMDetection's loop does.
        order = torch.arange(1, g + 1, device=iou.device)[:, None]
        last = (ties.long() * order).max(dim=0).values  # 0 = none
        low = last > 0
        labels[low] = 1
        matched[low] = last[low] - 1
    return labels, matched
