"""RPN: proposal selection (per-level top-k, NMS within levels, best overall) and loss normalisation."""

import math

import torch
from torchvision.ops import box_iou

from genattn.models.anchors import AnchorGenerator
from genattn.models.detector import FPN
from genattn.models.rpn import RPNHead


def test_proposals_nms_within_levels_then_best_overall():
    rpn = RPNHead(8, pre_nms_top_n_test=2, post_nms_top_n_test=3).eval()
    box = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    near = torch.tensor([[11.0, 11.0, 50.0, 50.0]])
    far = torch.tensor([[60.0, 60.0, 90.0, 90.0]])
    anchors = [torch.cat([box, near, far]), torch.cat([box, far])]
    logits = [torch.tensor([3.0, 2.0, 1.0]), torch.tensor([2.5, -1.0])]
    deltas = [torch.zeros(3, 4), torch.zeros(2, 4)]
    out = rpn._proposals(logits, deltas, anchors, (100, 100), "test")
    # Level 0 keeps its top 2 (box, near) and NMS drops near; level 1 keeps box and far. The same box on two
    # levels survives twice (levels are separate NMS groups); the best 3 overall, by score.
    torch.testing.assert_close(out, torch.cat([box, box, far]))


def test_losses_normalised_by_sampled_anchors():
    torch.manual_seed(0)
    gen = AnchorGenerator(strides=(16,), scales=(2.0,))  # 32 px anchors on a 4x4 map
    rpn = RPNHead(4, gen, batch_size_per_image=1000).train()
    for p in rpn.parameters():
        torch.nn.init.zeros_(p)
    gt = torch.tensor([[0.0, 0.0, 32.0, 36.0]])
    _, losses = rpn([torch.rand(1, 4, 4, 4)], [(64, 64)], [{"boxes": gt}])
    # Zero logits: BCE = log 2 for every sampled anchor, summed and divided by the number sampled.
    torch.testing.assert_close(losses["loss_rpn_cls"], torch.tensor(math.log(2.0)))
    anchors = gen([(4, 4)])[0]
    iou = box_iou(gt, anchors)[0]
    # The ratio-1 anchor of location (y=1, x=1) is (0, 0, 32, 32): IoU 32/36 with the gt, the only positive.
    assert anchors[16].tolist() == [0.0, 0.0, 32.0, 32.0] and (iou >= 0.7).nonzero().flatten().tolist() == [16]
    sampled = int((iou < 0.3).sum()) + 1
    expected = rpn.box_coder.encode(anchors[16:17], gt).abs().sum() / sampled  # zero deltas predicted
    torch.testing.assert_close(losses["loss_rpn_bbox"], expected)


def test_fpn_levels_and_p6():
    fpn = FPN([8, 16, 32, 64], 4)
    feats = [torch.rand(1, c, 64 // s, 64 // s) for c, s in zip((8, 16, 32, 64), (4, 8, 16, 32))]
    outs = fpn(feats)
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2, 1]
    torch.testing.assert_close(outs[4], outs[3][..., ::2, ::2])  # max-pool with kernel 1, stride 2
    # The coarsest output only sees C5: lateral then 3x3 conv.
    torch.testing.assert_close(outs[3], fpn.fpn_convs[3](fpn.lateral_convs[3](feats[3])))
    # Top-down: P4's lateral input adds the nearest-upsampled P5 lateral.
    up = torch.nn.functional.interpolate(fpn.lateral_convs[3](feats[3]), scale_factor=2, mode="nearest")
    torch.testing.assert_close(outs[2], fpn.fpn_convs[2](fpn.lateral_convs[2](feats[2]) + up))


def test_proposal_ties_are_cut_like_a_descending_sort():
    # 6 anchors with equal scores at the pre-NMS cut (k = 3): the kept ones are the first 3 of a descending sort
    # (MMDetection's selection), not whatever topk returns; disjoint boxes so NMS removes nothing.
    rpn = RPNHead(8, pre_nms_top_n_test=3, post_nms_top_n_test=10).eval()
    anchors = torch.tensor([[float(20 * i), 0.0, float(20 * i + 10), 10.0] for i in range(6)])
    logits = torch.tensor([1.0, 2.0, 1.0, 1.0, 2.0, 1.0])
    out = rpn._proposals([logits], [torch.zeros(6, 4)], [anchors], (200, 200), "test")
    expected = anchors[logits.sigmoid().sort(descending=True)[1][:3]]
    torch.testing.assert_close(out, expected)
    assert out[:2, 0].tolist() in ([20.0, 80.0], [80.0, 20.0])  # the two best are always kept


def test_proposal_nms_is_per_level_with_one_score_order():
    # The same box on two levels survives on both; the output is in one descending score order.
    rpn = RPNHead(8, pre_nms_top_n_test=10, post_nms_top_n_test=10).eval()
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 10.0, 10.0]])
    out = rpn._proposals([torch.tensor([0.0, 3.0]), torch.tensor([2.0, 1.0])], [torch.zeros(2, 4)] * 2, [a, a],
                         (50, 50), "test")
    torch.testing.assert_close(out, torch.stack([a[1], a[0]]))


def test_only_anchors_over_the_image_own_padded_area_are_trained():
    # A 64x64 image in a batch padded to 64x128 (a wider image beside it): MMDetection's valid_flags take the
    # image's own pad_shape, so the anchors of locations x >= 4 (stride 16) are neither positive nor negative.
    gen = AnchorGenerator(strides=(16,), scales=(2.0,))
    rpn = RPNHead(4, gen, batch_size_per_image=10**7).train()
    for p in rpn.parameters():
        torch.nn.init.zeros_(p)
    gt = torch.tensor([[0.0, 0.0, 32.0, 36.0]])
    anchors = gen([(4, 8)])[0]
    valid = gen.valid_flags([(4, 8)], (64, 64))
    assert valid.view(4, 8, 3)[:, :4].all() and not valid.view(4, 8, 3)[:, 4:].any()
    iou = box_iou(gt, anchors)[0]
    assert (iou >= 0.7).nonzero().flatten().tolist() == [28]  # (0, 0, 32, 32) at location (y=1, x=1), as above
    sampled = int((iou[valid] < 0.3).sum()) + 1
    assert sampled < int((iou < 0.3).sum()) + 1
    _, losses = rpn([torch.rand(1, 4, 4, 8)], [(64, 64)], [{"boxes": gt}], [(64, 64)])
    expected = rpn.box_coder.encode(anchors[28:29], gt).abs().sum() / sampled
    torch.testing.assert_close(losses["loss_rpn_bbox"], expected)
    _, losses = rpn([torch.rand(1, 4, 4, 8)], [(64, 64)], [{"boxes": gt}])  # no padded sizes: every anchor
    torch.testing.assert_close(losses["loss_rpn_bbox"], expected * sampled / (int((iou < 0.3).sum()) + 1))
