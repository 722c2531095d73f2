"""MMDetection 2.28.2's training side for ``mmdet_train_parity.py``: its train pipeline on an in-memory batch,
its ``forward_train`` with its assignments, samples and proposals recorded, its anchors in a float64 comparison,
its parameter names mapped to genattn's, and its model of the CI case.

Imported by ``mmdet_train_parity.py`` (after ``mmdet_parity``, which installs the ``mmcv.ops`` shim).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

import mmdet_parity as mp
import mmdet_training_case as case

import mmcv
from mmcv.parallel import collate
from mmdet.datasets.pipelines import Compose
from mmdet.models import build_detector
from mmdet.models.backbones import ResNet as MMResNet
from mmdet.models.backbones.resnet import Bottleneck as MMBottleneck

from genattn.models.convert import convert_mmdet_checkpoint

EVERY = case.EVERY


def mmdet_train_batch(cfg: mmcv.Config, rgb: list[np.ndarray], targets: list[dict], scale: tuple[int, int],
                      labels: list[torch.Tensor]) -> dict[str, Any]:
    """MMDetection's train pipeline from Resize on (flip ratio 1 or 0 as the targets say) and its collate."""
    samples = []
    for img, t, lab in zip(rgb, targets, labels):
        steps = [dict(s) for s in cfg.data.train.pipeline[2:]]
        for s in steps:
            if s["type"] == "Resize":
                s["img_scale"] = (scale[1], scale[0])
            if s["type"] == "RandomFlip":
                s["flip_ratio"] = 1.0 if t["flip"] else 0.0
        bgr = np.ascontiguousarray(img[..., ::-1])
        data = dict(img=bgr, img_shape=bgr.shape, ori_shape=bgr.shape, img_fields=["img"], bbox_fields=["gt_bboxes"],
                    gt_bboxes=t["boxes"].numpy().astype(np.float32), gt_labels=lab.numpy().astype(np.int64),
                    filename=None, ori_filename=None)
        samples.append(Compose(steps)(data))
    batch = collate(samples, samples_per_gpu=len(samples))
    return {"img": batch["img"].data[0], "img_metas": batch["img_metas"].data[0],
            "gt_bboxes": batch["gt_bboxes"].data[0], "gt_labels": batch["gt_labels"].data[0]}


def float64_anchors(mm: nn.Module) -> None:
    """Recompute MMDetection's base anchors in float64 (its own ``gen_base_anchors``; it makes them in float32
    whatever the model's dtype): its proposals then come from the float64 anchors genattn has."""
    gen = mm.rpn_head.prior_generator
    gen.scales, gen.ratios = gen.scales.double(), gen.ratios.double()
    gen.base_anchors = gen.gen_base_anchors()


def mmdet_training_anchors(ours: nn.Module) -> None:
    """Give genattn's RPN MMDetection's training anchors: ``AnchorHead.get_anchors`` makes the anchor grid in
    float32 whatever the model's dtype (and its box targets are float32: a float64 grid cannot be asked for), so
    genattn's float32 anchors, which equal them bit for bit, are used cast to the model's dtype. Which anchors tie
    for a ground truth's best IoU depends on it."""
    gen = ours.rpn_head.anchor_generator
    forward = gen.forward

    def float32_anchors(feature_sizes, dtype=torch.float32, device=None):
        return [a.to(dtype) for a in forward(feature_sizes, torch.float32, device)]

    gen.forward = float32_anchors


def name_map(mm: nn.Module, ours: nn.Module) -> dict[str, str]:
    """MMDetection parameter / buffer name -> genattn's, as genattn's checkpoint converter maps them."""
    state = mm.state_dict(keep_vars=True)
    ids = {id(v): k for k, v in convert_mmdet_checkpoint(state, ours).items()}
    return {k: ids[id(v)] for k, v in state.items() if id(v) in ids}


class MMRecorder:
    """Records MMDetection's assignments, samples and proposals (wrapping the heads' assigners and samplers)."""

    def __init__(self, mm: nn.Module) -> None:
        self.log: dict[str, list] = {}
        self.proposals: list[torch.Tensor] = []
        rpn, roi = mm.rpn_head, mm.roi_head
        rpn.assigner.assign = self._assign(rpn.assigner.assign, "rpn_assigned")
        roi.bbox_assigner.assign = self._assign(roi.bbox_assigner.assign, "roi_assigned")
        rpn.sampler.sample = self._sample(rpn.sampler.sample, "rpn_sampled")
        roi.bbox_sampler.sample = self._sample(roi.bbox_sampler.sample, "roi_sampled")
        forward_train = roi.forward_train

        def roi_forward_train(x, img_metas, proposal_list, *args, **kwargs):
            self.proposals = [p[:, :4].detach().clone() for p in proposal_list]
            return forward_train(x, img_metas, proposal_list, *args, **kwargs)

        roi.forward_train = roi_forward_train
        self.reset()

    def reset(self) -> None:
        self.log = {"rpn_assigned": [], "rpn_sampled": [], "roi_assigned": [], "roi_sampled": []}

    def _assign(self, fn, key):
        def assign(*args, **kwargs):
            result = fn(*args, **kwargs)
            g = result.gt_inds
            self.log[key].append([int((g > 0).sum()), int((g == 0).sum()), int((g < 0).sum())])
            return result
        return assign

    def _sample(self, fn, key):
        def sample(*args, **kwargs):
            result = fn(*args, **kwargs)
            self.log[key].append([int(result.pos_inds.numel()), int(result.neg_inds.numel())])
            return result
        return sample


def mm_losses(mm: nn.Module, batch: dict[str, Any], dtype: torch.dtype, img: torch.Tensor) -> dict[str, torch.Tensor]:
    """MMDetection's ``forward_train`` on ``img``; per-level RPN losses summed, accuracies dropped."""
    out = mm.forward_train(img.to(dtype), batch["img_metas"], [b.to(dtype) for b in batch["gt_bboxes"]],
                           batch["gt_labels"])
    return {k: (sum(v) if isinstance(v, (list, tuple)) else v) for k, v in out.items() if k.startswith("loss")}


def tiny_mmdet(ours: nn.Module) -> tuple[nn.Module, mmcv.Config, dict[str, str]]:
    """MMDetection's model of the CI case (``tests/engine/mmdet_training_case.py``) with genattn's weights."""
    cfg = mmcv.Config.fromfile(os.path.join(mp.config_dir(), mp.CONFIGS[case.MODEL]))
    cfg.model.pretrained = None
    cfg.model.backbone.init_cfg = None
    # One bottleneck per stage: an architecture entry of MMDetection's own ResNet (its blocks, its wiring).
    MMResNet.arch_settings = {**MMResNet.arch_settings, 14: (MMBottleneck, tuple(case.BACKBONE["layers"]))}
    width, fpn, fc = case.BACKBONE["base_width"], case.HEADS["fpn_channels"], case.HEADS["representation_size"]
    cfg.model.backbone.update(depth=14, base_channels=width, stem_channels=case.BACKBONE["stem_width"])
    cfg.model.neck.update(in_channels=[width * 4 * 2 ** i for i in range(4)], out_channels=fpn)
    cfg.model.rpn_head.update(in_channels=fpn, feat_channels=fpn)
    cfg.model.roi_head.bbox_roi_extractor.out_channels = fpn
    cfg.model.roi_head.bbox_head.update(in_channels=fpn, fc_out_channels=fc)
    cfg.model.train_cfg.rpn.sampler.num = EVERY
    cfg.model.train_cfg.rcnn.sampler.num = EVERY
    mm = build_detector(cfg.model).double()
    float64_anchors(mm)
    names = name_map(mm, ours)
    state = ours.state_dict()
    mm.load_state_dict({k: state[names[k]] for k in mm.state_dict()})
    return mm.train(), cfg, names
