"""Named models of the seed (MMDetection's ``empirical_attention`` configs) and their released weights.

Every name is built by one function, :func:`build_faster_rcnn`; a name only chooses the attention type and
whether stages 2-4 use deformable convolution::

    faster_rcnn_r50_fpn_1x_coco                     plain ResNet-50 (reference point)
    faster_rcnn_r50_fpn_dconv_c3-c5_1x_coco         DCN in stages 2-4 (reference point)
    faster_rcnn_r50_fpn_attention_XXXX_1x_coco      GeneralizedAttention 'XXXX' in stages 3-4
    faster_rcnn_r50_fpn_attention_XXXX_dcn_1x_coco  both

``XXXX`` is any of the 15 non-zero attention types; the four seed models ('1111', '0010', with and without
DCN) are in :data:`MODELS` with the seed's box AP, memory, fps and their checkpoint URL.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from genattn.models.anchors import AnchorGenerator
from genattn.models.convert import convert_mmdet_checkpoint
from genattn.models.detector import FPN, FasterRCNN
from genattn.models.resnet import ResNet
from genattn.models.roi_heads import BBoxHead, MultiLevelRoIAlign, RoIHead
from genattn.models.rpn import RPNHead
from genattn.models.transform import DetectionTransform

__all__ = ["MODELS", "ModelInfo", "COCO_CATEGORY_IDS", "COCO_CLASS_NAMES", "get_model", "list_models",
           "build_faster_rcnn", "load_weights", "download_checkpoint"]

COCO_CLASS_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
"""COCO's 80 class names in MMDetection's order (= ascending category id)."""

COCO_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)
"""COCO category id of each of the 80 classes, in the same order."""

_S3 = "https://open-mmlab.s3.ap-northeast-2.amazonaws.com/mmdetection/v2.0/empirical_attention/"
_MMDET = "https://download.openmmlab.com/mmdetection/v2.0/"
_NAME_RE = re.compile(r"^faster_rcnn_r50_fpn_attention_([01]{4})(_dcn)?_1x_coco$")
_PLAIN = "faster_rcnn_r50_fpn_1x_coco"
_DCN = "faster_rcnn_r50_fpn_dconv_c3-c5_1x_coco"


@dataclass(frozen=True)
class ModelInfo:
    """What the seed reports for a named model (V100, COCO val2017, 1x schedule).

    Attributes:
        name: The model name.
        attention_type: GeneralizedAttention type in stages 3-4, or None.
        dcn: Deformable conv2 in stages 2-4.
        box_ap: Seed box AP, or None when not reported.
        mem_gb: Seed training memory per GPU (GB), or None.
        fps: Seed inference speed (images/s; rough: later MMDetection READMEs list other values), or None.
        url: Released MMDetection checkpoint, or None.
        hash_prefix: First hex digits of the checkpoint's SHA-256 (from the file name), or None.
    """

    name: str
    attention_type: str | None
    dcn: bool
    box_ap: float | None = None
    mem_gb: float | None = None
    fps: float | None = None
    url: str | None = None
    hash_prefix: str | None = None


def _released(att: str, dcn: bool, ap: float, mem: float, fps: float, stamp: str) -> ModelInfo:
    name = f"faster_rcnn_r50_fpn_attention_{att}{'_dcn' if dcn else ''}_1x_coco"
    date, digest = stamp.split("-")
    return ModelInfo(name, att, dcn, ap, mem, fps, f"{_S3}{name}/{name}_{date}-{digest}.pth", digest)


MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        _released("1111", False, 40.0, 8.0, 5.6, "20200130-403cccba"),
        _released("0010", False, 39.1, 4.2, 17.0, "20200130-7cb0c14d"),
        _released("1111", True, 42.1, 8.0, 5.4, "20200130-8b2523a6"),
        _released("0010", True, 42.0, 4.2, 15.7, "20200130-1a2e831d"),
        # The two reference points' checkpoints are MMDetection's own (faster_rcnn/ and dcn/ model zoo pages).
        ModelInfo(_PLAIN, None, False, 37.4, 4.0, 21.4,
                  f"{_MMDET}faster_rcnn/{_PLAIN}/{_PLAIN}_20200130-047c8118.pth", "047c8118"),
        ModelInfo(_DCN, None, True, 41.3, None, None, f"{_MMDET}dcn/{_DCN}/{_DCN}_20200130-d68aed1e.pth", "d68aed1e"),
    )
}
"""The six named models with the seed's figures; other attention types are built from the name pattern."""


def list_models() -> list[str]:
    """Names in :data:`MODELS`, sorted (any ``faster_rcnn_r50_fpn_attention_XXXX[_dcn]_1x_coco`` also builds)."""
    return sorted(MODELS)


def model_info(name: str) -> ModelInfo:
    """The record of ``name``: from :data:`MODELS`, or made from the name pattern (no figures, no URL)."""
    if name in MODELS:
        return MODELS[name]
    m = _NAME_RE.match(name)
    if m is None or m.group(1) == "0000":
        close = difflib.get_close_matches(name, list_models(), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Known: {', '.join(list_models())}, or "
                         f"'faster_rcnn_r50_fpn_attention_XXXX[_dcn]_1x_coco' with XXXX a non-zero 0/1 type")
    return ModelInfo(name, m.group(1), bool(m.group(2)))


def build_faster_rcnn(
    backbone: nn.Module,
    num_classes: int,
    category_ids: Sequence[int],
    class_names: Sequence[str],
    *,
    min_size: int = 800,
    max_size: int = 1333,
    fpn_channels: int = 256,
    representation_size: int = 1024,
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_train: int = 1000,
    rpn_post_nms_top_n_test: int = 1000,
    rpn_nms_thresh: float = 0.7,
    rpn_batch_size_per_image: int = 256,
    box_batch_size_per_image: int = 512,
    box_score_thresh: float = 0.05,
    box_nms_thresh: float = 0.5,
    box_detections_per_img: int = 100,
) -> FasterRCNN:
    """Faster R-CNN + FPN around ``backbone`` with MMDetection's settings (arguments keep torchvision's names)."""
    neck = FPN(backbone.out_channels, fpn_channels, num_outs=5)
    rpn = RPNHead(fpn_channels, AnchorGenerator((4, 8, 16, 32, 64), (0.5, 1.0, 2.0), (8.0,)),
                  pre_nms_top_n_train=rpn_pre_nms_top_n_train, pre_nms_top_n_test=rpn_pre_nms_top_n_test,
                  post_nms_top_n_train=rpn_post_nms_top_n_train, post_nms_top_n_test=rpn_post_nms_top_n_test,
                  nms_thresh=rpn_nms_thresh, batch_size_per_image=rpn_batch_size_per_image)
    roi = RoIHead(MultiLevelRoIAlign((4, 8, 16, 32), 7, 0),
                  BBoxHead(fpn_channels, 7, representation_size, num_classes),
                  batch_size_per_image=box_batch_size_per_image, score_thresh=box_score_thresh,
                  nms_thresh=box_nms_thresh, detections_per_img=box_detections_per_img)
    return FasterRCNN(backbone, neck, rpn, roi, DetectionTransform(min_size, max_size), category_ids, class_names)


def get_model(
    name: str,
    weights: str | None = None,
    *,
    num_classes: int = 80,
    category_ids: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    backbone: dict[str, Any] | None = None,
    pretrained_backbone: str | None = None,
    **detector_kwargs: Any,
) -> FasterRCNN:
    """Build a named model, optionally with weights.

    Args:
        name: A name from :func:`list_models` or ``faster_rcnn_r50_fpn_attention_XXXX[_dcn]_1x_coco``.
        weights: A local path or URL of an MMDetection checkpoint or of one of ours, or ``'DEFAULT'`` for the
            name's released checkpoint (downloaded into the torch hub cache, SHA-256 prefix checked).
        num_classes: Foreground classes (80 for COCO).
        category_ids: Dataset category id per class; default COCO's ids when ``num_classes == 80``, else
            ``1..num_classes``.
        class_names: Name per class; default COCO's names, else ``'class_<id>'``.
        min_size, max_size: Short / long side limits of the resize (800, 1333).
        backbone: Overrides of the :class:`~genattn.models.resnet.ResNet` arguments, e.g.
            ``{'layers': (1, 1, 1, 1), 'base_width': 16, 'stem_width': 16}`` for a tiny CPU model.
        pretrained_backbone: ImageNet initialisation: ``'torchvision'`` (torchvision's ResNet-50/101 V1 weights,
            downloaded through torchvision), or a local file or URL of a torchvision ResNet state dict. Ignored if
            ``weights`` is given.
        **detector_kwargs: Passed to :func:`build_faster_rcnn` (``fpn_channels``, ``representation_size``,
            ``rpn_*`` / ``box_*`` settings).

    Returns:
        The model, in eval mode if ``weights`` were loaded, else in train mode.

    Raises:
        ValueError: Unknown name (with close matches), inconsistent classes, or a checkpoint that does not fit.
    """
    info = model_info(name)
    if category_ids is None:
        category_ids = COCO_CATEGORY_IDS if num_classes == 80 else tuple(range(1, num_classes + 1))
    if len(category_ids) != num_classes:
        raise ValueError(f"category_ids: {len(category_ids)} ids for num_classes={num_classes}")
    if class_names is None:
        class_names = COCO_CLASS_NAMES if tuple(category_ids) == COCO_CATEGORY_IDS else tuple(
            f"class_{c}" for c in category_ids)
    bb_kwargs: dict[str, Any] = dict(layers=(3, 4, 6, 3), frozen_stages=1, norm_eval=True)
    if info.attention_type is not None:
        bb_kwargs.update(attention_stages=(False, False, True, True), attention_position="after_conv2",
                         attention_cfg=dict(spatial_range=-1, num_heads=8, attention_type=info.attention_type,
                                            kv_stride=2))
    if info.dcn:
        bb_kwargs.update(dcn_stages=(False, True, True, True))
    bb_kwargs.update(backbone or {})
    resnet = ResNet(**bb_kwargs)
    if pretrained_backbone is not None and weights is None:
        from genattn.models.imagenet import load_imagenet_weights  # only needed here

        source = None if pretrained_backbone == "torchvision" else pretrained_backbone
        if source is not None and re.match(r"^https?://", source):
            source = download_checkpoint(source)
        load_imagenet_weights(resnet, source)
    model = build_faster_rcnn(resnet, num_classes, category_ids, class_names, min_size=min_size,
                              max_size=max_size, **detector_kwargs)
    if weights is not None:
        if weights == "DEFAULT":
            if info.url is None:
                raise ValueError(f"weights='DEFAULT': no released checkpoint for {name!r}")
            weights = info.url
        load_weights(model, weights)
        model.eval()
    return model


def download_checkpoint(url: str, hash_prefix: str | None = None, *, progress: bool = True) -> str:
    """Download ``url`` into ``<torch hub dir>/checkpoints`` once; return the local path.

    The SHA-256 of a new download must start with ``hash_prefix`` (default: the hex digits after the last '-'
    of the file name, torch hub's convention, when present); a mismatching file is deleted and an error raised.
    """
    filename = os.path.basename(url.split("?")[0])
    if hash_prefix is None:
        m = re.search(r"-([0-9a-f]{6,})\.", filename)
        hash_prefix = m.group(1) if m else None
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(folder, exist_ok=True)
    dst = os.path.join(folder, filename)
    if os.path.exists(dst):
        return dst
    tmp = f"{dst}.{os.getpid()}.partial"
    try:
        try:
            torch.hub.download_url_to_file(url, tmp, None, progress=progress)
        except Exception as e:  # URLError, HTTPError, timeouts...: one line naming the file
            raise RuntimeError(f"checkpoint {filename}: download from {url} failed: "
                               f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
        if hash_prefix is not None:
            sha = hashlib.sha256()
            with open(tmp, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    sha.update(block)
            digest = sha.hexdigest()
            if not digest.startswith(hash_prefix):
                raise RuntimeError(f"checkpoint {filename}: wrong hash (SHA-256 {digest[:len(hash_prefix)]}..., "
                                   f"expected {hash_prefix}...); the download is corrupt or not the released file")
        os.replace(tmp, dst)  # atomic: a half-written file never has the final name
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dst


def load_weights(model: FasterRCNN, path_or_url: str) -> FasterRCNN:
    """Load an MMDetection (v1 or v2) checkpoint or one of ours into ``model``, strictly.

    Args:
        model: The model to fill.
        path_or_url: Local file, or an ``http(s)://`` URL (downloaded once, hash-checked).

    Raises:
        ValueError / RuntimeError: One line naming the file and what is wrong with it.
    """
    path = path_or_url
    if re.match(r"^https?://", path_or_url):
        path = download_checkpoint(path_or_url)
    state = convert_mmdet_checkpoint(path, model)
    model.load_state_dict(state, strict=True)
    return model
