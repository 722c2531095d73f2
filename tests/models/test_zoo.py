"""Model names, records, construction wiring and weight download (never from the network)."""

import dataclasses
import hashlib
import io

import pytest
import torch

from genattn.models import MODELS, get_model, list_models
from genattn.models.classes import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from genattn.models.weights import download
from genattn.models.zoo import study_models


def test_names_and_records():
    assert list_models() == sorted([
        "faster_rcnn_r50_fpn_1x_coco", "faster_rcnn_r50_fpn_dconv_c3-c5_1x_coco",
        "faster_rcnn_r50_fpn_attention_1111_1x_coco", "faster_rcnn_r50_fpn_attention_0010_1x_coco",
        "faster_rcnn_r50_fpn_attention_1111_dcn_1x_coco", "faster_rcnn_r50_fpn_attention_0010_dcn_1x_coco"])
    m = MODELS["faster_rcnn_r50_fpn_attention_1111_1x_coco"]
    assert (m.attention_type, m.dcn, m.box_ap, m.mem_gb, m.fps) == ("1111", False, 40.0, 8.0, 5.6)
    assert m.hash_prefix == "403cccba" and m.url.endswith("_20200130-403cccba.pth")
    assert MODELS["faster_rcnn_r50_fpn_attention_0010_dcn_1x_coco"].hash_prefix == "1a2e831d"
    assert MODELS["faster_rcnn_r50_fpn_1x_coco"].box_ap == 37.4
    assert all(m.url.endswith(f"-{m.hash_prefix}.pth") for m in MODELS.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.box_ap = 0.0
    assert len(COCO_CATEGORY_IDS) == len(COCO_CLASS_NAMES) == 80 and COCO_CATEGORY_IDS[-1] == 90
    assert study_models() == ("faster_rcnn_r50_fpn_1x_coco", "faster_rcnn_r50_fpn_attention_0010_1x_coco",
                              "faster_rcnn_r50_fpn_attention_1111_1x_coco")
    assert study_models(dcn=True) == ("faster_rcnn_r50_fpn_attention_0010_dcn_1x_coco",
                                      "faster_rcnn_r50_fpn_attention_1111_dcn_1x_coco")


@pytest.mark.parametrize("name, close", [
    ("faster_rcnn_r50_fpn_attention_1111_1x_coc", "faster_rcnn_r50_fpn_attention_1111_1x_coco"),
    ("faster_rcnn_r50_fpn_attention_0000_1x_coco", "faster_rcnn_r50_fpn_attention_0010_1x_coco"),
    ("faster_rcnn_r50_fpn_attention_1112_1x_coco", "faster_rcnn_r50_fpn_attention_1111_1x_coco"),
])
def test_unknown_name_lists_close_matches(name, close):
    with pytest.raises(ValueError, match="Did you mean") as err:
        get_model(name)
    assert close in str(err.value)


def test_wiring_of_pattern_names(tiny_kwargs):
    model = get_model("faster_rcnn_r50_fpn_attention_0101_dcn_1x_coco", **tiny_kwargs)
    bb = model.backbone
    assert hasattr(bb.layer4[0], "gen_attention_block") and not hasattr(bb.layer2[0], "gen_attention_block")
    keys = model.state_dict().keys()
    assert "backbone.layer2.0.conv2.conv_offset.weight" in keys
    assert "backbone.layer1.0.conv2.conv_offset.weight" not in keys
    assert "backbone.layer3.0.gen_attention_block.geom_bias" in keys  # E4 on
    assert "backbone.layer3.0.gen_attention_block.appr_bias" not in keys  # E3 off
    plain = get_model("faster_rcnn_r50_fpn_1x_coco", **tiny_kwargs)
    assert not any("gen_attention_block" in k or "conv_offset" in k for k in plain.state_dict())
    assert plain.backbone.frozen_stages == 1 and plain.backbone.norm_eval


def test_class_arguments(tiny_kwargs):
    m = get_model("faster_rcnn_r50_fpn_1x_coco", num_classes=2, **tiny_kwargs)
    assert m.category_ids == (1, 2) and m.roi_head.bbox_head.fc_cls.out_features == 3
    with pytest.raises(ValueError, match="category_ids"):
        get_model("faster_rcnn_r50_fpn_1x_coco", num_classes=2, category_ids=(1, 2, 3), **tiny_kwargs)
    with pytest.raises(ValueError, match="class_names"):
        get_model("faster_rcnn_r50_fpn_1x_coco", num_classes=2, class_names=("a",), **tiny_kwargs)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """torch hub cache in tmp_path and a downloader that serves bytes from a dict instead of the network."""
    served, calls = {}, []
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def download(url, dst, hash_prefix=None, progress=True):
        calls.append(url)
        with open(dst, "wb") as f:
            f.write(served[url])

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    return served, calls, tmp_path


def _checkpoint_bytes(model):
    buf = io.BytesIO()
    torch.save({"state_dict": model.state_dict()}, buf)
    return buf.getvalue()


def test_url_weights_download_once_with_hash_check(fake_hub, tiny_kwargs):
    served, calls, hub = fake_hub
    src = get_model("faster_rcnn_r50_fpn_1x_coco", **tiny_kwargs)
    data = _checkpoint_bytes(src)
    url = f"https://example.org/tiny_20240101-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    served[url] = data
    model = get_model("faster_rcnn_r50_fpn_1x_coco", weights=url, **tiny_kwargs)
    assert not model.training
    for (k, a), b in zip(model.state_dict().items(), src.state_dict().values()):
        assert torch.equal(a, b), k
    get_model("faster_rcnn_r50_fpn_1x_coco", weights=url, **tiny_kwargs)
    assert calls == [url]  # cached after the first download
    assert sorted(p.name for p in (hub / "checkpoints").iterdir()) == [url.rsplit("/", 1)[1]]


def test_wrong_hash_is_an_error_and_leaves_no_file(fake_hub, tiny_kwargs):
    served, calls, hub = fake_hub
    name = "faster_rcnn_r50_fpn_attention_0010_1x_coco"
    served[MODELS[name].url] = b"not the released file"
    with pytest.raises(RuntimeError, match="wrong hash.*7cb0c14d"):
        get_model(name, weights="DEFAULT", **tiny_kwargs)
    assert calls == [MODELS[name].url]
    assert list((hub / "checkpoints").iterdir()) == []
    with pytest.raises(ValueError, match="no released checkpoint"):
        get_model("faster_rcnn_r50_fpn_attention_0100_1x_coco", weights="DEFAULT", **tiny_kwargs)


def test_download_without_hash_in_name(fake_hub):
    served, _, hub = fake_hub
    served["https://example.org/plain.pth"] = b"x"
    assert download("https://example.org/plain.pth") == hub / "checkpoints" / "plain.pth"


def test_local_weights_path(tmp_path, tiny_kwargs):
    src = get_model("faster_rcnn_r50_fpn_1x_coco", **tiny_kwargs)
    path = tmp_path / "ours.pth"
    path.write_bytes(_checkpoint_bytes(src))
    model = get_model("faster_rcnn_r50_fpn_1x_coco", weights=str(path), **tiny_kwargs)
    assert torch.equal(model.roi_head.bbox_head.fc_cls.weight, src.roi_head.bbox_head.fc_cls.weight)


def test_pretrained_backbone_from_local_file(tmp_path, tiny_kwargs):
    from genattn.models.resnet import ResNet

    torch.manual_seed(3)
    src = ResNet(**tiny_kwargs["backbone"])
    path = tmp_path / "resnet_tiny.pth"
    torch.save({**src.state_dict(), "fc.weight": torch.zeros(10, 128), "fc.bias": torch.zeros(10)}, path)
    model = get_model("faster_rcnn_r50_fpn_attention_0010_1x_coco", pretrained_backbone=str(path), **tiny_kwargs)
    assert torch.equal(model.backbone.layer2[0].conv2.weight, src.layer2[0].conv2.weight)


def test_pretrained_backbone_from_url(fake_hub, tiny_kwargs):
    from genattn.models.resnet import ResNet

    served, calls, _ = fake_hub
    torch.manual_seed(4)
    src = ResNet(**tiny_kwargs["backbone"])
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    url = f"https://example.org/resnet_tiny-{hashlib.sha256(buf.getvalue()).hexdigest()[:8]}.pth"
    served[url] = buf.getvalue()
    model = get_model("faster_rcnn_r50_fpn_1x_coco", pretrained_backbone=url, **tiny_kwargs)
    assert calls == [url] and torch.equal(model.backbone.conv1.weight, src.conv1.weight)


def test_failed_download_is_one_line(fake_hub):
    served, _, hub = fake_hub
    with pytest.raises(RuntimeError, match=r"checkpoint missing-0123abcd\.pth: download from .* failed") as err:
        download("https://example.org/missing-0123abcd.pth")  # not served: KeyError in the fake
    assert "\n" not in str(err.value) and list((hub / "checkpoints").iterdir()) == []
