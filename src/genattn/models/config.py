"""What a detector is: one typed record, parsed from a model name once, and the one function that builds it.

A :class:`ModelConfig` holds everything that decides the architecture: the backbone's wiring
(:class:`BackboneConfig`, with the attention settings as an :class:`~genattn.attention.AttentionConfig`), the
FPN and heads (:class:`HeadsConfig`) and the resize limits. Model names are MMDetection's config names; this
module is the only place that reads or writes them::

    faster_rcnn_r50_fpn_1x_coco                     plain ResNet-50 (reference point)
    faster_rcnn_r50_fpn_dconv_c3-c5_1x_coco         DCN in stages 2-4 (reference point)
    faster_rcnn_r50_fpn_attention_XXXX_1x_coco      GeneralizedAttention 'XXXX' after conv2 in stages 3-4
    faster_rcnn_r50_fpn_attention_XXXX_dcn_1x_coco  both

(``r101`` for ResNet-101 likewise). ``ModelConfig.from_name(name)`` gives a name's configuration;
``config.name`` gives a configuration's name back (the identity: depth, attention type, DCN; details such as
the number of heads or a narrower test backbone do not change it). ``config.build(classes)`` builds the model.
"""

from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from genattn import settings
from genattn.attention import SEED_ATTENTION, AttentionConfig
from genattn.models.classes import Classes

__all__ = ["BackboneConfig", "HeadsConfig", "ModelConfig", "model_names", "name_in_file_name", "legacy_model_config"]

_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
_NAME = re.compile(r"faster_rcnn_r(?P<depth>50|101)_fpn_(?:(?P<dconv>dconv_c3-c5_)|attention_(?P<type>[01]{4})"
                   r"(?P<dcn>_dcn)?_)?1x_coco")
_STAGES_3_4 = (False, False, True, True)
_STAGES_2_4 = (False, True, True, True)
_NO_STAGES = (False, False, False, False)


def _format_name(depth: int, attention_type: str | None, dcn: bool) -> str:
    if attention_type is None:
        return f"faster_rcnn_r{depth}_fpn_{'dconv_c3-c5_' if dcn else ''}1x_coco"
    return f"faster_rcnn_r{depth}_fpn_attention_{attention_type}{'_dcn' if dcn else ''}_1x_coco"


def model_names(depth: int = 50) -> list[str]:
    """Every name the grammar accepts for a depth: two reference points and 15 attention types x DCN or not."""
    types = ["".join(bits) for bits in itertools.product("01", repeat=4) if "1" in bits]
    return [_format_name(depth, t, dcn) for t in (None, *types) for dcn in (False, True)]


def name_in_file_name(path: str | Path) -> str | None:
    """The model name a file name starts with (MMDetection's released files are ``<name>_<date>-<hash>.pth``),
    or None."""
    match = _NAME.match(Path(str(path).split("?")[0]).name)
    return match.group(0) if match else None


@dataclass(frozen=True)
class BackboneConfig:
    """The :class:`~genattn.models.resnet.ResNet` arguments (all but ``norm_layer``, a class: BatchNorm here);
    the defaults are the detection backbone's (ResNet-50, stem and layer1 frozen, BatchNorm statistics frozen),
    no attention, no DCN.

    ``ResNet`` checks the values when the backbone is built.
    """

    layers: tuple[int, ...] = (3, 4, 6, 3)
    base_width: int = 64
    stem_width: int = 64
    groups: int = 1
    width_per_group: int = 64
    attention_stages: tuple[bool, ...] = _NO_STAGES
    attention_position: str = "after_conv2"
    attention_cfg: AttentionConfig | None = None
    dcn_stages: tuple[bool, ...] = _NO_STAGES
    dcn_modulated: bool = False
    frozen_stages: int = 1
    norm_eval: bool = True
    with_cp: bool = False

    def __post_init__(self) -> None:
        if any(self.attention_stages) and self.attention_cfg is None:  # what ResNet would use: say it here
            object.__setattr__(self, "attention_cfg", SEED_ATTENTION)

    def build(self):
        """The ResNet."""
        from genattn.models.resnet import ResNet

        return ResNet(**{f.name: getattr(self, f.name) for f in fields(self)})

    @property
    def depth(self) -> int:
        """Layers of the ResNet (3 per bottleneck, plus the stem and the classifier's place): 50, 101, ..."""
        return 3 * sum(self.layers) + 2

    @property
    def label(self) -> str:
        """A short label for tables: 'R-50', 'X-101 32x4d', 'R-14 w16' (a narrow test backbone)."""
        text = f"R-{self.depth}" if self.groups == 1 else f"X-{self.depth} {self.groups}x{self.width_per_group}d"
        return text if self.base_width == 64 else f"{text} w{self.base_width}"


@dataclass(frozen=True)
class HeadsConfig:
    """FPN, RPN and box-head settings: torchvision's argument names, MMDetection's values."""

    fpn_channels: int = 256
    representation_size: int = 1024
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100


@dataclass(frozen=True)
class ModelConfig:
    """A Faster R-CNN + FPN detector: backbone, FPN and heads, resize limits.

    Attributes:
        backbone: the ResNet and its attention / DCN wiring.
        heads: FPN, RPN and box head.
        min_size, max_size: the keep-ratio resize (short side, long side limit).
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    min_size: int = 800
    max_size: int = 1333

    def __post_init__(self) -> None:
        for name in ("min_size", "max_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.max_size < self.min_size:
            raise ValueError(f"need min_size <= max_size, got {self.min_size}, {self.max_size}")

    # -- identity -------------------------------------------------------------------------------------------

    @classmethod
    def from_name(cls, name: str, **kwargs: Any):
        """The configuration a model name stands for (``kwargs``: further fields, e.g. a recipe's).

        Raises:
            ValueError: not a model name; the message lists close matches.
        """
        match = _NAME.fullmatch(name) if isinstance(name, str) else None
        if match is None or match.group("type") == "0000":
            close = difflib.get_close_matches(str(name), model_names(), n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown model {name!r}.{hint} Known: faster_rcnn_r50_fpn_1x_coco, "
                             f"faster_rcnn_r50_fpn_dconv_c3-c5_1x_coco, and "
                             f"faster_rcnn_r50_fpn_attention_XXXX[_dcn]_1x_coco with XXXX a non-zero 0/1 type")
        attention = match.group("type")
        backbone = BackboneConfig(
            layers=_DEPTHS[int(match.group("depth"))],
            attention_stages=_STAGES_3_4 if attention else _NO_STAGES,
            attention_cfg=settings.update(SEED_ATTENTION, {"attention_type": attention}, "attention_cfg")
            if attention else None,
            dcn_stages=_STAGES_2_4 if (match.group("dcn") or match.group("dconv")) else _NO_STAGES)
        return cls(backbone=backbone, **kwargs)

    @property
    def attention_type(self) -> str | None:
        """The attention type of the backbone's attention stages, or None without attention."""
        return self.backbone.attention_cfg.attention_type if any(self.backbone.attention_stages) else None

    @property
    def dcn(self) -> bool:
        return any(self.backbone.dcn_stages)

    @property
    def name(self) -> str:
        """The model name of this configuration's identity (depth, attention type, DCN)."""
        depth = self.backbone.depth
        return _format_name(depth if depth in _DEPTHS else 50, self.attention_type, self.dcn)

    # -- changes and files ----------------------------------------------------------------------------------

    def updated(self, changes: Mapping[str, Any] | Sequence[str] = (), where: str = "model"):
        """A copy with ``changes`` merged in deeply: a nested mapping, or ``key.sub=value`` strings."""
        if not isinstance(changes, Mapping):
            changes = settings.parse_assignments(changes)
        return settings.update(self, changes, where) if changes else self

    def with_impl(self, impl: str | None):
        """A copy whose attention blocks all compute with path ``impl`` (no change for None or a model
        without attention).

        Raises:
            ValueError: the path cannot compute this model's attention (e.g. 'key_only' for '1111').
        """
        if impl is None or self.attention_type is None:
            return self
        return self.updated({"backbone": {"attention_cfg": {"impl": impl}}})

    def model_config(self) -> "ModelConfig":
        """Just the model's part (a :class:`~genattn.engine.recipes.Recipe` is a ModelConfig plus training)."""
        return ModelConfig(**{f.name: getattr(self, f.name) for f in fields(ModelConfig)})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``'model'`` (the name) comes first for people and is checked on reading."""
        return {"model": self.name, **settings.to_dict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "model"):
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: unknown keys, wrong types, or a ``'model'`` name that the fields contradict.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
        data = dict(data)
        name = data.pop("model", None)
        config = settings.from_dict(cls, data, where)
        if name is not None and name != config.name:
            raise ValueError(f"{where}: 'model' says {name} but its settings describe {config.name}")
        return config

    # -- the model ------------------------------------------------------------------------------------------

    def build(self, classes: Classes | None = None):
        """The detector with initial weights (in train mode), for ``classes`` (default COCO's 80)."""
        from genattn.models.anchors import AnchorGenerator
        from genattn.models.detector import FPN, FasterRCNN
        from genattn.models.roi_heads import BBoxHead, MultiLevelRoIAlign, RoIHead
        from genattn.models.rpn import RPNHead
        from genattn.models.transform import DetectionTransform

        classes = classes or Classes.coco()
        h = self.heads
        backbone = self.backbone.build()
        neck = FPN(backbone.out_channels, h.fpn_channels, num_outs=5)
        rpn = RPNHead(h.fpn_channels, AnchorGenerator((4, 8, 16, 32, 64), (0.5, 1.0, 2.0), (8.0,)),
                      pre_nms_top_n_train=h.rpn_pre_nms_top_n_train, pre_nms_top_n_test=h.rpn_pre_nms_top_n_test,
                      post_nms_top_n_train=h.rpn_post_nms_top_n_train,
                      post_nms_top_n_test=h.rpn_post_nms_top_n_test, nms_thresh=h.rpn_nms_thresh,
                      batch_size_per_image=h.rpn_batch_size_per_image)
        roi = RoIHead(MultiLevelRoIAlign((4, 8, 16, 32), 7, 0),
                      BBoxHead(h.fpn_channels, 7, h.representation_size, len(classes)),
                      batch_size_per_image=h.box_batch_size_per_image, score_thresh=h.box_score_thresh,
                      nms_thresh=h.box_nms_thresh, detections_per_img=h.box_detections_per_img)
        return FasterRCNN(backbone, neck, rpn, roi, DetectionTransform(self.min_size, self.max_size),
                          classes.category_ids, classes.names)


def legacy_model_config(recipe: Mapping[str, Any], where: str = "recipe") -> ModelConfig:
    """The model of a genattn 0.1 record (checkpoint format v1): a name, ResNet keyword overrides, detector
    keyword arguments (``model_kwargs``) and the resize limits.

    Raises:
        ValueError: the record names an unknown model or holds unknown keys.
    """
    config = ModelConfig.from_name(recipe["model"])
    changes = {"backbone": dict(recipe.get("backbone") or {}), "heads": dict(recipe.get("model_kwargs") or {})}
    changes.update({k: recipe[k] for k in ("min_size", "max_size") if k in recipe})
    return config.updated(changes, where)
