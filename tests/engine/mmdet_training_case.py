"""The small training case compared with MMDetection: one definition for the tool and the CI test.

``tools/mmdet_train_parity.py --fixture`` builds this case with MMDetection 2.28.2 (the same weights, loaded
through genattn's converter's key map), runs MMDetection's ``forward_train`` on genattn's input and writes what
MMDetection computed to ``mmdet_training_case.json`` next to this file. ``test_mmdet_training_case.py`` runs
:func:`measure` on genattn (no MMDetection needed) and compares, so that a change to anchor assignment,
sampling rules, regression targets, loss normalisation or the flip fails CI.

The case: ``faster_rcnn_r50_fpn_attention_1111_dcn_1x_coco`` at its smallest (one bottleneck per stage, width
16; the 1x backbone's frozen stem and layer1 and frozen BatchNorm statistics kept), float64 (no float noise:
differences left are real), two uint8 images of different sizes with 3 and 2 boxes, the second flipped, at
scale 96..160. Weights are drawn per parameter name from a fixed seed (uniform, so the draw is the same on
every CPU), not by the model's initialisation, so that adding a module elsewhere does not change them. What is
measured, both samplers taking every candidate (nothing random): per image the anchors assigned positive /
negative / ignored and the sampled positives / negatives, the same for the RoIs (assignment of the proposals;
sampled including the ground truth added as proposals), the four losses, the gradient norm of a few
parameters; and with MMDetection's sampler sizes (RPN 256 at 0.5, RoI 512 at 0.25) the sampled counts, which
are determined although the samples are random.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from typing import Any, Iterator

import torch
from torch import nn

import genattn.models.roi_heads as roi_heads_module
import genattn.models.rpn as rpn_module
from genattn.models import get_model

MODEL = "faster_rcnn_r50_fpn_attention_1111_dcn_1x_coco"
BACKBONE = {"layers": (1, 1, 1, 1), "base_width": 16, "stem_width": 16}
HEADS = {"fpn_channels": 32, "representation_size": 64}
MIN_SIZE, MAX_SIZE = 96, 160
SIZES = ((90, 120), (70, 150))
BOXES = (((4.0, 6.5, 50.0, 60.0), (40.0, 20.0, 118.0, 88.0), (70.5, 3.0, 100.0, 30.0)),
         ((10.0, 12.0, 60.0, 66.0), (80.0, 5.0, 149.0, 40.5)))
LABELS = ((1, 18, 62), (3, 1))  # COCO category ids
FLIPS = (False, True)
EVERY = 10**7  # a sampler size above every candidate count: every candidate is taken
REAL_SAMPLERS = {"rpn": 256, "roi": 512}
GRAD_PARAMS = ("backbone.layer2.0.conv2.weight", "backbone.layer3.0.gen_attention_block.query_conv.weight",
               "backbone.layer4.0.conv2.conv_offset.weight", "neck.fpn_convs.0.weight", "rpn_head.rpn_conv.weight",
               "rpn_head.rpn_cls.weight", "rpn_head.rpn_reg.weight", "roi_head.bbox_head.shared_fcs.0.weight",
               "roi_head.bbox_head.fc_cls.weight", "roi_head.bbox_head.fc_reg.weight")


def build_model() -> nn.Module:
    """genattn's model of the case, samplers taking every candidate, in float64 with :func:`fill_weights`."""
    model = get_model(MODEL, backbone=dict(BACKBONE), min_size=MIN_SIZE, max_size=MAX_SIZE,
                      rpn_batch_size_per_image=EVERY, box_batch_size_per_image=EVERY, **HEADS)
    model.double()
    fill_weights(model)
    return model.train()


def _uniform(name: str, shape: torch.Size, lo: float, hi: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo


#: Gains of the uniform weights by name (first match; kaiming's sqrt(2) otherwise): outputs of a plausible size,
#: logits with std about 1-2, no saturated softmax or sigmoid, attention not near one-hot.
_GAINS = (("query_conv", 0.3), ("key_conv", 0.3), ("appr_geom", 0.3), ("_bias", 0.3), ("conv_offset", 0.3),
          ("neck.", 0.3), ("rpn_conv", 0.5), ("rpn_cls", 2.0), ("rpn_reg", 0.02), ("shared_fcs", 0.5),
          ("fc_cls", 3.0), ("fc_reg", 0.02))


@torch.no_grad()
def fill_weights(model: nn.Module) -> None:
    """Weights drawn from each tensor's name: kaiming-sized uniform convs / FCs (smaller for the attention's
    query/key and the DCN offsets, so that nothing saturates), BatchNorm affine around 1 / 0 with running
    statistics of a trained network's order, attention ``gamma`` around 1, small biases."""
    for name, t in model.state_dict().items():
        if not t.is_floating_point() or name.startswith("transform."):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "running_mean":
            value = _uniform(name, t.shape, -0.2, 0.2)
        elif leaf == "running_var":
            value = _uniform(name, t.shape, 0.5, 1.5)
        elif ".bn" in name or "downsample.1" in name:
            value = _uniform(name, t.shape, 0.5, 1.5) if leaf == "weight" else _uniform(name, t.shape, -0.2, 0.2)
        elif leaf == "gamma":
            value = _uniform(name, t.shape, 0.5, 1.5)
        elif t.dim() > 1 or leaf in ("appr_bias", "geom_bias"):
            fan_in = t[0].numel() if t.dim() > 1 else t.shape[-1]
            gain = next((g for key, g in _GAINS if key in name), math.sqrt(2.0))
            bound = gain * math.sqrt(3.0 / fan_in)
            value = _uniform(name, t.shape, -bound, bound)
        else:
            value = _uniform(name, t.shape, -0.1, 0.1)
        t.copy_(value)


def inputs() -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """The two uint8 images (integer arithmetic only: the same bytes everywhere) and their targets."""
    images = []
    for i, (h, w) in enumerate(SIZES):
        g = torch.Generator().manual_seed(100 + i)
        blocks = torch.randint(0, 256, (3, h // 10 + 1, w // 10 + 1), generator=g)
        img = blocks.repeat_interleave(10, 1).repeat_interleave(10, 2)[:, :h, :w]
        img = img + torch.randint(-20, 21, (3, h, w), generator=g)
        images.append(img.clamp(0, 255).to(torch.uint8))
    targets = [{"boxes": torch.tensor(b, dtype=torch.float32), "labels": torch.tensor(lab), "flip": f}
               for b, lab, f in zip(BOXES, LABELS, FLIPS)]
    return images, targets


def counts(labels: torch.Tensor) -> list[int]:
    """``[positives, negatives, ignored]`` of assignment labels (1 / 0 / -1)."""
    return [int((labels == 1).sum()), int((labels == 0).sum()), int((labels == -1).sum())]


@contextlib.contextmanager
def recording(model: nn.Module) -> Iterator[dict[str, list]]:
    """Record genattn's assignments and samples while the block runs: ``{'rpn_assigned', 'rpn_sampled',
    'roi_assigned', 'roi_sampled'}``, one entry per image (RoI assignment: the proposals only, without the
    ground truth that is added to them)."""
    log: dict[str, list] = {"rpn_assigned": [], "rpn_sampled": [], "roi_assigned": [], "roi_sampled": []}
    rpn_assign, roi_assign = rpn_module.max_iou_assign, roi_heads_module.max_iou_assign
    samplers = {"rpn": model.rpn_head.sampler, "roi": model.roi_head.sampler}

    def wrap_assign(fn, key):
        def assign(iou, *args):
            labels, matched = fn(iou, *args)
            log[key].append(counts(labels[iou.shape[0]:] if key == "roi_assigned" else labels))
            return labels, matched
        return assign

    def wrap_sampler(sampler, key):
        def sample(labels):
            pos, neg = sampler(labels)
            log[key] += [[int(p.sum()), int(n.sum())] for p, n in zip(pos, neg)]
            return pos, neg
        return sample

    rpn_module.max_iou_assign = wrap_assign(rpn_assign, "rpn_assigned")
    roi_heads_module.max_iou_assign = wrap_assign(roi_assign, "roi_assigned")
    model.rpn_head.sampler = wrap_sampler(samplers["rpn"], "rpn_sampled")
    model.roi_head.sampler = wrap_sampler(samplers["roi"], "roi_sampled")
    try:
        yield log
    finally:
        rpn_module.max_iou_assign, roi_heads_module.max_iou_assign = rpn_assign, roi_assign
        model.rpn_head.sampler, model.roi_head.sampler = samplers["rpn"], samplers["roi"]


def set_sampler_sizes(model: nn.Module, rpn: int, roi: int) -> None:
    """Change the samplers' sizes of a built model (torchvision's ``BalancedPositiveNegativeSampler``)."""
    model.rpn_head.sampler.batch_size_per_image = rpn
    model.roi_head.sampler.batch_size_per_image = roi


def measure(model: nn.Module) -> dict[str, Any]:
    """genattn's numbers of the case (the format of the fixture file's ``'mmdet'`` entry)."""
    images, targets = inputs()
    model.zero_grad(set_to_none=True)
    with recording(model) as log:
        losses = model(images, targets)
    sum(losses.values()).backward()
    params = dict(model.named_parameters())
    out: dict[str, Any] = {"losses": {k: v.item() for k, v in losses.items()}, **log,
                           "grad_norms": {k: params[k].grad.norm().item() for k in GRAD_PARAMS}}
    set_sampler_sizes(model, REAL_SAMPLERS["rpn"], REAL_SAMPLERS["roi"])
    try:
        with torch.no_grad(), recording(model) as log:
            model(images, targets)
    finally:
        set_sampler_sizes(model, EVERY, EVERY)
    out["real_samplers"] = {"rpn_sampled": log["rpn_sampled"], "roi_sampled": log["roi_sampled"]}
    return out
