"""MMDetection checkpoints -> our state dict: the full v1/v2 layouts of the seed models, class order, errors.

The MMDetection-layout state dicts are written out here by hand from the documented layout
(``shared/mmdet_faster_rcnn.md``: torchvision ResNet names, ``gen_attention_block``, ``conv2.conv_offset`` /
``conv2_offset``, ``neck.*.conv``, ``rpn_head``, ``roi_head.bbox_head`` / v1 ``bbox_head``), not derived from
the converter or from our model.
"""

import re
from collections import OrderedDict

import pytest
import torch

from genattn.models import MODELS, get_model, load_model, read_checkpoint
from genattn.models.classes import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from genattn.models.convert import convert_mmdet_checkpoint

# Parameters of mmcv's GeneralizedAttention that exist for each enabled term (E1, E2, E3, E4).
ATTENTION_KEYS = {
    "query_conv.weight": lambda t: t[0] or t[1],
    "key_conv.weight": lambda t: t[0] or t[2],
    "value_conv.weight": lambda t: True,
    "appr_geom_fc_x.weight": lambda t: t[1] or t[3],
    "appr_geom_fc_y.weight": lambda t: t[1] or t[3],
    "appr_bias": lambda t: t[2],
    "geom_bias": lambda t: t[3],
    "proj_conv.weight": lambda t: True,
    "proj_conv.bias": lambda t: True,
    "gamma": lambda t: True,
}


def attention_shape(key, c):
    return {"query_conv.weight": (c, c, 1, 1), "key_conv.weight": (c, c, 1, 1), "value_conv.weight": (c, c, 1, 1),
            "appr_geom_fc_x.weight": (c, c // 2), "appr_geom_fc_y.weight": (c, c // 2), "appr_bias": (c,),
            "geom_bias": (c,), "proj_conv.weight": (c, c, 1, 1), "proj_conv.bias": (c,), "gamma": (1,)}[key]


def mmdet_state_dict(attention_type, dcn, layout="v2", num_classes=80):
    """An all-zero state dict with MMDetection's key layout and shapes for Faster R-CNN R-50 FPN."""
    sd = {}

    def conv(name, out, inp, k, bias=False):
        sd[f"{name}.weight"] = torch.zeros(out, inp, k, k)
        if bias:
            sd[f"{name}.bias"] = torch.zeros(out)

    def bn(name, c):
        sd.update({f"{name}.weight": torch.ones(c), f"{name}.bias": torch.zeros(c),
                   f"{name}.running_mean": torch.zeros(c), f"{name}.running_var": torch.ones(c),
                   f"{name}.num_batches_tracked": torch.tensor(0)})

    conv("backbone.conv1", 64, 3, 7)
    bn("backbone.bn1", 64)
    inplanes = 64
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
        planes = 64 * 2 ** (stage - 1)
        for i in range(blocks):
            pre = f"backbone.layer{stage}.{i}"
            conv(f"{pre}.conv1", planes, inplanes, 1)
            bn(f"{pre}.bn1", planes)
            conv(f"{pre}.conv2", planes, planes, 3)
            if dcn and stage >= 2:
                conv(f"{pre}.conv2.conv_offset" if layout == "v2" else f"{pre}.conv2_offset", 18, planes, 3, True)
            bn(f"{pre}.bn2", planes)
            conv(f"{pre}.conv3", planes * 4, planes, 1)
            bn(f"{pre}.bn3", planes * 4)
            if i == 0:
                conv(f"{pre}.downsample.0", planes * 4, inplanes, 1)
                bn(f"{pre}.downsample.1", planes * 4)
            if attention_type and stage >= 3:
                bits = [c == "1" for c in attention_type]
                for key, present in ATTENTION_KEYS.items():
                    if present(bits):
                        sd[f"{pre}.gen_attention_block.{key}"] = torch.zeros(attention_shape(key, planes))
            inplanes = planes * 4
    for i, c in enumerate((256, 512, 1024, 2048)):
        conv(f"neck.lateral_convs.{i}.conv", 256, c, 1, True)
        conv(f"neck.fpn_convs.{i}.conv", 256, 256, 3, True)
    conv("rpn_head.rpn_conv", 256, 256, 3, True)
    conv("rpn_head.rpn_cls", 3, 256, 1, True)
    conv("rpn_head.rpn_reg", 12, 256, 1, True)
    head = "roi_head.bbox_head" if layout == "v2" else "bbox_head"
    reg_rows = 4 * num_classes if layout == "v2" else 4 * (num_classes + 1)
    for name, shape in (("shared_fcs.0", (1024, 256 * 49)), ("shared_fcs.1", (1024, 1024)),
                        ("fc_cls", (num_classes + 1, 1024)), ("fc_reg", (reg_rows, 1024))):
        sd[f"{head}.{name}.weight"] = torch.zeros(shape)
        sd[f"{head}.{name}.bias"] = torch.zeros(shape[0])
    return sd




@pytest.fixture(scope="module")
def seed_models():
    cache = {}

    def get(name):
        if name not in cache:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            cache[name] = get_model(name, min_size=64, max_size=64)
            torch.set_num_threads(threads)
        return cache[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["v2", "v1"])
@pytest.mark.parametrize("name", sorted(MODELS))  # the four seed models and the two reference points
def test_seed_model_layout_loads_strictly(seed_models, name, layout):
    info = MODELS[name]
    model = seed_models(name)
    sd = mmdet_state_dict(info.attention_type, info.dcn, layout)
    ours = convert_mmdet_checkpoint(sd, model)
    model.load_state_dict(ours, strict=True)
    assert len(ours) == len(model.state_dict())


def test_v1_class_order_and_regression_rows_are_remapped(seed_models):
    model = seed_models("faster_rcnn_r50_fpn_attention_0010_1x_coco")
    sd = mmdet_state_dict("0010", False, "v1")
    sd["bbox_head.fc_cls.bias"] = torch.arange(81.0)  # v1: row 0 = background
    sd["bbox_head.fc_reg.bias"] = torch.arange(324.0)  # v1: rows 0..3 = background
    ours = convert_mmdet_checkpoint(sd, model)
    assert ours["roi_head.bbox_head.fc_cls.bias"].tolist() == list(range(1, 81)) + [0]
    assert ours["roi_head.bbox_head.fc_reg.bias"].tolist() == list(range(4, 324))


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["v2", "v1"])
def test_class_order_same_class_same_category(seed_models, layout):
    """Class k of MMDetection (k-th COCO class, background last in v2 / first in v1) -> category id k."""
    model = seed_models("faster_rcnn_r50_fpn_attention_0010_1x_coco")
    sd = mmdet_state_dict("0010", False, layout)
    head = "roi_head.bbox_head" if layout == "v2" else "bbox_head"
    k = 17  # 'horse', COCO category id 19
    sd[f"{head}.shared_fcs.1.bias"] = torch.ones(1024)  # zero features -> the FC output is all ones
    sd[f"{head}.fc_cls.weight"][k + (layout == "v1")] = 0.01  # logit 10.24 for MMDetection's class k
    model.load_state_dict(convert_mmdet_checkpoint(sd, model), strict=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.no_grad():
        out = model.eval()([torch.rand(3, 64, 64)])[0]
    torch.set_num_threads(threads)
    assert out["labels"].numel() > 0
    assert set(out["labels"].tolist()) == {COCO_CATEGORY_IDS[k]} == {19}
    assert model.class_names[k] == "horse"


def _tiny_state(tiny_model):
    model = tiny_model()
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def test_own_checkpoint_round_trip_and_neck_conv_rename(tiny_model):
    model, sd = _tiny_state(tiny_model)
    assert convert_mmdet_checkpoint(sd, model).keys() == sd.keys()
    mm = {k.replace("neck.lateral_convs.0.", "neck.lateral_convs.0.conv."): v for k, v in sd.items()}
    mm = {"module." + k: v for k, v in mm.items() if not k.endswith("num_batches_tracked")}
    out = convert_mmdet_checkpoint(mm, model)
    model.load_state_dict(out, strict=True)  # num_batches_tracked taken from the model


def test_unmatched_misshaped_and_missing_keys_are_listed(tiny_model):
    model, sd = _tiny_state(tiny_model)
    sd["neck.extra_conv.weight"] = torch.zeros(1)
    sd["rpn_head.rpn_cls.weight"] = torch.zeros(5, 32, 1, 1)
    del sd["roi_head.bbox_head.fc_reg.bias"]
    with pytest.raises(ValueError) as err:
        convert_mmdet_checkpoint(sd, model)
    msg = str(err.value)
    assert "neck.extra_conv.weight" in msg
    assert "rpn_head.rpn_cls.weight [5, 32, 1, 1] (model: [3, 32, 1, 1])" in msg
    assert "roi_head.bbox_head.fc_reg.bias" in msg


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_released_mmdet2_file_loads_with_weights_only(tiny_model, tiny_config, tmp_path, legacy):
    """A file laid out like MMDetection 2.x's released checkpoints loads through ``weights_only=True``.

    mmcv's ``save_checkpoint`` writes ``{'meta', 'state_dict', 'optimizer'}``; the state dict is an OrderedDict
    carrying the module versions in ``_metadata``; MMDetection's ``publish_model.py`` drops the optimizer and
    saves in the pre-1.6 (non-zip) format, as the 2019/2020 files may be.
    """
    model, sd = _tiny_state(tiny_model)
    sd = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}  # not the fresh model's values
    mm = OrderedDict((re.sub(r"^(neck\.(lateral|fpn)_convs\.\d+)\.", r"\1.conv.", k), v) for k, v in sd.items())
    assert "neck.fpn_convs.3.conv.weight" in mm
    mm._metadata = OrderedDict([("", {"version": 1}), ("backbone", {"version": 1}), ("backbone.bn1", {"version": 2})])
    meta = {"mmdet_version": "2.0.0+5dd5b3a", "config": "model = dict(\n    type='FasterRCNN',\n" + "    ...\n" * 2000,
            "CLASSES": COCO_CLASS_NAMES, "epoch": 12, "iter": 87960, "time": "Thu Jan 30 13:41:07 2020",
            "env_info": "sys.platform: linux\nPython: 3.7.4\nCUDA available: True\nPyTorch: 1.4.0\n",
            "mmcv_version": "0.2.16", "seed": None, "exp_name": "faster_rcnn_r50_fpn_1x_coco.py",
            "hook_msgs": {"last_ckpt": "work_dirs/epoch_12.pth"}}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # momentum buffers in the optimizer state
    assert len(meta["CLASSES"]) == 80 and isinstance(meta["CLASSES"], tuple)
    for name, ckpt in (("trained", {"meta": meta, "state_dict": mm, "optimizer": optimizer.state_dict()}),
                       ("published", {"meta": meta, "state_dict": mm})):
        path = tmp_path / f"{name}.pth"
        torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        assert loaded["meta"] == meta and loaded["state_dict"]._metadata == mm._metadata
        # The public call: read, convert, strict load. (This config text is a damaged stand-in: it says nothing
        # about the model, which comes from the caller.)
        fresh, _ = load_model(tiny_config, str(path))
        for key, value in fresh.state_dict().items():
            assert torch.equal(value, sd[key]), key


def test_bad_files_give_one_line_errors(tiny_model, tmp_path):
    model, sd = _tiny_state(tiny_model)
    good = tmp_path / "good.pth"
    torch.save({"state_dict": sd, "meta": {"epoch": 12}}, good)
    convert_mmdet_checkpoint(read_checkpoint(good).state_dict, model)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": sd, "extra": torch.nn.ReLU()}, unsafe)  # a module needs code to unpickle
    not_sd = tmp_path / "not_sd.pth"
    torch.save({"epoch": 3}, not_sd)
    for path in (truncated, text, unsafe, not_sd, tmp_path / "missing.pth"):
        with pytest.raises(ValueError) as err:
            read_checkpoint(path)
        msg = str(err.value)
        assert path.name in msg and "\n" not in msg, msg
