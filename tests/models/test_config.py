"""What a model is: names <-> configurations, the records' fields, building."""

import inspect

import pytest

from genattn.attention import SEED_ATTENTION, AttentionConfig
from genattn.models import MODELS, BackboneConfig, ModelConfig
from genattn.models.config import model_names, name_in_file_name
from genattn.models.resnet import ResNet

S34, S234, NONE = (False, False, True, True), (False, True, True, True), (False,) * 4


def test_every_name_round_trips():
    names = model_names()
    assert len(names) == len(set(names)) == 32  # two reference points + 15 types, each with and without DCN
    for name in names + model_names(101):
        assert ModelConfig.from_name(name).name == name


@pytest.mark.parametrize("name, attention, dcn_stages", [
    ("faster_rcnn_r50_fpn_1x_coco", None, NONE),
    ("faster_rcnn_r50_fpn_dconv_c3-c5_1x_coco", None, S234),
    ("faster_rcnn_r50_fpn_attention_0010_1x_coco", "0010", NONE),
    ("faster_rcnn_r50_fpn_attention_1111_dcn_1x_coco", "1111", S234),
])
def test_names_mean_the_seeds_wiring(name, attention, dcn_stages):
    bb = ModelConfig.from_name(name).backbone
    assert (bb.layers, bb.frozen_stages, bb.norm_eval, bb.attention_position) == ((3, 4, 6, 3), 1, True,
                                                                                   "after_conv2")
    assert bb.dcn_stages == dcn_stages and not bb.dcn_modulated
    if attention is None:
        assert bb.attention_stages == NONE and bb.attention_cfg is None
    else:
        assert bb.attention_stages == S34
        assert bb.attention_cfg == AttentionConfig(spatial_range=-1, num_heads=8, attention_type=attention,
                                                   kv_stride=2)


def test_released_file_names_name_their_models():
    for name, info in MODELS.items():
        file = info.url.rsplit("/", 1)[1]
        assert name_in_file_name(file) == name and name_in_file_name(info.url) == name
        assert name_in_file_name(f"/some/dir/{file}") == name
    assert name_in_file_name("faster_rcnn_r50_fpn_dconv_c3-c5_1x_coco_20200130-d68aed1e.pth") == \
        "faster_rcnn_r50_fpn_dconv_c3-c5_1x_coco"  # the hyphen in the name
    for other in ("latest.pth", "epoch_12.pth", "my_faster_rcnn_r50_fpn_1x_coco.pth", "faster_rcnn_r50_fpn_2x_coco.pth"):
        assert name_in_file_name(other) is None


@pytest.mark.parametrize("name, close", [
    ("faster_rcnn_r50_fpn_attention_1111_1x_coc", "faster_rcnn_r50_fpn_attention_1111_1x_coco"),
    ("faster_rcnn_r50_fpn_attention_0000_1x_coco", "faster_rcnn_r50_fpn_attention_0010_1x_coco"),
    ("faster_rcnn_r50_fpn_attention_1112_1x_coco", "faster_rcnn_r50_fpn_attention_1111_1x_coco"),
    ("faster_rcnn_r50_fpn_dconv_c3_c5_1x_coco", "faster_rcnn_r50_fpn_dconv_c3-c5_1x_coco"),
])
def test_unknown_names_list_close_matches(name, close):
    with pytest.raises(ValueError, match="Did you mean") as err:
        ModelConfig.from_name(name)
    assert close in str(err.value)


def test_backbone_config_is_resnets_arguments():
    params = [p for p in inspect.signature(ResNet).parameters if p not in ("self", "norm_layer")]  # (a class)
    assert [f for f in BackboneConfig.__dataclass_fields__] == params
    assert BackboneConfig(attention_stages=S34).attention_cfg == SEED_ATTENTION  # what ResNet would use


def test_identity_and_labels():
    tiny = ModelConfig.from_name("faster_rcnn_r50_fpn_attention_0010_1x_coco").updated(
        {"backbone": {"layers": (1, 1, 1, 1), "base_width": 16}})
    assert tiny.name == "faster_rcnn_r50_fpn_attention_0010_1x_coco"  # details do not change the identity
    assert (tiny.backbone.label, tiny.attention_type, tiny.dcn) == ("R-14 w16", "0010", False)
    assert ModelConfig.from_name("faster_rcnn_r101_fpn_1x_coco").backbone.label == "R-101"
    assert BackboneConfig(groups=32, width_per_group=4).label == "X-50 32x4d"
    assert ModelConfig().name == "faster_rcnn_r50_fpn_1x_coco"


def test_with_impl_sets_every_block_and_leaves_plain_models_alone():
    att = ModelConfig.from_name("faster_rcnn_r50_fpn_attention_1111_1x_coco").with_impl("chunked")
    assert att.backbone.attention_cfg.impl == "chunked" and att.backbone.attention_cfg.num_heads == 8
    model = att.updated({"backbone": {"layers": (1, 1, 1, 1), "base_width": 8, "stem_width": 8}}).build()
    blocks = [m for m in model.modules() if type(m).__name__ == "GeneralizedAttention"]
    assert len(blocks) == 2 and {b.impl for b in blocks} == {"chunked"}
    plain = ModelConfig.from_name("faster_rcnn_r50_fpn_1x_coco")
    assert plain.with_impl("key_only") is plain and plain.with_impl(None) is plain
    with pytest.raises(ValueError, match="impl='key_only' needs attention_type '0010'"):
        att.with_impl("key_only")


def test_dict_round_trip_names_the_model():
    config = ModelConfig.from_name("faster_rcnn_r50_fpn_attention_0010_dcn_1x_coco").updated(["min_size=600"])
    data = config.to_dict()
    assert next(iter(data)) == "model" and data["model"] == config.name and data["min_size"] == 600
    assert ModelConfig.from_dict(data) == config
    with pytest.raises(ValueError, match="need min_size <= max_size"):
        config.updated({"min_size": 2000})
