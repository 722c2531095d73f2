"""Faster R-CNN end to end at a tiny size: losses, detections in original coordinates, bad targets."""

import pytest
import torch

from genattn.models import MODELS, get_model


LOSS_NAMES = {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"}


@pytest.mark.parametrize("name", sorted(MODELS) + ["faster_rcnn_r50_fpn_attention_0101_dcn_1x_coco",
                                                   "faster_rcnn_r50_fpn_attention_1000_1x_coco"])
def test_every_named_model_trains_a_step_tiny(name, tiny_kwargs, batch):
    torch.manual_seed(0)
    model = get_model(name, **tiny_kwargs).train()
    images, targets = batch
    losses = model(images, targets)
    assert set(losses) == LOSS_NAMES
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.roi_head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_named_full_resnet50_model_trains_and_detects(name, batch):
    """The real R-50 models, run on 64 px images."""
    torch.manual_seed(0)
    model = get_model(name, min_size=64, max_size=64)
    assert hasattr(model.backbone.layer3[0], "gen_attention_block") == (MODELS[name].attention_type is not None)
    assert hasattr(model.backbone.layer2[0].conv2, "conv_offset") == MODELS[name].dcn
    assert not any(p.requires_grad for p in model.backbone.layer1.parameters())  # frozen_stages=1
    images, targets = batch
    losses = model.train()(images[:1], targets[:1])
    assert set(losses) == LOSS_NAMES and all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        out = model.eval()(images[:1])
    assert out[0]["boxes"].shape[1] == 4


def test_empty_targets_train(tiny_model, batch):
    model = tiny_model().train()
    images, targets = batch
    losses = model(images[1:], targets[1:])
    assert losses["loss_bbox"].item() == 0 and losses["loss_rpn_bbox"].item() == 0
    assert losses["loss_cls"] > 0 and losses["loss_rpn_cls"] > 0
    sum(losses.values()).backward()


def test_labels_are_mapped_to_contiguous_indices(tiny_model, batch):
    model = tiny_model()
    _, targets = batch
    mapped = model._to_indices(targets)
    assert mapped[0]["labels"].tolist() == [0, 79]  # COCO ids 1 and 90
    assert targets[0]["labels"].tolist() == [1, 90]


def test_eval_outputs_category_ids_in_original_coordinates(tiny_model, batch):
    model = tiny_model(num_classes=3, category_ids=(7, 3, 11)).eval()
    head = model.roi_head.bbox_head
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.shared_fcs[1].bias.fill_(1.0)
        head.fc_cls.bias[2] = 20.0  # contiguous class 2 = category id 11
    images, _ = batch
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det, img in zip(out, images):
        h, w = img.shape[1:]
        assert det["boxes"].shape[0] > 0 and det["labels"].dtype == torch.int64
        assert det["labels"].unique().tolist() == [11]
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
        b = det["boxes"]
        assert b.min() >= 0 and (b[:, 2] <= w + 1e-4).all() and (b[:, 3] <= h + 1e-4).all()
        # Boxes clipped at the resized image's right edge map back exactly onto the original's.
        assert torch.isclose(b[:, 2].max(), torch.tensor(float(w)), atol=1e-4)
    assert model.category_ids == (7, 3, 11) and model.class_names == ("class_7", "class_3", "class_11")


def _target(**kw):
    t = {"boxes": torch.tensor([[1.0, 1.0, 10.0, 10.0]]), "labels": torch.tensor([1])}
    t.update(kw)
    return t


@pytest.mark.parametrize("target, message", [
    (_target(boxes=torch.tensor([[10.0, 1.0, 5.0, 10.0]])), r"targets\[1\]\['boxes'\].*negative"),
    (_target(boxes=torch.tensor([[1, 1, 5, 10]])), r"targets\[1\]\['boxes'\].*float"),
    (_target(boxes=torch.zeros(1, 5)), r"targets\[1\]\['boxes'\]"),
    (_target(labels=torch.tensor([1], dtype=torch.int32)), r"targets\[1\]\['labels'\].*int64"),
    (_target(labels=torch.tensor([1, 2])), r"targets\[1\]: 1 boxes but 2 labels"),
    (_target(labels=torch.tensor([12])), r"targets\[1\]\['labels'\].*\[12\]"),  # 12 is not a COCO id
    ({"boxes": torch.zeros(0, 4)}, r"targets\[1\]\['labels'\]"),
    (_target(flip=torch.tensor(True)), r"targets\[1\]\['flip'\]: expected a bool"),
])
def test_bad_targets_raise(tiny_model, target, message, batch):
    model = tiny_model().train()
    images, targets = batch
    with pytest.raises(ValueError, match=message):
        model(images, [targets[0], target])


def test_train_mode_needs_targets(tiny_model, batch):
    model = tiny_model().train()
    with pytest.raises(ValueError, match="targets"):
        model(batch[0])
    with pytest.raises(ValueError, match="2 images"):
        model(batch[0], [_target()])


def test_rpn_proposal_counts(tiny_model, batch):
    model = tiny_model(rpn_pre_nms_top_n_test=5, rpn_post_nms_top_n_test=7).eval()
    images, _ = batch
    batch, _ = model.transform(images)
    feats = model.neck(model.backbone(batch.tensors))
    with torch.no_grad():
        proposals, losses = model.rpn_head(feats, batch.image_sizes)
    assert losses == {}
    # At most 5 per level from 5 levels, at most 7 kept, all inside the resized image.
    for p, (h, w) in zip(proposals, batch.image_sizes):
        assert 0 < p.shape[0] <= 7
        assert p[:, 0::2].max() <= w and p[:, 1::2].max() <= h and p.min() >= 0


def test_autocast_bfloat16_step_keeps_box_arithmetic_in_float32(tiny_model, batch):
    model = tiny_model().train()
    images, targets = batch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
    assert all(d["boxes"].dtype == torch.float32 for d in out)


def test_float64_model_detects_and_trains_in_float64(tiny_model, batch):
    # Box arithmetic is "at least float32": a float64 model (used for exact comparisons, e.g. the MMDetection
    # parity check) must not mix float32 scores with float64 boxes in NMS.
    model = tiny_model().eval()
    images, targets = batch
    with torch.no_grad():
        ref = model(images)
        out = model.double()([img.double() for img in images])
    for d, r in zip(out, ref):
        assert d["boxes"].dtype == torch.float64 and d["scores"].dtype == torch.float64
        assert d["labels"].tolist() == r["labels"].tolist()
        torch.testing.assert_close(d["boxes"], r["boxes"].double(), rtol=0, atol=1e-3)
        torch.testing.assert_close(d["scores"], r["scores"].double(), rtol=0, atol=1e-5)
    losses = model.train()([img.double() for img in images], targets)
    assert all(v.dtype == torch.float64 and torch.isfinite(v) for v in losses.values())


def test_zero_size_and_outside_boxes_are_ignored(tiny_model, batch):
    model = tiny_model().train()
    images, _ = batch
    targets = [{"boxes": torch.tensor([[5.0, 5.0, 5.0, 30.0], [90.0, 70.0, 95.0, 80.0]]),  # empty; outside
                "labels": torch.tensor([1, 2])}] * 2
    losses = model(images, targets)
    assert losses["loss_bbox"].item() == 0 and all(torch.isfinite(v) for v in losses.values())


def test_flip_target_trains_on_the_image_flipped_after_resizing(tiny_model, batch):
    """'flip': True gives the losses of the flipped resized input with flipped boxes (the transform's job)."""
    model = tiny_model().train()
    images, targets = batch
    images = [(im * 255).to(torch.uint8) for im in images]
    seen = []
    model.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    torch.manual_seed(0)
    flipped = model(images, [dict(t, flip=True) for t in targets])
    torch.manual_seed(0)
    plain = model(images, targets)
    h, w = model.transform(images)[0].image_sizes[0]
    assert torch.equal(seen[0][0, :, :h, :w], seen[1][0, :, :h, :w].flip(-1))
    assert not torch.equal(flipped["loss_rpn_bbox"], plain["loss_rpn_bbox"])
