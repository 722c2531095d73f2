"""RoIAlign level mapping and the box head's layout and losses."""

import pytest
import torch
from torchvision.ops import roi_align

from genattn.models.roi_heads import BBoxHead, MultiLevelRoIAlign, RoIHead


@pytest.mark.parametrize("side, level", [
    (16, 0), (111.9, 0), (112, 1), (223.9, 1), (224, 2), (447.9, 2), (448, 3), (1200, 3),
])
def test_level_mapping_hand_picked(side, level):
    # floor(log2(side / 56 + 1e-6)) clamped to 0..3: 112 -> 1, 224 -> 2, 448 -> 3.
    boxes = torch.tensor([[10.0, 10.0, 10.0 + side, 10.0 + side]])
    assert MultiLevelRoIAlign().map_levels(boxes).item() == level


def test_non_square_box_uses_sqrt_area():
    boxes = torch.tensor([[0.0, 0.0, 448.0, 28.0]])  # sqrt(448 * 28) = 112 -> level 1
    assert MultiLevelRoIAlign().map_levels(boxes).item() == 1


def test_pooling_uses_aligned_roi_align_on_the_mapped_level():
    torch.manual_seed(0)
    feats = [torch.rand(2, 4, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    rois = torch.tensor([[0, 1.0, 2.0, 40.0, 30.0], [1, 0.0, 0.0, 63.0, 63.0], [1, 3.0, 5.0, 50.0, 60.0]])
    out = MultiLevelRoIAlign()(feats, rois)
    assert out.shape == (3, 4, 7, 7)
    # All three are below 112 px: level 0 (stride 4), aligned=True, adaptive sampling.
    expected = roi_align(feats[0], rois, 7, spatial_scale=0.25, sampling_ratio=0, aligned=True)
    torch.testing.assert_close(out, expected)
    big = torch.tensor([[0, 0.0, 0.0, 300.0, 300.0]])  # 300 px -> level 2 (stride 16)
    expected = roi_align(feats[2], big, 7, spatial_scale=1 / 16, sampling_ratio=0, aligned=True)
    torch.testing.assert_close(MultiLevelRoIAlign()(feats, big), expected)


def test_bbox_head_layout():
    head = BBoxHead(in_channels=8, roi_size=7, representation_size=32, num_classes=5)
    assert head.fc_cls.out_features == 6 and head.fc_reg.out_features == 20
    assert head.shared_fcs[0].in_features == 8 * 49
    cls, reg = head(torch.rand(3, 8, 7, 7))
    assert cls.shape == (3, 6) and reg.shape == (3, 20)


def _tiny_roi_head(num_classes=3):
    return RoIHead(MultiLevelRoIAlign(), BBoxHead(4, 7, 16, num_classes), batch_size_per_image=8)


def test_losses_normalised_by_sampled_rois():
    torch.manual_seed(0)
    head = _tiny_roi_head().train()
    feats = [torch.rand(1, 4, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    gt = torch.tensor([[4.0, 4.0, 30.0, 30.0]])
    props = [torch.tensor([[4.0, 4.0, 30.0, 31.0], [40.0, 40.0, 60.0, 60.0], [0.0, 30.0, 20.0, 60.0]])]
    for p in head.bbox_head.parameters():
        torch.nn.init.zeros_(p)
    head.bbox_head.fc_reg.bias.data.fill_(1.0)  # every predicted delta is 1
    _, losses = head(feats, props, [(64, 64)], [{"boxes": gt, "labels": torch.tensor([2])}])
    # 4 candidates (gt first + 3 proposals): 2 positive (gt, the near copy), 2 negative; all sampled.
    # Zero logits: CE = log(4 classes) for each RoI, averaged over the 4 RoIs.
    torch.testing.assert_close(losses["loss_cls"], torch.log(torch.tensor(4.0)))
    coder = head.box_coder
    t = coder.encode(torch.cat([gt, props[0][:1]]), gt.expand(2, 4))
    torch.testing.assert_close(losses["loss_bbox"], (1 - t).abs().sum() / 4)


def test_detection_background_last_and_nms():
    head = _tiny_roi_head().eval()
    for p in head.bbox_head.parameters():
        torch.nn.init.zeros_(p)
    head.bbox_head.shared_fcs[1].bias.data.fill_(1.0)
    head.bbox_head.fc_cls.weight.data[1] = 1.0  # class 1 wins; the last logit (background) stays 0
    feats = [torch.rand(1, 4, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    props = [torch.tensor([[4.0, 4.0, 30.0, 30.0], [5.0, 5.0, 30.0, 30.0], [40.0, 40.0, 60.0, 60.0]])]
    dets, _ = head(feats, props, [(64, 64)], scale_factors=[(2.0, 0.5)])
    d = dets[0]
    assert d["labels"].tolist() == [1, 1]  # the two overlapping proposals collapse to one
    boxes = sorted(d["boxes"].tolist())
    assert boxes[0] == pytest.approx([2.0, 8.0, 15.0, 60.0])  # divided by (w_scale, h_scale) before NMS


def test_no_proposals_give_no_detections_and_zero_losses():
    head = _tiny_roi_head()
    feats = [torch.rand(1, 4, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    dets, _ = head.eval()(feats, [torch.zeros(0, 4)], [(64, 64)])
    assert dets[0]["boxes"].shape == (0, 4) and dets[0]["labels"].shape == (0,)
    _, losses = head.train()(feats, [torch.zeros(0, 4)], [(64, 64)],
                             [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    assert losses["loss_cls"].item() == 0 and losses["loss_bbox"].item() == 0


def test_duplicate_ground_truth_keeps_its_own_label():
    torch.manual_seed(0)
    head = _tiny_roi_head().train()
    for p in head.bbox_head.parameters():
        torch.nn.init.zeros_(p)
    logits = torch.tensor([5.0, 0.0, 3.0, 0.0])
    with torch.no_grad():
        head.bbox_head.fc_cls.bias[:] = logits
    feats = [torch.rand(1, 4, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    box = torch.tensor([[4.0, 4.0, 30.0, 30.0]])
    # Two identical boxes labelled 0 and 2 and no proposals: each RoI is a positive of its own box and label.
    _, losses = head(feats, [torch.zeros(0, 4)], [(64, 64)],
                     [{"boxes": box.repeat(2, 1), "labels": torch.tensor([0, 2])}])
    log_p = torch.log_softmax(logits, 0)
    torch.testing.assert_close(losses["loss_cls"], -(log_p[0] + log_p[2]) / 2)
