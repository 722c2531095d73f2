"""The seed's named models (MMDetection's ``empirical_attention`` configs), their figures and released weights.

What a name means (attention type, DCN, depth) is decided in :mod:`genattn.models.config`; this module only
lists the six models of the seed's table with the seed's figures and their checkpoint URLs, and builds models by
name through :func:`genattn.models.weights.load_model`. Every one of the 15 attention types, with or without
DCN, builds from its name (``faster_rcnn_r50_fpn_attention_XXXX[_dcn]_1x_coco``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from genattn.models.classes import Classes
from genattn.models.config import ModelConfig
from genattn.models.detector import FasterRCNN

__all__ = ["MODELS", "ModelInfo", "get_model", "list_models", "study_models"]

_S3 = "https://open-mmlab.s3.ap-northeast-2.amazonaws.com/mmdetection/v2.0/empirical_attention/"
_MMDET = "https://download.openmmlab.com/mmdetection/v2.0/"
_PLAIN = "faster_rcnn_r50_fpn_1x_coco"
_DCN = "faster_rcnn_r50_fpn_dconv_c3-c5_1x_coco"


@dataclass(frozen=True)
class ModelInfo:
    """What the seed reports for a named model (V100, COCO val2017, 1x schedule).

    Attributes:
        name: The model name (:meth:`ModelConfig.from_name` gives its configuration).
        box_ap: Seed box AP, or None when not reported.
        mem_gb: Seed training memory per GPU (GB), or None.
        fps: Seed inference speed (images/s; rough: later MMDetection READMEs list other values), or None.
        url: Released MMDetection checkpoint.
    """

    name: str
    box_ap: float | None
    mem_gb: float | None
    fps: float | None
    url: str

    @property
    def config(self) -> ModelConfig:
        return ModelConfig.from_name(self.name)

    @property
    def attention_type(self) -> str | None:
        return self.config.attention_type

    @property
    def dcn(self) -> bool:
        return self.config.dcn

    @property
    def hash_prefix(self) -> str:
        """First hex digits of the checkpoint's SHA-256 (torch hub's convention: after the last '-')."""
        return self.url.rsplit("-", 1)[1].split(".")[0]


def _released(name: str, ap: float | None, mem: float | None, fps: float | None, stamp: str, *,
              base: str = _S3) -> ModelInfo:
    return ModelInfo(name, ap, mem, fps, f"{base}{name}/{name}_{stamp}.pth")


# Ordered as the study compares them: the reference point, then the cheap '0010' and the full '1111'; the same
# with DCN.
MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        # The two reference points' checkpoints are MMDetection's own (faster_rcnn/ and dcn/ model zoo pages).
        _released(_PLAIN, 37.4, 4.0, 21.4, "20200130-047c8118", base=f"{_MMDET}faster_rcnn/"),
        _released("faster_rcnn_r50_fpn_attention_0010_1x_coco", 39.1, 4.2, 17.0, "20200130-7cb0c14d"),
        _released("faster_rcnn_r50_fpn_attention_1111_1x_coco", 40.0, 8.0, 5.6, "20200130-403cccba"),
        _released(_DCN, 41.3, None, None, "20200130-d68aed1e", base=f"{_MMDET}dcn/"),
        _released("faster_rcnn_r50_fpn_attention_0010_dcn_1x_coco", 42.0, 4.2, 15.7, "20200130-1a2e831d"),
        _released("faster_rcnn_r50_fpn_attention_1111_dcn_1x_coco", 42.1, 8.0, 5.4, "20200130-8b2523a6"),
    )
}
"""The six named models of the seed's table with its figures; other attention types build from their names."""


def list_models() -> list[str]:
    """Names in :data:`MODELS`, sorted (any ``faster_rcnn_r50_fpn_attention_XXXX[_dcn]_1x_coco`` also builds)."""
    return sorted(MODELS)


def study_models(dcn: bool = False) -> tuple[str, ...]:
    """The models the seed's study compares, cheapest first: the reference point (no attention), '0010' and
    '1111'; with ``dcn``, the DCN variants of the two attention models."""
    return tuple(n for n, m in MODELS.items() if m.dcn == dcn and (not dcn or m.attention_type))


def get_model(
    name: str,
    weights: str | None = None,
    *,
    num_classes: int | None = None,
    category_ids: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    backbone: dict[str, Any] | None = None,
    pretrained_backbone: str | None = None,
    **heads: Any,
) -> FasterRCNN:
    """Build a named model, optionally with weights.

    Args:
        name: A name from :func:`list_models` or ``faster_rcnn_r50_fpn_attention_XXXX[_dcn]_1x_coco``.
        weights: A local path or URL of an MMDetection checkpoint or of one of ours, or ``'DEFAULT'`` for the
            name's released checkpoint (downloaded into the torch hub cache, SHA-256 prefix checked). The file
            must hold the named model (MMDetection's files say so in their config).
        num_classes, category_ids, class_names: The classes (default: the checkpoint's, else COCO's 80; with
            only ``num_classes``, ids ``1..num_classes``).
        min_size, max_size: Short / long side limits of the resize (800, 1333).
        backbone: Changes to the backbone's settings (:class:`~genattn.models.config.BackboneConfig`, merged
            key by key), e.g. ``{'layers': (1, 1, 1, 1), 'base_width': 16, 'stem_width': 16}`` for a tiny CPU
            model or ``{'attention_cfg': {'impl': 'chunked'}}``.
        pretrained_backbone: ImageNet initialisation: ``'torchvision'`` (torchvision's ResNet V1 weights), or
            a local file or URL of a torchvision ResNet state dict. Ignored if ``weights`` is given.
        **heads: FPN and head settings (:class:`~genattn.models.config.HeadsConfig`: ``fpn_channels``,
            ``representation_size``, ``rpn_*`` / ``box_*``).

    Returns:
        The model, in eval mode if ``weights`` were loaded, else in train mode.

    Raises:
        ValueError: Unknown name (with close matches), unknown settings, inconsistent classes, or a checkpoint
            that does not fit.
    """
    from genattn.models.weights import load_model

    config = ModelConfig.from_name(name)
    if weights == "DEFAULT":
        if name not in MODELS:
            raise ValueError(f"weights='DEFAULT': no released checkpoint for {name!r}")
        weights = MODELS[name].url
    changes: dict[str, Any] = {"backbone": dict(backbone or {}), "heads": heads}
    changes.update({k: v for k, v in (("min_size", min_size), ("max_size", max_size)) if v is not None})
    classes = None
    if num_classes is not None or category_ids is not None or class_names is not None:
        classes = Classes.make(num_classes, category_ids, class_names)
    model, _ = load_model(config, weights, changes=changes, classes=classes,
                          pretrained_backbone=None if weights is not None else pretrained_backbone)
    return model
