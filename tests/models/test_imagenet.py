"""Tests of ImageNet initialisation; nothing is downloaded (the download is mocked)."""

import urllib.error

import pytest
import torch
import torchvision

from genattn.models.imagenet import imagenet_weights, load_imagenet_weights
from genattn.models.resnet import ResNet, resnet50, resnet101

S34, S234 = (False, False, True, True), (False, True, True, True)
SEED_CFG = dict(spatial_range=-1, num_heads=8, attention_type="1111", kv_stride=2)


@pytest.fixture(scope="module")
def r50_state():
    """A stand-in for torchvision's resnet50-0676ba61.pth: same keys and shapes, random values."""
    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).state_dict()


@pytest.fixture(scope="module")
def r50_file(r50_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("imagenet") / "resnet50-fake.pth"
    torch.save(r50_state, path)
    return path


def test_seed_backbone_misses_exactly_the_new_parameters(r50_file, r50_state):
    model = resnet50(attention_stages=S34, attention_cfg=SEED_CFG, dcn_stages=S234, frozen_stages=1, norm_eval=True)
    missing, unexpected = load_imagenet_weights(model, r50_file)
    assert unexpected == []  # fc.* is dropped before loading
    offsets = {f"layer{s}.{i}.conv2.conv_offset.{p}" for s, n in ((2, 4), (3, 6), (4, 3)) for i in range(n)
               for p in ("weight", "bias")}
    attention = {f"layer{s}.{i}.gen_attention_block.{p}" for s, n in ((3, 6), (4, 3)) for i in range(n)
                 for p in ("query_conv.weight", "key_conv.weight", "value_conv.weight", "appr_geom_fc_x.weight",
                           "appr_geom_fc_y.weight", "appr_bias", "geom_bias", "proj_conv.weight",
                           "proj_conv.bias", "gamma")}
    assert len(missing) == len(set(missing)) == 26 + 90
    assert set(missing) == offsets | attention
    torch.testing.assert_close(model.layer3[0].conv2.weight, r50_state["layer3.0.conv2.weight"])
    torch.testing.assert_close(model.layer4[2].bn3.running_var, r50_state["layer4.2.bn3.running_var"])
    # the new parameters keep their identity-preserving initialisation
    assert not model.layer2[0].conv2.conv_offset.weight.any()
    assert not model.layer3[0].gen_attention_block.gamma.any()


def test_plain_backbone_loads_completely_from_wrapped_checkpoint(r50_state, tmp_path):
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": r50_state, "meta": {"note": "wrapped"}}, path)
    model = resnet50(norm_layer=torchvision.ops.FrozenBatchNorm2d)
    assert load_imagenet_weights(model, str(path)) == ([], [])
    torch.testing.assert_close(model.conv1.weight, r50_state["conv1.weight"])


def test_bad_files_raise_clear_errors(tmp_path, r50_file):
    with pytest.raises(ValueError, match="nope.pth: not found"):
        load_imagenet_weights(resnet50(), tmp_path / "nope.pth")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.txt"):
        load_imagenet_weights(resnet50(), text)
    tiny = ResNet((1, 1, 1, 1), base_width=16, stem_width=16)
    with pytest.raises(ValueError, match="shapes"):
        load_imagenet_weights(tiny, r50_file)
    detector = tmp_path / "detector.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}}, detector)
    with pytest.raises(ValueError, match="detector.pth: not a torchvision ResNet state dict"):
        load_imagenet_weights(resnet50(), detector)


class _Evil:
    def __reduce__(self):
        return (print, ("this would run code",))


def test_file_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _Evil()}, path)
    with pytest.raises(ValueError, match="evil.pth"):
        load_imagenet_weights(resnet50(), path)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The torch hub cache in tmp_path, and a network that is down (every download fails)."""
    calls = []

    def offline(url, dst, hash_prefix=None, progress=True):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    (tmp_path / "checkpoints").mkdir()
    return tmp_path / "checkpoints", calls


def test_torchvision_weights_come_from_the_hub_cache(hub, r50_state):
    """torchvision's file of the backbone's depth, where torchvision itself caches it: no download needed."""
    folder, calls = hub
    torch.save(r50_state, folder / "resnet50-0676ba61.pth")
    assert torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url.endswith("/resnet50-0676ba61.pth")
    assert load_imagenet_weights(resnet50(), progress=False) == ([], [])
    assert load_imagenet_weights(resnet50(), "torchvision", progress=False) == ([], [])
    assert calls == []
    # the depth of the backbone picks the file (the fake R-50 dict then leaves layer3.6.. missing)
    name = torchvision.models.ResNet101_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    torch.save(r50_state, folder / name)
    missing, _ = load_imagenet_weights(resnet101(), progress=False)
    assert "layer3.22.conv1.weight" in missing and calls == []


def test_offline_without_file_says_what_to_do(hub):
    _, calls = hub
    with pytest.raises(RuntimeError) as info:
        load_imagenet_weights(resnet50())
    message = str(info.value)
    assert calls == [imagenet_weights("resnet50").url]
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message
    assert "pretrained_backbone=PATH" in message and "\n" not in message


def test_unknown_arch_raises():
    with pytest.raises(ValueError, match="arch"):
        load_imagenet_weights(resnet50(), arch="resnet18")
