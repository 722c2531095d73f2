"""The model an MMDetection config text describes: 2.x and 1.x syntax, read without executing anything."""

import pytest

from mmdet_files import config_v1, config_v2
from genattn.attention import AttentionConfig
from genattn.models import ModelConfig
from genattn.models.mmdet_config import Opaque, model_config_from_mmdet, parse_config_text


@pytest.mark.parametrize("make", [config_v2, config_v1], ids=["2.x", "1.x"])
@pytest.mark.parametrize("att, dcn", [("1111", False), ("0010", True), (None, True), (None, False), ("0101", True)])
def test_seed_configs_give_the_named_models(make, att, dcn):
    config = model_config_from_mmdet(make(att, dcn), "f.pth")
    name = ModelConfig.from_name(
        f"faster_rcnn_r50_fpn_attention_{att}{'_dcn' if dcn else ''}_1x_coco" if att else
        f"faster_rcnn_r50_fpn_{'dconv_c3-c5_' if dcn else ''}1x_coco")
    assert config == name  # every setting, not only the name: heads 8, kv_stride 2, stages, frozen, norm_eval


def test_depth_101_and_other_attention_settings():
    text = config_v2("1111", False, depth=101).replace("num_heads=8", "num_heads=4").replace(
        "kv_stride=2)", "kv_stride=1, position_magnitude=2)")
    config = model_config_from_mmdet(text, "f.pth")
    assert config.backbone.layers == (3, 4, 23, 3) and config.name == "faster_rcnn_r101_fpn_attention_1111_1x_coco"
    assert config.backbone.attention_cfg == AttentionConfig(num_heads=4, kv_stride=1, position_magnitude=2.0,
                                                            attention_type="1111")


def test_resnext():
    text = config_v2(None, False, depth=101).replace("type='ResNet',", "type='ResNeXt',\n        groups=32,\n"
                                                                        "        base_width=4,")
    config = model_config_from_mmdet(text, "f.pth")
    assert (config.backbone.groups, config.backbone.width_per_group, config.backbone.label) == (32, 4, "X-101 32x4d")


def test_literals_only():
    values = parse_config_text("a = dict(b=[1, (2, 3)], c={'d': None})\nx = range(0, 8)\n"
                               "y = dict(type='Normalize', **img_norm_cfg)\nz = -1\nw = 1 + 2\n")
    assert values["a"] == {"b": [1, (2, 3)], "c": {"d": None}} and values["z"] == -1
    assert values["x"] == Opaque("range(0, 8)") and isinstance(values["y"], Opaque) and isinstance(values["w"], Opaque)


def test_code_in_the_config_is_never_run(tmp_path):
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    text = config_v2("0010", False).replace("pretrained='torchvision://resnet50'", f"pretrained={code}")
    text = f"import os\n{code}\n" + text + f"exec({code!r})\nx = eval({code!r})\n"
    assert model_config_from_mmdet(text, "f.pth").name == "faster_rcnn_r50_fpn_attention_0010_1x_coco"
    # Needed values that are code are refused, not evaluated.
    bad = config_v2("0010", False).replace("num_heads=8", f"num_heads={code}")
    with pytest.raises(ValueError, match=r"f\.pth: .*plugins\[0\]\.cfg holds non-literal values"):
        model_config_from_mmdet(bad, "f.pth")
    assert not marker.exists()


@pytest.mark.parametrize("edit, message", [
    (("depth=50", "depth=34"), "ResNet depth 34"),
    (("style='pytorch'", "style='caffe'"), "style='caffe'"),
    (("type='GeneralizedAttention'", "type='NonLocal2d'"), "plugin 'NonLocal2d'"),
    (("num_heads=8,", "num_heads=8, qk_dim=3,"), "arguments genattn does not know: \\['qk_dim'\\]"),
    (("deform_groups=1", "deform_groups=4"), "deformable groups 4"),
    (("type='FasterRCNN'", "type='MaskRCNN'"), "detector type 'MaskRCNN'"),
])
def test_models_genattn_does_not_build_are_named(edit, message):
    text = config_v2("0010", True).replace(*edit)
    with pytest.raises(ValueError, match=f"checkpoint f.pth: its config describes a model genattn does not build: "
                                         f".*{message}"):
        model_config_from_mmdet(text, "f.pth")


def test_partial_stages_in_1x_are_refused():
    text = config_v1("1111", False).replace("[0, 1, 2, 3, 4, 5]", "[0, 2, 4]")
    with pytest.raises(ValueError, match=r"attention in some blocks of a stage only \(\[0, 2, 4\] of 6"):
        model_config_from_mmdet(text, "f.pth")


@pytest.mark.parametrize("text", [None, 12, "", "work_dir = './x'\n", "model = dict(type='FasterRCNN')\n",
                                  "model = dict(\n    type='FasterRCNN',\n    ...\n"])
def test_texts_that_say_nothing_give_none(text):
    assert model_config_from_mmdet(text, "f.pth") is None
