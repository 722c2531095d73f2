"""Checkpoint files laid out as MMDetection writes them, for the weights and conversion tests.

The config texts follow the shape of MMDetection's ``meta['config']`` (2.x: the merged config as nested
``dict(...)`` calls; 1.x: the config file itself, ``**`` unpacking and all), written here by hand; the state
dicts are ours mapped back onto MMDetection's key layout (the converter's inverse, written independently).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from genattn.models.classes import COCO_CLASS_NAMES

_PLUGIN = """
        plugins=[
            dict(
                cfg=dict(
                    type='GeneralizedAttention',
                    spatial_range=-1,
                    num_heads=8,
                    attention_type='{att}',
                    kv_stride=2),
                stages=(False, False, True, True),
                position='after_conv2')
        ],"""
_DCN2 = """
        dcn=dict(type='DCN', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True),"""


def config_v2(att: str | None, dcn: bool, depth: int = 50) -> str:
    """MMDetection 2.x's ``Config.pretty_text`` of a Faster R-CNN with optional attention and DCN."""
    return f"""model = dict(
    type='FasterRCNN',
    pretrained='torchvision://resnet{depth}',
    backbone=dict(
        type='ResNet',
        depth={depth},
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        style='pytorch',{_PLUGIN.format(att=att) if att else ''}{_DCN2 if dcn else ''}
        init_cfg=None),
    neck=dict(
        type='FPN',
        in_channels=[256, 512, 1024, 2048],
        out_channels=256,
        num_outs=5),
    roi_head=dict(
        type='StandardRoIHead',
        bbox_head=dict(
            type='Shared2FCBBoxHead',
            in_channels=256,
            fc_out_channels=1024,
            roi_feat_size=7,
            num_classes=80,
            loss_cls=dict(
                type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0))),
    test_cfg=dict(
        rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)))
dataset_type = 'CocoDataset'
data_root = 'data/coco/'
img_norm_cfg = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
optimizer = dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001)
lr_config = dict(
    policy='step', warmup='linear', warmup_iters=500, warmup_ratio=0.001, step=[8, 11])
total_epochs = 12
work_dir = './work_dirs/faster_rcnn'
gpu_ids = range(0, 8)
"""


def config_v1(att: str | None, dcn: bool) -> str:
    """An MMDetection 1.x config file, as 1.x stored it in ``meta['config']``."""
    gen = ""
    if att:
        gen = f"""
        gen_attention=dict(
            spatial_range=-1, num_heads=8, attention_type='{att}', kv_stride=2),
        stage_with_gen_attention=[[], [], [0, 1, 2, 3, 4, 5], [0, 1, 2]],"""
    dcn_text = """
        dcn=dict(type='DCN', deformable_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True),""" if dcn else ""
    return f"""# model settings
model = dict(
    type='FasterRCNN',
    pretrained='torchvision://resnet50',
    backbone=dict(
        type='ResNet',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        style='pytorch',{gen}{dcn_text}
    ),
    neck=dict(
        type='FPN',
        in_channels=[256, 512, 1024, 2048],
        out_channels=256,
        num_outs=5),
    bbox_head=dict(
        type='SharedFCBBoxHead',
        num_fcs=2,
        in_channels=256,
        fc_out_channels=1024,
        roi_feat_size=7,
        num_classes=81,
        target_means=[0., 0., 0., 0.],
        target_stds=[0.1, 0.1, 0.2, 0.2],
        reg_class_agnostic=False))
# dataset settings
img_norm_cfg = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', img_scale=(1333, 800), keep_ratio=True),
    dict(type='Normalize', **img_norm_cfg),
]
total_epochs = 12
work_dir = './work_dirs/faster_rcnn_r50_fpn_attention_1x'
"""


def to_mmdet(state: dict[str, torch.Tensor], layout: str = "v2") -> dict[str, torch.Tensor]:
    """Our state dict in MMDetection's layout: ``neck.*.conv``; v1: ``bbox_head.*`` with the background class
    first (and 4 background regression rows), ``conv2_offset``."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^neck\.(lateral_convs|fpn_convs)\.(\d+)\.", r"neck.\1.\2.conv.", key)
        if layout == "v1":
            key = key.replace("roi_head.bbox_head.", "bbox_head.").replace(".conv2.conv_offset.", ".conv2_offset.")
            if key.startswith("bbox_head.fc_cls."):
                value = torch.cat([value[-1:], value[:-1]])  # background last -> first
            elif key.startswith("bbox_head.fc_reg."):
                value = torch.cat([torch.zeros_like(value[:4]), value])  # a background slot
        out[key] = value.clone()
    return out


def write_mmdet(path: Path, state: dict[str, torch.Tensor], *, config: str | None = None, layout: str = "v2",
                legacy: bool = False, **meta) -> Path:
    """Write an MMDetection-style checkpoint ``{'meta': {...}, 'state_dict': ...}``."""
    meta = {"mmdet_version": "2.0.0" if layout == "v2" else "1.0rc1+e12e8b9", "CLASSES": COCO_CLASS_NAMES,
            "epoch": 12, "iter": 87960, **meta}
    if config is not None:
        meta["config"] = config
    torch.save({"meta": meta, "state_dict": to_mmdet(state, layout)}, path,
               _use_new_zipfile_serialization=not legacy)
    return path
