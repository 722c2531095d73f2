"""Anchors, box coding and IoU assignment against hand-computed values (MMDetection's conventions)."""

import math

import pytest
import torch

from genattn.models.anchors import AnchorGenerator, DeltaXYWHBoxCoder, max_iou_assign

R2 = math.sqrt(2.0)


def test_base_anchors_stride4_unrounded_ratio_major():
    gen = AnchorGenerator()
    base = gen.base_anchors(4, torch.float64)
    # ratio 0.5: w = 4 * 8 / sqrt(0.5) = 32 * sqrt(2), h = 32 / sqrt(2); centred at (0, 0), not rounded.
    expected = torch.tensor([
        [-16 * R2, -8 * R2, 16 * R2, 8 * R2],
        [-16.0, -16.0, 16.0, 16.0],
        [-8 * R2, -16 * R2, 8 * R2, 16 * R2],
    ], dtype=torch.float64)
    torch.testing.assert_close(base, expected, rtol=0, atol=1e-12)


def test_anchor_sizes_per_level():
    gen = AnchorGenerator()
    for stride, size in zip((4, 8, 16, 32, 64), (32, 64, 128, 256, 512)):
        a = gen.base_anchors(stride, torch.float64)[1]  # ratio 1
        assert (a[2] - a[0]).item() == size and (a[3] - a[1]).item() == size


def test_grid_order_row_major_locations_anchor_minor():
    gen = AnchorGenerator()
    levels = gen([(2, 3), (1, 2), (1, 1), (1, 1), (1, 1)])
    assert [a.shape[0] for a in levels] == [18, 6, 3, 3, 3]
    a = levels[0].reshape(2, 3, 3, 4)  # [H, W, A, 4]
    # Location (y=1, x=2) at stride 4 is shifted by (8, 4); its ratio-1 anchor is 32 x 32 around that point.
    torch.testing.assert_close(a[1, 2, 1], torch.tensor([8 - 16.0, 4 - 16.0, 8 + 16.0, 4 + 16.0]))
    # The first anchors: location (0, 0), ratios 0.5, 1, 2 in that order.
    torch.testing.assert_close(levels[0][:3], gen.base_anchors(4))
    torch.testing.assert_close(levels[0][3], gen.base_anchors(4)[0] + torch.tensor([4.0, 0, 4, 0]))


def test_anchor_generator_rejects_level_count_mismatch():
    with pytest.raises(ValueError, match="feature maps"):
        AnchorGenerator()([(2, 2)])


def test_encode_hand_computed_delta():
    coder = DeltaXYWHBoxCoder(stds=(0.1, 0.1, 0.2, 0.2))
    # box centre (5, 5) size 10x10; gt centre (15, 10) size 20x10 -> (1, 0.5, log 2, 0) / stds.
    d = coder.encode(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[5.0, 5, 25, 15]]))
    torch.testing.assert_close(d, torch.tensor([[10.0, 5.0, math.log(2) / 0.2, 0.0]]))


def test_coding_round_trip():
    torch.manual_seed(0)
    xy = torch.rand(50, 2) * 100
    boxes = torch.cat([xy, xy + 1 + torch.rand(50, 2) * 50], 1).double()
    xy = torch.rand(50, 2) * 100
    gt = torch.cat([xy, xy + 1 + torch.rand(50, 2) * 50], 1).double()
    for stds in ((1.0, 1.0, 1.0, 1.0), (0.1, 0.1, 0.2, 0.2)):
        coder = DeltaXYWHBoxCoder(stds=stds)
        torch.testing.assert_close(coder.decode(boxes, coder.encode(boxes, gt)), gt)


def test_decode_clamps_both_sides_and_clips():
    coder = DeltaXYWHBoxCoder()
    box = torch.tensor([[100.0, 100, 116, 116]])
    big = coder.decode(box, torch.tensor([[0.0, 0, 50, -50]]))
    # dw clamped at log(1000/16): width 16 * 62.5 = 1000; dh clamped at -log(1000/16): height 16 / 62.5.
    torch.testing.assert_close(big[0, 2] - big[0, 0], torch.tensor(1000.0))
    torch.testing.assert_close(big[0, 3] - big[0, 1], torch.tensor(16 / 62.5))
    clipped = coder.decode(box, torch.tensor([[0.0, 0, 50, 0]]), max_shape=(120, 200))
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 100, 200, 116]]))
    # Several classes at once: [N, 4k] deltas give [N, 4k] boxes.
    assert coder.decode(box, torch.zeros(1, 12)).shape == (1, 12)
    assert coder.decode(box[:0], torch.zeros(0, 12)).shape == (0, 12)  # no proposals at all


def test_max_iou_assign_thresholds_and_low_quality():
    iou = torch.tensor([
        [0.80, 0.50, 0.20, 0.35, 0.00],
        [0.10, 0.60, 0.25, 0.35, 0.10],
    ])
    labels, matched = max_iou_assign(iou, 0.7, 0.3, 0.3, match_low_quality=False)
    assert labels.tolist() == [1, -1, 0, -1, 0]
    assert matched[0] == 0
    labels, matched = max_iou_assign(iou, 0.7, 0.3, 0.3, match_low_quality=True)
    # gt 1's best IoU 0.6 (>= 0.3) makes candidate 1 positive for gt 1; gt 0's best is candidate 0.
    assert labels.tolist() == [1, 1, 0, -1, 0]
    assert matched[:2].tolist() == [0, 1]


def test_max_iou_assign_ties_go_to_the_last_gt_and_min_pos_iou():
    iou = torch.tensor([[0.4, 0.1], [0.4, 0.2]])
    labels, matched = max_iou_assign(iou, 0.7, 0.3, 0.3, True)
    assert labels.tolist() == [1, 0] and matched[0] == 1  # both gts have candidate 0 as best; the last wins
    labels, _ = max_iou_assign(torch.tensor([[0.25, 0.1]]), 0.7, 0.3, 0.3, True)
    assert labels.tolist() == [0, 0]  # best IoU 0.25 < min_pos_iou: no low-quality match


def test_max_iou_assign_no_ground_truth():
    labels, _ = max_iou_assign(torch.zeros(0, 4), 0.7, 0.3, 0.3, True)
    assert labels.tolist() == [0, 0, 0, 0]


def test_valid_flags_follow_the_image_own_padded_size():
    # Batch padded to 96x160; the image's pad_shape is 64x96. Locations valid: y < ceil(64 / s), x < ceil(96 / s).
    gen = AnchorGenerator(strides=(16, 64), ratios=(0.5, 1.0), scales=(8.0,))
    sizes = [(6, 10), (2, 3)]
    flags = gen.valid_flags(sizes, (64, 96))
    assert flags.shape == (6 * 10 * 2 + 2 * 3 * 2,) and flags.dtype == torch.bool
    level0 = flags[:120].view(6, 10, 2)
    assert level0[:4, :6].all() and not level0[4:].any() and not level0[:, 6:].any()
    level1 = flags[120:].view(2, 3, 2)
    assert level1[:1, :2].all() and not level1[1:].any() and not level1[:, 2:].any()  # ceil(64/64), ceil(96/64)
    assert gen.valid_flags(sizes, (96, 160)).all()
